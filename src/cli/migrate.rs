//! `flowmeter migrate`: the MySQL (and, when enabled, ClickHouse) migrations.

use crate::config::{mask_url, Settings};

pub async fn run(settings: &Settings) -> anyhow::Result<()> {
    crate::telemetry::init();
    let clickhouse = crate::app::migrate(settings).await?;
    println!("migrations applied to {}", mask_url(&settings.mysql.url));
    if !clickhouse.is_empty() {
        println!(
            "ClickHouse migrations applied to {} ({}): {}",
            mask_url(&settings.clickhouse.url),
            settings.clickhouse.database,
            clickhouse.join(", ")
        );
    }
    Ok(())
}
