//! Embeds the dashboard's charting library (uPlot, pinned in
//! `web/package.json` and `web/package-lock.json`) into the binary.
//!
//! The build installs it with `npm ci` into its own output directory (the
//! source tree is never written). Without npm, or with `FLOWMETER_NO_NPM=1`,
//! it falls back to an already installed `web/node_modules`, else embeds
//! nothing: the dashboard then works without charts and says how to get them.

use std::path::{Path, PathBuf};
use std::process::Command;

const JS: &str = "uplot/dist/uPlot.iife.min.js";
const CSS: &str = "uplot/dist/uPlot.min.css";

fn main() {
    println!("cargo:rerun-if-changed=web/package.json");
    println!("cargo:rerun-if-changed=web/package-lock.json");
    println!("cargo:rerun-if-env-changed=FLOWMETER_NO_NPM");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let modules = npm_install(&out).or_else(|| {
        let local = Path::new("web/node_modules");
        local.join(JS).exists().then(|| local.to_path_buf())
    });
    let (js, css) = match &modules {
        Some(m) => (read(&m.join(JS)), read(&m.join(CSS))),
        None => {
            println!("cargo:warning=uPlot not installed (npm missing or FLOWMETER_NO_NPM set): the dashboard is built without charts; see docs/dashboard.md");
            (Vec::new(), Vec::new())
        }
    };
    std::fs::write(out.join("uplot.js"), js).expect("write OUT_DIR/uplot.js");
    std::fs::write(out.join("uplot.css"), css).expect("write OUT_DIR/uplot.css");
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_default()
}

/// `npm ci --omit=dev` in `OUT_DIR/npm`; the node_modules path on success.
fn npm_install(out: &Path) -> Option<PathBuf> {
    if std::env::var_os("FLOWMETER_NO_NPM").is_some_and(|v| v != "0") {
        return None;
    }
    let dir = out.join("npm");
    std::fs::create_dir_all(&dir).ok()?;
    for f in ["package.json", "package-lock.json"] {
        std::fs::copy(Path::new("web").join(f), dir.join(f)).ok()?;
    }
    let ok = Command::new("npm")
        .args([
            "ci",
            "--omit=dev",
            "--ignore-scripts",
            "--no-audit",
            "--no-fund",
        ])
        .current_dir(&dir)
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!(
            "cargo:warning=`npm ci` for the dashboard's uPlot failed; trying web/node_modules"
        );
    }
    let modules = dir.join("node_modules");
    (ok && modules.join(JS).exists()).then_some(modules)
}
