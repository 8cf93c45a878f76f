//! `flowmeter serve`: the server roles.

use clap::Args;

use crate::app::{self, Roles};
use crate::config::Settings;

#[derive(Args)]
pub struct ServeArgs {
    /// Roles to run, comma separated: ingest, api, rollup, hub.
    #[arg(long, default_value = "ingest,api,rollup,hub")]
    roles: String,
    /// Listen address: overrides server.listen, or server.worker_listen
    /// for a process without the ingest, api and hub roles (a rollup worker).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
}

pub async fn run(mut settings: Settings, args: ServeArgs) -> anyhow::Result<()> {
    crate::telemetry::init();
    let roles: Roles = args.roles.parse()?;
    if let Some(l) = args.listen {
        if roles.serves_data() {
            settings.server.listen = l;
        } else {
            settings.server.worker_listen = l;
        }
    }
    app::serve(settings, roles, None, super::stop_on_signal()).await?;
    Ok(())
}
