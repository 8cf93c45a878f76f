//! Browser tests: a node script (`tests/browser/*.mjs`) drives Debian's
//! headless Chromium with playwright-core (pinned in `web/package.json`,
//! installed by `scripts/browser-deps`, which `make test` runs) against a
//! `flowmeter serve` child process it starts from the config written here.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{repo, TestEnv};

/// A free port on 127.0.0.1 (bound, then released for the child).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// What a browser test needs: the test's env listening on a fixed port, and
/// a directory for the config, screenshots and results.
pub struct BrowserRun {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub config: PathBuf,
}

impl BrowserRun {
    /// Writes `env`'s settings (listening on a fresh port) for the child.
    pub fn new(env: &mut TestEnv) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        env.settings.server.listen = format!("127.0.0.1:{port}");
        let config = env.write_config(dir.path());
        Self { dir, port, config }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs `node tests/browser/<script>` with `FM_*` variables (and
    /// `extra`); panics with its output unless it exits 0. Returns the
    /// `results.json` the script wrote into the run's directory, if any.
    pub fn node(&self, script: &str, extra: &[(&str, String)]) -> serde_json::Value {
        let modules = repo().join("web/node_modules/playwright-core");
        assert!(
            modules.exists(),
            "playwright-core is not installed: run scripts/browser-deps (make test does)"
        );
        let chromium = std::env::var("FM_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        assert!(
            Path::new(&chromium).exists(),
            "no Chromium at {chromium}: run scripts/browser-deps (apt-get install chromium)"
        );
        let mut cmd = Command::new("node");
        cmd.arg(repo().join("tests/browser").join(script))
            .env("FM_BIN", env!("CARGO_BIN_EXE_flowmeter"))
            .env("FM_CONFIG", &self.config)
            .env("FM_URL", self.url())
            .env("FM_OUT", self.dir.path())
            .env("FM_CHROMIUM", &chromium)
            .env("FM_REPO", repo())
            .stdin(Stdio::null());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("node runs (apt-get install nodejs)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("--- {script} stdout ---\n{stdout}\n--- {script} stderr ---\n{stderr}");
        assert!(out.status.success(), "{script} failed: {}", out.status);
        let results = self.dir.path().join("results.json");
        std::fs::read(&results)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null)
    }
}
