//! Config files: any text in `flowmeter.toml` loads or gives an error,
//! never a panic; what loads renders back as masked TOML that loads again.
#![no_main]

use flowmeter::config::Settings;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let path = dir.path().join("flowmeter.toml");
    if std::fs::write(&path, text).is_err() {
        return;
    }
    let no_env: Vec<(String, String)> = Vec::new();
    if let Ok(s) = Settings::load_from(Some(&path), no_env.clone()) {
        if !s.auth.tokens.is_empty() {
            return; // masked tokens (`***`) are not valid tokens by design
        }
        let masked = s.to_masked_toml();
        let p2 = dir.path().join("again.toml");
        if std::fs::write(&p2, &masked).is_ok() {
            Settings::load_from(Some(&p2), no_env).expect("the rendered config loads again");
        }
    }
});
