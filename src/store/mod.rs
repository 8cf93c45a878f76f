//! MySQL (8.x) / MariaDB (10.11) storage: pool, migrations, checkpoints, and
//! table introspection for the generic rollup writer.
//!
//! Every connection runs with `time_zone = '+00:00'` (all times are UTC) and
//! READ COMMITTED isolation (locking reads see the latest committed row and
//! take no gap locks, which keeps concurrent flushes from deadlocking on inserts).

mod alerts;
mod checkpoint;
mod columns;
mod outbox;
mod tls;

use std::path::Path;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlDatabaseError, MySqlPoolOptions};

use crate::config::MysqlConfig;
use sqlx::{ConnectOptions, Connection, Executor, MySqlPool};

pub use alerts::{AlertRow, NewAlert};
pub use checkpoint::{advance as advance_checkpoint, Checkpoint};
pub use columns::{date_ms, datetime_ms, ms_datetime, ColumnInfo, ColumnKind};
pub use outbox::{DueNotification, Finish, NotificationKey, Transition as NotificationTransition};

/// MySQL error numbers worth retrying the whole transaction for.
const ER_LOCK_DEADLOCK: u16 = 1213;
const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;
/// "Unknown database": the URL names a database nobody created.
const ER_BAD_DB_ERROR: u16 = 1049;
/// "Table doesn't exist".
const ER_NO_SUCH_TABLE: u16 = 1146;

/// The MySQL error number of `e`, if the server sent one.
fn db_number(e: &sqlx::Error) -> Option<u16> {
    match e {
        sqlx::Error::Database(d) => d
            .try_downcast_ref::<MySqlDatabaseError>()
            .map(|m| m.number()),
        _ => None,
    }
}

/// Maps an error of a query on `table`: a missing table (an unmigrated
/// database) says to run `flowmeter migrate`.
fn on_table(table: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| match db_number(&e) {
        Some(ER_NO_SUCH_TABLE) => StoreError::Schema {
            table: table.into(),
            reason: "does not exist: run `flowmeter migrate`".into(),
        },
        _ => StoreError::Db(e),
    }
}

/// Storage errors. `retryable()` separates outages and lock conflicts (retry
/// with backoff) from mistakes that waiting cannot fix.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("mysql: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("invalid mysql.url: {0}")]
    BadUrl(String),
    #[error("checkpoint of {group} on {stream} moved: another worker committed this shard")]
    CheckpointMoved { group: String, stream: String },
    #[error("table {table}: {reason}")]
    Schema { table: String, reason: String },
    /// The database of `mysql.url` does not exist. Only `flowmeter migrate`
    /// creates it; every other command opens it as it is.
    #[error("database `{0}` does not exist: run `flowmeter migrate`")]
    NoDatabase(String),
    #[error("mysql did not finish within {0:?} (unreachable or overloaded?)")]
    Timeout(std::time::Duration),
    /// The server of `mysql.url` could not be reached or talked to:
    /// names the URL tried, password masked.
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    /// TLS to the server failed or cannot work as configured: the reason
    /// names the setting to fix.
    #[error("TLS to MySQL: {0}")]
    Tls(String),
    /// A value a column cannot hold, found before it was sent.
    #[error("table {table}: {reason}")]
    Value { table: String, reason: String },
    /// Another `flowmeter migrate` of the same database held the migration
    /// lock for [`MIGRATE_LOCK_WAIT_SECS`]: try again once it is done.
    #[error("another `flowmeter migrate` of this database held the migration lock for {0} s; run it again once that one is done (SELECT IS_USED_LOCK({MIGRATE_LOCK}) names its connection)")]
    MigrationLocked(u32),
}

/// The MySQL named lock `flowmeter migrate` runs under, one per database
/// (a SQL expression: lock names are at most 64 characters, database names
/// too).
const MIGRATE_LOCK: &str = "CONCAT('flowmeter_migrate:', LEFT(SHA1(DATABASE()), 40))";

/// How long `flowmeter migrate` waits for another run of the same
/// database to finish before it gives up ([`StoreError::MigrationLocked`]).
pub const MIGRATE_LOCK_WAIT_SECS: u32 = 600;

/// MySQL/MariaDB errors about a value (not the server, not the schema):
/// out of range, incorrect datetime/integer/string value, data too long,
/// truncated, NULL into NOT NULL, arithmetic out of range.
/// Also CHECK constraints (MariaDB 4025, MySQL 3819).
const DATA_ERRORS: &[u16] = &[
    1048, 1264, 1265, 1292, 1366, 1367, 1406, 1411, 1690, 3819, 4025,
];

impl StoreError {
    /// Whether the server could not be reached or talked to at all (as
    /// opposed to a database or table that is missing, or data it refused).
    pub fn is_connection(&self) -> bool {
        match self {
            StoreError::Db(e) => is_unreachable(e),
            StoreError::Timeout(_) | StoreError::Tls(_) | StoreError::Connect { .. } => true,
            _ => false,
        }
    }

    /// The advice to print after this error: where to look when the server
    /// cannot be reached; nothing when the error already says what to do.
    pub fn hint(&self) -> &'static str {
        if self.is_connection() {
            " (is MariaDB/MySQL running and mysql.url right? `scripts/services start` starts a local one)"
        } else {
            ""
        }
    }

    pub fn retryable(&self) -> bool {
        match self {
            StoreError::Db(e) => is_retryable_db(e),
            StoreError::Timeout(_)
            | StoreError::Connect { .. }
            | StoreError::MigrationLocked(_) => true,
            _ => false,
        }
    }

    /// An error about the data written, which retrying the same data cannot
    /// fix: a value rejected by the database (the numbers in [`DATA_ERRORS`]
    /// or SQLSTATE class 22, "data exception"), a row that does not decode,
    /// or a value found not to fit before it was sent. The runner isolates
    /// the entry responsible and dead-letters it instead of retrying.
    pub fn is_data_error(&self) -> bool {
        match self {
            StoreError::Value { .. } => true,
            StoreError::Db(sqlx::Error::Database(d)) => {
                d.code().is_some_and(|c| c.starts_with("22"))
                    || d.try_downcast_ref::<MySqlDatabaseError>()
                        .is_some_and(|m| DATA_ERRORS.contains(&m.number()))
            }
            StoreError::Db(sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_)) => true,
            _ => false,
        }
    }

    /// Deadlock or lock-wait timeout: retry the same transaction at once.
    pub fn is_lock_conflict(&self) -> bool {
        match self {
            StoreError::Db(e) => {
                matches!(db_number(e), Some(ER_LOCK_DEADLOCK | ER_LOCK_WAIT_TIMEOUT))
            }
            _ => false,
        }
    }
}

/// Server errors that say the server cannot serve this connection now
/// (too many connections, shutting down, gone away, lost, killed): the
/// server is unreachable for the while, as when it refuses the connection,
/// so `serve` waits for it rather than stopping.
const SERVER_UNAVAILABLE: [u16; 5] = [
    1040, // too many connections
    1053, // server shutdown in progress
    2006, // server has gone away
    2013, // lost connection during query
    1927, // connection killed
];

fn is_retryable_db(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(_) => db_number(e).is_some_and(|n| {
            matches!(n, ER_LOCK_DEADLOCK | ER_LOCK_WAIT_TIMEOUT) || SERVER_UNAVAILABLE.contains(&n)
        }),
        _ => false,
    }
}

/// The MySQL pool.
#[derive(Clone, Debug)]
pub struct Store {
    pool: MySqlPool,
}

/// Whether [`Store`]'s constructors may create the database of the URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Missing {
    /// `flowmeter migrate` (and tests): create it.
    Create,
    /// Everything else: a missing database is [`StoreError::NoDatabase`],
    /// so read-only commands leave nothing behind.
    Refuse,
}

/// A first connection's error `e`: when the server itself could not be
/// reached, [`StoreError::Connect`] naming `url` (password masked).
fn unreachable(url: &str, e: StoreError) -> StoreError {
    match e {
        StoreError::Db(db) if is_unreachable(&db) => StoreError::Connect {
            url: crate::config::mask_url(url),
            reason: db.to_string(),
        },
        other => other,
    }
}

fn is_unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(_) => db_number(e).is_some_and(|n| SERVER_UNAVAILABLE.contains(&n)),
        _ => is_retryable_db(e),
    }
}

impl Store {
    /// Connects to `[mysql]`: its URL and TLS settings (which override the
    /// URL's `ssl-mode`, `ssl-ca`, `ssl-cert`, `ssl-key`), with a pool of
    /// at most `max_connections`. The database must exist
    /// ([`StoreError::NoDatabase`] otherwise).
    pub async fn from_config(cfg: &MysqlConfig, max_connections: u32) -> Result<Self, StoreError> {
        Self::open(&cfg.url, Some(cfg), max_connections, Missing::Refuse).await
    }

    /// Like [`Store::from_config`], creating the database first when it does
    /// not exist: for `flowmeter migrate` alone.
    pub async fn create_from_config(
        cfg: &MysqlConfig,
        max_connections: u32,
    ) -> Result<Self, StoreError> {
        Self::open(&cfg.url, Some(cfg), max_connections, Missing::Create).await
    }

    /// Connects to `url` alone (TLS as its parameters say), creating the
    /// database named in the URL when it does not exist (tests).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        Self::open(url, None, max_connections, Missing::Create).await
    }

    async fn open(
        url: &str,
        cfg: Option<&MysqlConfig>,
        max_connections: u32,
        missing: Missing,
    ) -> Result<Self, StoreError> {
        let opts: MySqlConnectOptions = url
            .parse()
            .map_err(|e: sqlx::Error| StoreError::BadUrl(e.to_string()))?;
        let (opts, tls) = tls::apply(opts, url, cfg)?;
        let db = url::Url::parse(url)
            .map_err(|e| StoreError::BadUrl(e.to_string()))?
            .path()
            .trim_start_matches('/')
            .to_string();
        if db.is_empty() {
            return Err(StoreError::BadUrl(
                "the URL must name a database, e.g. mysql://root@127.0.0.1:3306/flowmeter".into(),
            ));
        }
        if !db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(StoreError::BadUrl(format!(
                "database name {db:?}: use letters, digits and '_'"
            )));
        }
        // One connection first, so a server that refuses, a database that
        // is missing or TLS that fails is said at once, with its cause (the
        // pool would retry until its acquire timeout and say only that).
        let first = match missing {
            Missing::Create => opts.clone().database(""),
            Missing::Refuse => opts.clone(),
        };
        let mut conn = tokio::time::timeout(Duration::from_secs(10), first.connect())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|e| match db_number(&e) {
                Some(ER_BAD_DB_ERROR) => StoreError::NoDatabase(db.clone()),
                _ => unreachable(url, tls.explain(e)),
            })?;
        if missing == Missing::Create {
            conn.execute(format!("CREATE DATABASE IF NOT EXISTS `{db}`").as_str())
                .await?;
        }
        let _ = conn.close().await;
        let pool = MySqlPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("SET time_zone = '+00:00'").await?;
                    conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                        .await?;
                    Ok(())
                })
            })
            .connect_with(opts)
            .await
            .map_err(|e| match db_number(&e) {
                Some(ER_BAD_DB_ERROR) => StoreError::NoDatabase(db.clone()),
                _ => unreachable(url, tls.explain(e)),
            })?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// Applies the sqlx migrations in `dir` (idempotent), one run at a time
    /// per database, so pods that each migrate before they serve can start
    /// together. Under a named lock of flowmeter's own: sqlx's
    /// (`GET_LOCK(name, -1)`) locks nothing on MariaDB, which answers NULL at
    /// once to a negative timeout, and concurrent runs then fail half-way
    /// ("migration N is partially applied"). The connection is detached
    /// from the pool and closed at the end, which releases the lock also
    /// when the run fails or is cancelled.
    pub async fn migrate(&self, dir: &Path) -> Result<(), StoreError> {
        let migrator = sqlx::migrate::Migrator::new(dir).await?;
        let mut conn = self.pool.acquire().await?.detach();
        let locked: Option<i64> =
            sqlx::query_scalar(&format!("SELECT GET_LOCK({MIGRATE_LOCK}, ?)"))
                .bind(MIGRATE_LOCK_WAIT_SECS)
                .fetch_one(&mut conn)
                .await?;
        if locked != Some(1) {
            return Err(StoreError::MigrationLocked(MIGRATE_LOCK_WAIT_SECS));
        }
        migrator.run_direct(&mut conn).await?;
        Ok(())
    }

    /// Drops the database (tests only).
    pub async fn drop_database(&self) -> Result<(), StoreError> {
        let name: (String,) = sqlx::query_as("SELECT DATABASE()")
            .fetch_one(&self.pool)
            .await?;
        self.pool
            .execute(format!("DROP DATABASE IF EXISTS `{}`", name.0).as_str())
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A busy or stopping server (1040, 1053) is waited for at start, like
    /// a refused connection; a lock conflict is retried but is no outage.
    #[test]
    fn a_busy_or_stopping_server_counts_as_unreachable() {
        for n in [1040, 1053] {
            assert!(SERVER_UNAVAILABLE.contains(&n), "{n}");
        }
        for n in [ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT, ER_NO_SUCH_TABLE] {
            assert!(!SERVER_UNAVAILABLE.contains(&n), "{n}");
        }
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(is_unreachable(&io));
        assert!(!is_unreachable(&sqlx::Error::RowNotFound));
    }
}
