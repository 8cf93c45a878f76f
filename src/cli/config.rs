//! `flowmeter config`: the effective configuration, passwords masked.

use crate::config::Settings;

pub fn run(settings: &Settings) {
    print!("{}", settings.to_masked_toml());
}
