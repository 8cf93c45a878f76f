//! What a rollup table looks like in the database, read from information_schema,
//! so processor definitions are checked against real columns at start, and
//! values are checked against what each column can hold before they are
//! written (a value the column cannot hold is a per-entry error, never a
//! failed flush).

use chrono::{DateTime, NaiveDate, NaiveDateTime};
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
    /// The SQL type, lower case (`bigint`, `double`, `timestamp`, …).
    pub data_type: String,
    /// Integer columns declared `UNSIGNED`.
    pub unsigned: bool,
    /// Byte limit of text and blob columns.
    pub max_bytes: Option<u64>,
    /// Character set of text columns (`utf8mb4`, `utf8mb3`, `latin1`, …).
    pub charset: Option<String>,
    /// Digits and decimals of DECIMAL columns.
    pub precision: Option<u64>,
    pub scale: Option<u64>,
}

/// Earliest and latest DATETIME/DATE value (MySQL and MariaDB), epoch ms.
const DATETIME_MIN_MS: i64 = -30_610_224_000_000; // 1000-01-01T00:00:00Z
const DATETIME_MAX_MS: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
/// TIMESTAMP holds 1970-01-01T00:00:01Z ..= 2038-01-19T03:14:07Z (the
/// session time zone is UTC).
const TIMESTAMP_MIN_MS: i64 = 1_000;
const TIMESTAMP_MAX_MS: i64 = 2_147_483_647_999;

impl ColumnInfo {
    /// The integers an integer column holds (`None` for other columns).
    pub fn int_range(&self) -> Option<(i128, i128)> {
        let bits = match self.data_type.as_str() {
            "tinyint" => 8,
            "smallint" => 16,
            "mediumint" => 24,
            "int" => 32,
            "bigint" => 64,
            _ => return None,
        };
        Some(if self.unsigned {
            (0, (1i128 << bits) - 1)
        } else {
            (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
        })
    }

    /// The largest magnitude a FLOAT/DOUBLE/DECIMAL column holds.
    pub fn float_max(&self) -> Option<f64> {
        match self.data_type.as_str() {
            "float" => Some(f64::from(f32::MAX)),
            "double" | "real" => Some(f64::MAX),
            "decimal" => {
                let digits = self
                    .precision
                    .unwrap_or(10)
                    .saturating_sub(self.scale.unwrap_or(0));
                Some(10f64.powi(i32::try_from(digits).unwrap_or(i32::MAX)))
            }
            _ => None,
        }
    }

    /// The times (epoch ms) a DATETIME/DATE/TIMESTAMP column holds.
    pub fn time_range_ms(&self) -> Option<(i64, i64)> {
        match self.data_type.as_str() {
            "datetime" | "date" => Some((DATETIME_MIN_MS, DATETIME_MAX_MS)),
            "timestamp" => Some((TIMESTAMP_MIN_MS, TIMESTAMP_MAX_MS)),
            _ => None,
        }
    }

    /// Checks an integer for this column; the error names the column and its range.
    pub fn check_int(&self, v: i128) -> Result<(), String> {
        match self.int_range() {
            Some((lo, hi)) if v < lo || v > hi => Err(format!(
                "{v} does not fit column {} ({}{}: {lo} ..= {hi})",
                self.name,
                self.data_type.to_ascii_uppercase(),
                if self.unsigned { " UNSIGNED" } else { "" }
            )),
            _ => Ok(()),
        }
    }

    /// Checks a floating-point value for this column (finite, within range).
    pub fn check_float(&self, v: f64) -> Result<(), String> {
        if !v.is_finite() {
            return Err(format!("{v} is not a finite number (column {})", self.name));
        }
        if let Some((lo, hi)) = self.int_range() {
            return self.check_int(v.round().clamp(lo as f64 - 1.0, hi as f64 + 1.0) as i128);
        }
        let over = match (self.data_type.as_str(), self.float_max()) {
            // DECIMAL(p, s) holds magnitudes below 10^(p - s)
            ("decimal", Some(max)) => v.abs() >= max,
            (_, Some(max)) => v.abs() > max,
            (_, None) => false,
        };
        if over {
            return Err(format!(
                "{v} does not fit column {} ({})",
                self.name,
                self.data_type.to_ascii_uppercase()
            ));
        }
        Ok(())
    }

    /// Checks a time (epoch ms) for this column.
    pub fn check_time(&self, ms: i64) -> Result<(), String> {
        match self.time_range_ms() {
            Some((lo, hi)) if ms < lo || ms > hi => Err(format!(
                "{} is outside what column {} ({}) holds ({} ..= {})",
                crate::event::format_rfc3339_ms(ms),
                self.name,
                self.data_type.to_ascii_uppercase(),
                crate::event::format_rfc3339_ms(lo),
                crate::event::format_rfc3339_ms(hi),
            )),
            _ => Ok(()),
        }
    }

    /// Checks a string for this text column: characters the character set
    /// cannot store (only utf8mb4 stores 4-byte UTF-8). Length is not
    /// checked: dimension values are cut to `max_chars` instead.
    pub fn check_text(&self, s: &str) -> Result<(), String> {
        let cs = self.charset.as_deref().unwrap_or("utf8mb4");
        let ok = match cs {
            "utf8mb4" | "binary" => true,
            "utf8mb3" | "utf8" => s.chars().all(|c| c.len_utf8() < 4),
            "ascii" => s.is_ascii(),
            _ => s.chars().all(|c| u32::from(c) < 0x100),
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "holds characters column {} ({cs}) cannot store",
                self.name
            ))
        }
    }

    /// Checks a blob's length for this column.
    pub fn check_bytes(&self, len: usize) -> Result<(), String> {
        match self.max_bytes {
            Some(max) if len as u64 > max => Err(format!(
                "{len} bytes do not fit column {} ({}, at most {max} bytes)",
                self.name,
                self.data_type.to_ascii_uppercase()
            )),
            _ => Ok(()),
        }
    }
}

/// Epoch ms of a DATETIME read back (UTC).
pub fn datetime_ms(d: NaiveDateTime) -> i64 {
    d.and_utc().timestamp_millis()
}

/// Epoch ms of a DATE read back (its midnight, UTC).
pub fn date_ms(d: NaiveDate) -> i64 {
    d.and_hms_opt(0, 0, 0).map_or(0, datetime_ms)
}

/// The DATETIME of epoch ms, when chrono can represent it.
pub fn ms_datetime(ms: i64) -> Option<NaiveDateTime> {
    DateTime::from_timestamp_millis(ms).map(|d| d.naive_utc())
}

impl Store {
    /// Columns of `table` in the current database, in table order.
    pub async fn columns(&self, table: &str) -> Result<Vec<ColumnInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT CAST(COLUMN_NAME AS CHAR), CAST(DATA_TYPE AS CHAR), \
             CAST(CHARACTER_MAXIMUM_LENGTH AS UNSIGNED), CAST(IS_NULLABLE AS CHAR), \
             CAST(COLUMN_TYPE AS CHAR), CAST(CHARACTER_OCTET_LENGTH AS UNSIGNED), \
             CAST(CHARACTER_SET_NAME AS CHAR), CAST(NUMERIC_PRECISION AS UNSIGNED), \
             CAST(NUMERIC_SCALE AS UNSIGNED) \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? \
             ORDER BY ORDINAL_POSITION",
        )
        .bind(table)
        .fetch_all(self.pool())
        .await?;
        if rows.is_empty() {
            return Err(StoreError::Schema {
                table: table.to_string(),
                reason: "does not exist: run `flowmeter migrate` (if it still does not, no file \
                         in paths.migrations creates it: add one)"
                    .into(),
            });
        }
        rows.iter()
            .map(|r| {
                let name: String = r.try_get(0)?;
                let ty: String = r.try_get::<String, _>(1)?.to_ascii_lowercase();
                let kind = match ty.as_str() {
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
                let column_type: String = r.try_get::<String, _>(4)?.to_ascii_lowercase();
                Ok(ColumnInfo {
                    name,
                    kind,
                    max_chars: r.try_get::<Option<u64>, _>(2)?,
                    nullable: r.try_get::<String, _>(3)? == "YES",
                    unsigned: column_type.contains("unsigned"),
                    data_type: ty,
                    max_bytes: r.try_get::<Option<u64>, _>(5)?,
                    charset: r.try_get::<Option<String>, _>(6)?,
                    precision: r.try_get::<Option<u64>, _>(7)?,
                    scale: r.try_get::<Option<u64>, _>(8)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(data_type: &str, unsigned: bool) -> ColumnInfo {
        ColumnInfo {
            name: "c".into(),
            kind: ColumnKind::Int,
            max_chars: None,
            nullable: false,
            data_type: data_type.into(),
            unsigned,
            max_bytes: None,
            charset: None,
            precision: None,
            scale: None,
        }
    }

    #[test]
    fn integer_ranges_follow_the_type() {
        let c = col("bigint", true);
        assert_eq!(c.int_range(), Some((0, i128::from(u64::MAX))));
        assert!(c.check_int(i128::from(u64::MAX)).is_ok());
        let e = c.check_int(i128::from(u64::MAX) + 1).expect_err("past u64");
        assert!(
            e.contains("BIGINT UNSIGNED") && e.contains("column c"),
            "{e}"
        );
        assert!(c.check_int(-1).is_err());
        let c = col("int", false);
        assert!(c.check_int(i128::from(i32::MAX)).is_ok());
        assert!(c.check_int(i128::from(i32::MAX) + 1).is_err());
        assert!(c.check_int(i128::from(i32::MIN)).is_ok());
        assert!(c.check_float(2_147_483_647.4).is_ok());
        assert!(c.check_float(2_147_483_647.6).is_err());
        assert!(c.check_float(f64::NAN).is_err());
    }

    #[test]
    fn float_and_decimal_ranges() {
        let c = col("double", false);
        assert!(c.check_float(f64::MAX).is_ok());
        assert!(c.check_float(f64::INFINITY).is_err());
        let c = col("float", false);
        assert!(c.check_float(3.0e38).is_ok());
        assert!(c.check_float(3.5e38).is_err());
        let mut c = col("decimal", false);
        c.precision = Some(5);
        c.scale = Some(2);
        assert!(c.check_float(999.99).is_ok());
        assert!(c.check_float(1000.0).is_err());
    }

    #[test]
    fn time_ranges_follow_the_type() {
        let year_2040 = 2_208_988_800_000;
        let year_3000 = 32_503_680_000_000;
        assert!(col("datetime", false).check_time(year_3000).is_ok());
        assert!(col("date", false).check_time(year_2040).is_ok());
        let e = col("timestamp", false)
            .check_time(year_2040)
            .expect_err("TIMESTAMP ends in 2038");
        assert!(e.contains("2038-01-19T03:14:07Z"), "{e}");
        assert!(col("timestamp", false).check_time(0).is_err());
        assert_eq!(
            ms_datetime(DATETIME_MAX_MS).map(datetime_ms),
            Some(DATETIME_MAX_MS)
        );
        assert_eq!(
            ms_datetime(DATETIME_MIN_MS).map(datetime_ms),
            Some(DATETIME_MIN_MS)
        );
    }

    #[test]
    fn text_checks_the_character_set() {
        let mut c = col("varchar", false);
        assert!(c.check_text("ok 😀").is_ok(), "utf8mb4 by default");
        c.charset = Some("utf8mb3".into());
        assert!(c.check_text("é ü").is_ok());
        assert!(c.check_text("😀").is_err());
        c.max_bytes = Some(4);
        assert!(c.check_bytes(4).is_ok());
        assert!(c.check_bytes(5).is_err());
    }
}
