//! What a rollup table looks like in the database, read from information_schema,
//! so processor definitions are checked against real columns at start.

use sqlx::Row;

use super::{Store, StoreError};

/// How flowmeter reads and writes a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    Int,
    Float,
    Text,
    Blob,
    DateTime,
    Date,
}

/// One column of a table.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnInfo {
    pub name: String,
    pub kind: ColumnKind,
    /// Character limit of text columns.
    pub max_chars: Option<u64>,
    pub nullable: bool,
}

impl Store {
    /// Columns of `table` in the current database, in table order.
    pub async fn columns(&self, table: &str) -> Result<Vec<ColumnInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT CAST(COLUMN_NAME AS CHAR), CAST(DATA_TYPE AS CHAR), \
             CAST(CHARACTER_MAXIMUM_LENGTH AS UNSIGNED), CAST(IS_NULLABLE AS CHAR) \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? \
             ORDER BY ORDINAL_POSITION",
        )
        .bind(table)
        .fetch_all(self.pool())
        .await?;
        if rows.is_empty() {
            return Err(StoreError::Schema {
                table: table.to_string(),
                reason:
                    "does not exist; add a migration that creates it and run `flowmeter migrate`"
                        .into(),
            });
        }
        rows.iter()
            .map(|r| {
                let name: String = r.try_get(0)?;
                let ty: String = r.try_get(1)?;
                let kind = match ty.to_ascii_lowercase().as_str() {
                    "tinyint" | "smallint" | "mediumint" | "int" | "bigint" => ColumnKind::Int,
                    "float" | "double" | "decimal" | "real" => ColumnKind::Float,
                    "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" => {
                        ColumnKind::Text
                    }
                    "blob" | "tinyblob" | "mediumblob" | "longblob" | "varbinary" | "binary" => {
                        ColumnKind::Blob
                    }
                    "datetime" | "timestamp" => ColumnKind::DateTime,
                    "date" => ColumnKind::Date,
                    other => {
                        return Err(StoreError::Schema {
                            table: table.to_string(),
                            reason: format!("column {name} has unsupported type {other}"),
                        })
                    }
                };
                Ok(ColumnInfo {
                    name,
                    kind,
                    max_chars: r.try_get::<Option<u64>, _>(2)?,
                    nullable: r.try_get::<String, _>(3)? == "YES",
                })
            })
            .collect()
    }
}
