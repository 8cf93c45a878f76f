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
    /// Further `mariadbd` options (TLS).
    extra: Vec<String>,
}

impl PrivateMariaDb {
    pub fn start() -> Self {
        Self::start_with(Vec::new())
    }

    /// A server that accepts only TLS connections (`require_secure_transport`)
    /// with `pki`'s server certificate, and a user `fm` (password `fm-secret`,
    /// every privilege) created `REQUIRE SSL`; see [`Self::tls_url`].
    pub fn start_tls(pki: &TestPki) -> Self {
        let db = Self::start_with(vec![
            format!("--ssl-cert={}", pki.server_cert().display()),
            format!("--ssl-key={}", pki.server_key().display()),
            format!("--ssl-ca={}", pki.ca().display()),
            "--require-secure-transport=ON".into(),
        ]);
        db.sql_over_socket(
            "CREATE USER 'fm'@'%' IDENTIFIED BY 'fm-secret' REQUIRE SSL; \
             GRANT ALL PRIVILEGES ON *.* TO 'fm'@'%'; FLUSH PRIVILEGES;",
        );
        db
    }

    /// The URL of user `fm` of a [`Self::start_tls`] server (TLS settings not included).
    pub fn tls_url(&self, database: &str) -> String {
        format!("mysql://fm:fm-secret@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs `sql` as root over the server's Unix socket (which
    /// `require_secure_transport` counts as secure).
    pub fn sql_over_socket(&self, sql: &str) {
        let out = Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.path("sock").display()))
            .args(["-uroot", "-e", sql])
            .output()
            .expect("mariadb client (Debian package mariadb-client)");
        assert!(
            out.status.success(),
            "mariadb -e {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start_with(extra: Vec<String>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        // its own temporary directory: bootstraps running side by side
        // would otherwise clash on temporary table files in /tmp
        let out = Command::new("mariadb-install-db")
            .env("TMPDIR", dir.path())
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
            extra,
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
            .arg(format!("--tmpdir={}", self.dir.path().display()))
            .args(["--innodb-buffer-pool-size=64M", "--skip-name-resolve"])
            .args(&self.extra)
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
    /// TLS only (`--port 0 --tls-port port`): the server's files, and
    /// whether it asks clients for a certificate.
    tls: Option<(PathBuf, PathBuf, PathBuf, bool)>,
}

impl PrivateRedis {
    /// `appendfsync`: `always`, `everysec` or `no`.
    pub fn start(appendfsync: &str) -> Self {
        let mut r = Self {
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            fsync: appendfsync.to_string(),
            child: None,
            tls: None,
        };
        r.restart();
        r
    }

    /// A server that speaks only TLS on its port, with `pki`'s server
    /// certificate; with `client_certs`, clients must present one signed by
    /// `pki`'s CA (`tls-auth-clients yes`).
    pub fn start_tls(pki: &TestPki, client_certs: bool) -> Self {
        let mut r = Self {
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            fsync: "everysec".into(),
            child: None,
            tls: Some((pki.server_cert(), pki.server_key(), pki.ca(), client_certs)),
        };
        r.restart();
        r
    }

    /// `redis://…`, or `rediss://…` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut cmd = Command::new("redis-server");
        match &self.tls {
            None => cmd.arg("--port").arg(self.port.to_string()),
            Some((cert, key, ca, client_certs)) => cmd
                .args(["--port", "0", "--tls-port"])
                .arg(self.port.to_string())
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .arg("--tls-ca-cert-file")
                .arg(ca)
                .arg("--tls-auth-clients")
                .arg(if *client_certs { "yes" } else { "no" }),
        };
        let child = cmd
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
        if self.tls.is_some() {
            // a plain PING cannot reach it; the tests' first TLS command waits
            return;
        }
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

/// `name` on `PATH`, else the first of `fallbacks` that exists; panics with
/// the fix when neither has it.
fn find_bin(name: &str, fallbacks: &[PathBuf]) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name));
    on_path
        .chain(fallbacks.iter().cloned())
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found: run scripts/services test-deps (make test does)")
        })
}

/// Kills a private server hard (SIGKILL) and waits until its port is closed.
fn kill_child(child: &mut Option<Child>, port: u16, what: &str) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
    wait_port(port, false, Duration::from_secs(30), what);
}

/// `sql` over ClickHouse's HTTP interface on `port`: the body of a 200
/// answer, `None` for anything else. Plain std HTTP/1.0 rather than reqwest,
/// so it works inside and outside a tokio runtime.
fn clickhouse_get(port: u16, sql: &str) -> Option<String> {
    use std::io::{Read, Write};
    let query: String = url::form_urlencoded::byte_serialize(sql.as_bytes()).collect();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET /?query={query} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?;
    (status == "200").then(|| body.to_string())
}

/// A ClickHouse server with its own config, data directory and ports.
///
/// Debian 12 ships clickhouse-server 18.16: the config is the `<yandex>` root
/// of that era, and only the HTTP and native ports are opened (no
/// `interserver_http_port`, so no replication port; 18.16 has no MySQL or
/// PostgreSQL protocol ports). It runs as a child process, not `--daemon`,
/// so `kill9` is a plain SIGKILL of the server itself.
pub struct PrivateClickHouse {
    pub http_port: u16,
    pub tcp_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateClickHouse {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let http_port = free_port();
        let tcp_port = std::iter::repeat_with(free_port)
            .find(|p| *p != http_port)
            .expect("second free port");
        for sub in ["data", "tmp", "user_files", "format_schemas"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("clickhouse dirs");
        }
        let d = dir.path().display();
        let config = format!(
            r#"<?xml version="1.0"?>
<yandex>
  <logger>
    <level>information</level>
    <log>{d}/server.log</log>
    <errorlog>{d}/error.log</errorlog>
    <size>10M</size>
    <count>1</count>
  </logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>{http_port}</http_port>
  <tcp_port>{tcp_port}</tcp_port>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <users_config>{d}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <!-- 5 GiB by default; several instances run side by side in tests -->
  <mark_cache_size>67108864</mark_cache_size>
</yandex>
"#
        );
        // users_config: one passwordless `default` user, loopback only, no
        // quota limits (an empty quota has no intervals).
        let users = r#"<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
  </users>
  <quotas><default></default></quotas>
</yandex>
"#;
        std::fs::write(dir.path().join("config.xml"), config).expect("config.xml");
        std::fs::write(dir.path().join("users.xml"), users).expect("users.xml");
        let mut ch = Self {
            http_port,
            tcp_port,
            dir,
            child: None,
        };
        ch.restart();
        ch
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// What `SELECT version()` says, e.g. `18.16.1`.
    pub fn version(&self) -> String {
        clickhouse_get(self.http_port, "SELECT version()")
            .expect("clickhouse answers SELECT version()")
            .trim()
            .to_string()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the server (again) on the same config, data and ports.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        // Debian installs clickhouse-server to /usr/sbin, which a non-root
        // PATH lacks; upstream packages add the multi-call `clickhouse`.
        let server = find_bin(
            "clickhouse-server",
            &[
                "/usr/sbin/clickhouse-server".into(),
                "/usr/bin/clickhouse".into(),
            ],
        );
        let mut cmd = Command::new(&server);
        if server.file_name().is_some_and(|n| n == "clickhouse") {
            cmd.arg("server");
        }
        let mut child = cmd
            .arg(format!(
                "--config-file={}",
                self.dir().join("config.xml").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("clickhouse-server");
        let start = Instant::now();
        while clickhouse_get(self.http_port, "SELECT 1").as_deref() != Some("1\n") {
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() || start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(self.dir().join("error.log"));
                panic!("clickhouse-server did not come up ({exited:?}): {log:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown. Inserted parts are already in files, so they
    /// survive; what a kill loses is whatever the server held in memory.
    pub fn kill9(&mut self) {
        kill_child(&mut self.child, self.http_port, "clickhouse-server");
        wait_port(
            self.tcp_port,
            false,
            Duration::from_secs(30),
            "clickhouse-server",
        );
    }
}

impl Drop for PrivateClickHouse {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A tansu broker (Apache Kafka protocol) on its own port and directory.
///
/// Storage is `sqlite://` in the instance's directory when the tansu binary
/// has the `libsql` feature: topics and records then survive `kill9` and
/// `restart`. The build `scripts/services` installs by default has only
/// `dynostore` (`memory://` and `s3://`), and with `memory://` a restart
/// starts empty, so a test that restarts the broker either checks
/// [`PrivateKafka::keeps_data`] or creates its topics again.
/// `TANSU_BIN` picks another binary than `tansu` on `PATH` / ~/.cargo/bin.
pub struct PrivateKafka {
    pub port: u16,
    dir: tempfile::TempDir,
    storage: &'static str,
    child: Option<Child>,
}

impl PrivateKafka {
    pub fn start() -> Self {
        // `tansu --help` ends with e.g. "Storage engines: dynostore, libsql"
        let help = Command::new(Self::tansu())
            .arg("--help")
            .output()
            .expect("tansu --help");
        let has_sqlite = String::from_utf8_lossy(&help.stdout)
            .lines()
            .any(|l| l.starts_with("Storage engines:") && l.contains("libsql"));
        let mut k = Self {
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            // a relative sqlite URL is a file in the broker's working directory
            storage: if has_sqlite {
                "sqlite://tansu.db"
            } else {
                "memory://tansu/"
            },
            child: None,
        };
        k.restart();
        k
    }

    /// `host:port` for a Kafka client's `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Whether topics and records survive `kill9` + `restart` (sqlite
    /// storage) or not (memory storage).
    pub fn keeps_data(&self) -> bool {
        self.storage.starts_with("sqlite:")
    }

    fn broker_url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    fn tansu() -> PathBuf {
        if let Some(bin) = std::env::var_os("TANSU_BIN") {
            return bin.into();
        }
        let cargo_bin = std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".cargo/bin/tansu"))
            .unwrap_or_default();
        find_bin("tansu", &[cargo_bin])
    }

    /// Starts the broker (again) on the same port and storage.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let url = self.broker_url();
        let log = std::fs::File::create(self.dir.path().join("broker.log")).expect("broker.log");
        // tansu opens only the listener: no Prometheus or OTLP endpoint
        // unless --otlp-endpoint-url is given.
        let child = Command::new(Self::tansu())
            .current_dir(self.dir.path())
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", self.storage, "--silent"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tansu broker");
        self.child = Some(child);
        wait_port(self.port, true, Duration::from_secs(30), "tansu broker");
    }

    /// Creates `name` with `partitions` partitions (tansu does not create
    /// topics on first use). Panics when it exists.
    pub fn create_topic(&self, name: &str, partitions: u32) {
        let out = Command::new(Self::tansu())
            .args(["topic", "create", name, "--broker", &self.broker_url()])
            .arg(format!("--partitions={partitions}"))
            .output()
            .expect("tansu topic create");
        assert!(
            out.status.success(),
            "tansu topic create {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Topic names and partition counts, as `tansu topic list` reports them.
    pub fn topics(&self) -> Vec<(String, usize)> {
        let out = Command::new(Self::tansu())
            .args(["topic", "list", "--broker", &self.broker_url()])
            .output()
            .expect("tansu topic list");
        assert!(
            out.status.success(),
            "tansu topic list: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list: Vec<serde_json::Value> =
            serde_json::from_slice(&out.stdout).expect("tansu topic list prints JSON");
        list.iter()
            .map(|t| {
                let name = t["name"].as_str().unwrap_or_default().to_string();
                let partitions = t["partitions"].as_array().map_or(0, Vec::len);
                (name, partitions)
            })
            .collect()
    }

    /// SIGKILL; with memory storage, the end of its topics.
    pub fn kill9(&mut self) {
        kill_child(&mut self.child, self.port, "tansu broker");
    }
}

impl Drop for PrivateKafka {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A test CA and what it signed, as PEM files in a directory of their own:
/// a server certificate for `127.0.0.1` and `localhost`, and a client
/// certificate. Every instance is a different CA.
pub struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    pub fn new(name: &str) -> Self {
        Self::with_server_names(name, &["127.0.0.1", "localhost"])
    }

    /// Like [`TestPki::new`], the server certificate naming only `names`.
    pub fn with_server_names(name: &str, names: &[&str]) -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |file: &str, pem: String| {
            std::fs::write(dir.path().join(file), pem).expect("write pem");
        };
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, format!("flowmeter test CA {name}"));
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("ca key"))
            .expect("self-signed ca");
        write("ca.pem", ca.pem());
        for (who, names, usage) in [
            (
                "server",
                names.iter().map(|n| n.to_string()).collect(),
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
            (
                "client",
                vec!["flowmeter".to_string()],
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
        ] {
            let key = KeyPair::generate().expect("key");
            let mut p = CertificateParams::new(names).expect("params");
            p.distinguished_name
                .push(DnType::CommonName, format!("flowmeter test {who}"));
            p.extended_key_usages = vec![usage];
            let cert = p.signed_by(&key, &ca).expect("signed");
            write(&format!("{who}.pem"), cert.pem());
            write(&format!("{who}-key.pem"), key.serialize_pem());
        }
        Self { dir }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.path().join("server-key.pem")
    }
    pub fn client_cert(&self) -> PathBuf {
        self.dir.path().join("client.pem")
    }
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client-key.pem")
    }
}

/// A Redis Cluster of 3 masters and 3 replicas on loopback ports (each
/// node a child process with its own directory, AOF on, a 2 s node
/// timeout so a killed master's replica takes over quickly), made with
/// `redis-cli --cluster create`; every node is killed when it is dropped.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    dir: tempfile::TempDir,
    children: Vec<Option<Child>>,
}

/// Nodes of a test cluster: 3 masters, each with one replica.
const CLUSTER_NODES: usize = 6;

/// A port P free with its cluster-bus port P + 10000.
fn free_cluster_port(taken: &[u16]) -> u16 {
    loop {
        let p = free_port();
        let bus_free = p < 55_000 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok();
        if bus_free && !taken.contains(&p) && !taken.iter().any(|t| t + 10_000 == p) {
            return p;
        }
    }
}

impl RedisCluster {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ports = Vec::new();
        for _ in 0..CLUSTER_NODES {
            let p = free_cluster_port(&ports);
            ports.push(p);
        }
        let children = ports
            .iter()
            .map(|p| Some(Self::spawn_node(dir.path(), *p)))
            .collect();
        let cluster = Self {
            ports,
            dir,
            children,
        };
        for p in &cluster.ports {
            wait_port(
                *p,
                true,
                Duration::from_secs(30),
                "redis-server (cluster node)",
            );
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli (Debian package redis-tools)");
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        // every node agrees the cluster is up, and every replica has synced
        // with its master (a replica that never did cannot be elected when
        // its master fails)
        let start = Instant::now();
        while !cluster
            .ports
            .iter()
            .all(|p| cluster.info(*p).contains("cluster_state:ok") && cluster.replica_synced(*p))
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the cluster did not reach cluster_state:ok with synced replicas in 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    /// The node on `port`, its files under `dir/port` (its `nodes.conf`
    /// keeps its identity and place in the cluster across a restart).
    fn spawn_node(dir: &Path, port: u16) -> Child {
        let node_dir = dir.join(port.to_string());
        std::fs::create_dir_all(&node_dir).expect("node dir");
        Command::new("redis-server")
            .arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1", "--cluster-enabled", "yes"])
            .arg("--cluster-config-file")
            .arg(node_dir.join("nodes.conf"))
            .args(["--cluster-node-timeout", "2000"])
            .args(["--appendonly", "yes", "--save", ""])
            .arg("--dir")
            .arg(&node_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server)")
    }

    /// Starts the node on `port` again after [`RedisCluster::kill`] and the
    /// failover that followed: the old master comes back as a replica of the
    /// one promoted in its place. Returns once it has synced with it.
    pub fn restart(&mut self, port: u16) {
        let Some(at) = self.ports.iter().position(|p| *p == port) else {
            panic!("no node on port {port}");
        };
        let Some(slot) = self.children.get_mut(at) else {
            panic!("no child slot for port {port}");
        };
        *slot = Some(Self::spawn_node(self.dir.path(), port));
        wait_port(
            port,
            true,
            Duration::from_secs(30),
            "redis-server (cluster node)",
        );
        let start = Instant::now();
        while !(self.info(port).contains("cluster_state:ok")
            && self.replication(port).contains("master_link_status:up"))
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the restarted node on {port} did not rejoin and sync in 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the node on `port` is a master, or a replica whose link to
    /// its master is up.
    fn replica_synced(&self, port: u16) -> bool {
        let info = self.replication(port);
        info.contains("role:master") || info.contains("master_link_status:up")
    }

    /// `INFO replication` of the node on `port`.
    fn replication(&self, port: u16) -> String {
        Self::cli(port, &["info", "replication"])
    }

    /// `CLUSTER INFO` of the node on `port`.
    pub fn info(&self, port: u16) -> String {
        Self::cli(port, &["cluster", "info"])
    }

    /// Ports of the nodes that are masters now.
    pub fn masters(&self) -> Vec<u16> {
        self.ports
            .iter()
            .copied()
            .filter(|p| Self::cli(*p, &["role"]).starts_with("master"))
            .collect()
    }

    /// `redis-cli -p port …`'s output (empty when it cannot run).
    fn cli(port: u16, args: &[&str]) -> String {
        Command::new("redis-cli")
            .arg("-p")
            .arg(port.to_string())
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// The cluster node id of the node on `port`.
    pub fn node_id(&self, port: u16) -> String {
        Self::cli(port, &["cluster", "myid"]).trim().to_string()
    }

    /// How many hash slots the node on `port` serves.
    pub fn slot_count(&self, port: u16) -> u32 {
        let id = self.node_id(port);
        let nodes = Self::cli(port, &["cluster", "nodes"]);
        let Some(line) = nodes.lines().find(|l| l.starts_with(&id)) else {
            return 0;
        };
        // fields 9.. are slots or ranges ("0-5460"); migrating ones are "[…]"
        line.split_whitespace()
            .skip(8)
            .filter(|r| !r.starts_with('['))
            .map(|r| match r.split_once('-') {
                Some((a, b)) => match (a.parse::<u32>(), b.parse::<u32>()) {
                    (Ok(a), Ok(b)) => b - a + 1,
                    _ => 0,
                },
                None => u32::from(r.parse::<u32>().is_ok()),
            })
            .sum()
    }

    /// Moves `slots` hash slots from the master on `from` to the master on
    /// `to` with `redis-cli --cluster reshard` (keys and all, each slot
    /// migrating while clients keep writing: they meet ASK, then MOVED);
    /// returns when it is done.
    pub fn reshard(&self, from: u16, to: u16, slots: u32) {
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("reshard")
            .arg(format!("127.0.0.1:{from}"))
            .args(["--cluster-from", &self.node_id(from)])
            .args(["--cluster-to", &self.node_id(to)])
            .args(["--cluster-slots", &slots.to_string()])
            .arg("--cluster-yes")
            .output()
            .expect("redis-cli --cluster reshard");
        assert!(
            out.status.success(),
            "redis-cli --cluster reshard {from} → {to} ({slots} slots): {}{}",
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .rev()
                .take(10)
                .collect::<Vec<_>>()
                .join("\n"),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The hash slot of `key`.
    pub fn slot_of(&self, key: &str) -> u16 {
        let port = self.ports.first().copied().unwrap_or_default();
        Self::cli(port, &["cluster", "keyslot", key])
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT")
    }

    /// Starts moving `slot` from the master on `from` to the master on `to`
    /// by hand, as `redis-cli --cluster reshard` does, and moves its keys:
    /// until [`RedisCluster::finish_slot_move`], `from` answers ASK for them.
    pub fn begin_slot_move(&self, slot: u16, from: u16, to: u16) {
        let slot = slot.to_string();
        let ok = |port: u16, args: &[&str]| {
            let out = Self::cli(port, args);
            assert!(out.trim() == "OK", "redis-cli -p {port} {args:?}: {out}");
        };
        ok(
            to,
            &[
                "cluster",
                "setslot",
                &slot,
                "importing",
                &self.node_id(from),
            ],
        );
        ok(
            from,
            &["cluster", "setslot", &slot, "migrating", &self.node_id(to)],
        );
        let keys = Self::cli(from, &["cluster", "getkeysinslot", &slot, "1000"]);
        let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
        if !keys.is_empty() {
            let port = to.to_string();
            let mut args = vec!["migrate", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys);
            ok(from, &args);
        }
    }

    /// Ends a move begun by [`RedisCluster::begin_slot_move`]: every master
    /// learns that `to` owns `slot`, and clients sent elsewhere get MOVED.
    pub fn finish_slot_move(&self, slot: u16, to: u16) {
        let (slot, id) = (slot.to_string(), self.node_id(to));
        for m in self.masters() {
            let out = Self::cli(m, &["cluster", "setslot", &slot, "node", &id]);
            assert!(out.trim() == "OK", "setslot node on {m}: {out}");
        }
    }

    /// Error replies of `code` (e.g. `MOVED`, `ASK`) every node has sent
    /// since it started (`INFO errorstats`).
    pub fn errors_sent(&self, code: &str) -> u64 {
        let prefix = format!("errorstat_{code}:count=");
        self.ports
            .iter()
            .map(|p| Self::cli(*p, &["info", "errorstats"]))
            .flat_map(|info| {
                info.lines()
                    .filter_map(|l| {
                        l.trim()
                            .strip_prefix(&prefix)?
                            .split(',')
                            .next()?
                            .parse::<u64>()
                            .ok()
                    })
                    .collect::<Vec<_>>()
            })
            .sum()
    }

    /// kill -9 of the node on `port`.
    pub fn kill(&mut self, port: u16) {
        let at = self.ports.iter().position(|p| *p == port);
        if let Some(mut c) = at
            .and_then(|i| self.children.get_mut(i))
            .and_then(Option::take)
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `redis://` URLs of every node, the first node first.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().filter_map(Option::take) {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
