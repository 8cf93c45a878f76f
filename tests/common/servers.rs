//! Private instances of the real servers, for tests that stop, kill and
//! restart them without disturbing the shared ones other tests use.

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn wait_port(port: u16, up: bool, limit: Duration, what: &str) {
    let start = Instant::now();
    loop {
        let open = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        if open == up {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{what} on port {port} did not {} within {limit:?}",
            if up { "come up" } else { "go down" }
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A MariaDB server with its own data directory and port.
pub struct PrivateMariaDb {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateMariaDb {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let out = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .output()
            .expect(
                "mariadb-install-db (Debian package mariadb-server; scripts/services installs it)",
            );
        assert!(
            out.status.success(),
            "mariadb-install-db: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut db = Self {
            port: free_port(),
            dir,
            child: None,
        };
        db.restart();
        db
    }

    pub fn url(&self, database: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{database}", self.port)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts the server (again) on the same data and port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut cmd = Command::new("mariadbd");
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", self.path("data").display()))
            .arg(format!("--port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", self.path("sock").display()))
            .arg(format!("--pid-file={}", self.path("pid").display()))
            .args(["--innodb-buffer-pool-size=64M", "--skip-name-resolve"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if running_as_root() {
            cmd.arg("--user=root");
        }
        self.child = Some(cmd.spawn().expect("mariadbd"));
        wait_port(self.port, true, Duration::from_secs(60), "mariadbd");
    }

    /// Stops it hard (SIGKILL): no shutdown, like a crash or a pulled plug
    /// of the process.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        wait_port(self.port, false, Duration::from_secs(30), "mariadbd");
    }
}

impl Drop for PrivateMariaDb {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A Redis server with its own directory and port, AOF on.
pub struct PrivateRedis {
    pub port: u16,
    dir: tempfile::TempDir,
    fsync: String,
    child: Option<Child>,
}

impl PrivateRedis {
    /// `appendfsync`: `always`, `everysec` or `no`.
    pub fn start(appendfsync: &str) -> Self {
        let mut r = Self {
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            fsync: appendfsync.to_string(),
            child: None,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
            .arg("--appendfsync")
            .arg(&self.fsync)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server)");
        self.child = Some(child);
        wait_port(self.port, true, Duration::from_secs(30), "redis-server");
        // the port opens before the AOF is loaded; wait for PING
        let start = Instant::now();
        loop {
            let ok = redis::Client::open(self.url())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok();
            if ok {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "redis did not load"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: Redis gets no chance to flush or save.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        wait_port(self.port, false, Duration::from_secs(30), "redis-server");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
