//! A fleet on one machine: a real `etcd` in a namespace of its own and
//! hosts that are each a standard [`Fixture`] (client, switch, blue and
//! green namespaces) whose daemon reaches etcd over a veth pair.
//!
//! etcd listens on [`ETCD_ADDR`], on its namespace's loopback; host `i`'s
//! switch namespace reaches it through `10.200.(160 + i).0/24`. Fleet
//! commands run in etcd's namespace, as an operator's machine would.
//!
//! etcd is set up as the README tells an operator to: TLS with client
//! certificates (made here with `openssl`, by a CA of the bed's own), and
//! authentication with least-privilege roles: each host may write only its
//! own record, the operator everything below the prefix.

use std::{
    fs,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::{
    cli::{CliRun, binary},
    fixture::{Daemon, Fixture, config_text},
    metrics::METRICS,
    netns::{Namespace, veth},
};

/// etcd's client address, inside its namespace and every host's route.
pub const ETCD_ADDR: &str = "10.200.250.1";
/// The fleet's key prefix in the tests.
pub const PREFIX: &str = "/bgtest";
/// Short, so that a killed daemon's host is dropped within seconds.
pub const LEASE_TTL_SECS: u64 = 3;
/// At most this many hosts: their links use 10.200.160.0/24 onwards.
pub const MAX_HOSTS: usize = 40;

static NEXT_BED: AtomicU32 = AtomicU32::new(0);

pub fn etcd_url() -> String {
    format!("https://{ETCD_ADDR}:2379")
}

/// The etcd user with every right, which sets up the others.
pub const ROOT: &str = "root";
/// The operator's etcd user: read-write below the prefix.
pub const OPERATOR: &str = "operator";

/// A certificate authority of the bed's own and the certificates it
/// issued, in one directory removed on drop.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    /// A new CA, `bed-ca`.
    pub fn new(dir: PathBuf) -> Pki {
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the PKI directory");
        let pki = Pki { dir };
        pki.self_signed("ca");
        pki
    }

    fn self_signed(&self, name: &str) {
        let (cert, key) = (self.cert(name), self.key(name));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            path(&key),
            "-out",
            path(&cert),
            "-days",
            "2",
            "-subj",
            &format!("/CN=bed-{name}"),
        ]);
    }

    /// A second, unrelated CA named `name`, whose certificates etcd does
    /// not trust.
    pub fn other_ca(&self, name: &str) {
        self.self_signed(name);
    }

    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }

    /// Issues `name`'s certificate (common name `name`, which etcd takes
    /// as the user) signed by `ca`, valid for `days` (negative: already
    /// expired) with the extensions `extensions`.
    pub fn issue(&self, name: &str, ca: &str, days: i32, extensions: &str) {
        let csr = self.dir.join(format!("{name}.csr"));
        let ext = self.dir.join(format!("{name}.ext"));
        fs::write(&ext, extensions).expect("write the extensions");
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            path(&self.key(name)),
            "-out",
            path(&csr),
            "-subj",
            &format!("/CN={name}"),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            path(&csr),
            "-CA",
            path(&self.cert(ca)),
            "-CAkey",
            path(&self.key(ca)),
            "-CAcreateserial",
            "-out",
            path(&self.cert(name)),
            "-days",
            &days.to_string(),
            "-extfile",
            path(&ext),
        ]);
    }

    /// A client certificate for etcd user `name`.
    pub fn client(&self, name: &str) {
        self.issue(name, "ca", 2, "extendedKeyUsage=clientAuth\n");
    }

    /// etcdctl's TLS flags as `user`.
    fn etcdctl_flags(&self, user: &str) -> Vec<String> {
        vec![
            format!("--cacert={}", path(&self.cert("ca"))),
            format!("--cert={}", path(&self.cert(user))),
            format!("--key={}", path(&self.key(user))),
        ]
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn path(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn openssl(args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A real etcd, killed (by its PID) on drop; its data directory survives a
/// [`Etcd::stop`] so that a restart keeps every key and revision. It
/// serves TLS and requires client certificates from [`Etcd::pki`]'s CA.
pub struct Etcd {
    pub namespace: Namespace,
    pub pki: Pki,
    data_dir: PathBuf,
    child: Option<Child>,
}

impl Etcd {
    fn start_in(namespace: Namespace) -> Etcd {
        namespace.ip(&["addr", "add", &format!("{ETCD_ADDR}/32"), "dev", "lo"]);
        let data_dir = std::env::temp_dir().join(format!("{}-data", namespace.name()));
        let _ = fs::remove_dir_all(&data_dir);
        let pki = Pki::new(std::env::temp_dir().join(format!("{}-pki", namespace.name())));
        pki.issue(
            "server",
            "ca",
            2,
            &format!("subjectAltName=IP:{ETCD_ADDR}\nextendedKeyUsage=serverAuth\n"),
        );
        pki.client(ROOT);
        let mut etcd = Etcd {
            namespace,
            pki,
            data_dir,
            child: None,
        };
        etcd.start();
        etcd
    }

    /// `etcdctl ARGS` as etcd user `user` (its certificate's common name).
    pub fn etcdctl(&self, user: &str, args: &[&str]) -> CliRun {
        self.namespace
            .command("etcdctl")
            .args(["--endpoints", &etcd_url(), "--dial-timeout", "2s"])
            .args(self.pki.etcdctl_flags(user))
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .unwrap_or_else(|error| panic!("cannot run etcdctl {args:?}: {error}"))
            .into()
    }

    /// [`Etcd::etcdctl`], which must succeed.
    pub fn etcdctl_ok(&self, user: &str, args: &[&str]) -> String {
        let run = self.etcdctl(user, args);
        assert_eq!(run.code, 0, "etcdctl {args:?} as {user} failed: {run:?}");
        run.stdout
    }

    /// Starts etcd (again) and waits, at most 20 s, until it answers.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "etcd is already running");
        let url = etcd_url();
        let log = fs::File::create(self.data_dir.with_extension("log")).expect("etcd log file");
        let child = self
            .namespace
            .command("etcd")
            .args([
                "--name",
                "bed",
                "--data-dir",
                self.data_dir.to_str().expect("utf-8 path"),
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
                "--client-cert-auth",
                "--trusted-ca-file",
                path(&self.pki.cert("ca")),
                "--cert-file",
                path(&self.pki.cert("server")),
                "--key-file",
                path(&self.pki.key("server")),
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-cluster",
                "bed=http://127.0.0.1:2380",
                "--logger",
                "zap",
                "--log-level",
                "warn",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd (apt-get install etcd-server, or `cargo xtask setup`)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "etcd did not answer within 20 s: see {}",
                self.data_dir.with_extension("log").display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn answers(&self) -> bool {
        self.etcdctl(ROOT, &["get", "health-probe"]).code == 0
    }

    /// Turns authentication on with the README's roles: `hosts` may each
    /// write their own record (and report a conflict over their name) and
    /// read the desired states and changes; the operator may do anything
    /// below the prefix.
    fn enable_auth(&self, hosts: &[String]) {
        let v1 = format!("{PREFIX}/v1/");
        let add_user = |user: &str, role: &str| {
            self.pki.client(user);
            self.etcdctl_ok(
                ROOT,
                &[
                    "user",
                    "add",
                    &format!("{user}:unused"),
                    "--interactive=false",
                ],
            );
            self.etcdctl_ok(ROOT, &["user", "grant-role", user, role]);
        };
        self.etcdctl_ok(
            ROOT,
            &[
                "user",
                "add",
                &format!("{ROOT}:unused"),
                "--interactive=false",
            ],
        );
        self.etcdctl_ok(ROOT, &["role", "add", OPERATOR]);
        self.etcdctl_ok(
            ROOT,
            &[
                "role",
                "grant-permission",
                OPERATOR,
                "readwrite",
                &v1,
                "--prefix=true",
            ],
        );
        add_user(OPERATOR, OPERATOR);
        for host in hosts {
            let role = format!("bluegreen-host-{host}");
            self.etcdctl_ok(ROOT, &["role", "add", &role]);
            let grants = [
                ("readwrite", format!("{v1}hosts/{host}"), false),
                ("write", format!("{v1}conflicts/{host}"), false),
                ("read", format!("{v1}services/"), true),
                ("read", format!("{v1}changes/"), true),
            ];
            for (permission, key, prefix) in &grants {
                self.etcdctl_ok(
                    ROOT,
                    &[
                        "role",
                        "grant-permission",
                        &role,
                        permission,
                        key,
                        &format!("--prefix={prefix}"),
                    ],
                );
            }
            add_user(host, &role);
        }
        self.etcdctl_ok(ROOT, &["auth", "enable"]);
    }

    /// Kills etcd (SIGKILL, as in a crash) and reaps it.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("etcd running");
        child.kill().expect("kill etcd");
        child.wait().expect("reap etcd");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.data_dir);
        let _ = fs::remove_file(self.data_dir.with_extension("log"));
    }
}

/// One host of the fleet: its standard fixture, its config and its daemon.
pub struct FleetHost {
    pub name: String,
    // Field order is drop order: the daemon stops before the fixture goes.
    daemon: Option<Daemon>,
    pub fixture: Fixture,
    config: String,
}

impl FleetHost {
    /// Writes the host's config: fleet host name `name`, with `name`'s
    /// client certificate, and `tls` (TOML lines) in place of the TLS
    /// files when not empty.
    pub fn configure(&mut self, pki: &Pki, name: &str, tls: &str) {
        let tls = match tls {
            "" => format!(
                "ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                path(&pki.cert("ca")),
                path(&pki.cert(name)),
                path(&pki.key(name))
            ),
            given => given.to_owned(),
        };
        let fleet = format!(
            "[fleet]\nendpoints = [\"{}\"]\nhost = \"{name}\"\nprefix = \"{PREFIX}\"\nlease_ttl_secs = {LEASE_TTL_SECS}\n{tls}\n",
            etcd_url()
        );
        self.config = self.fixture.write_config(&config_text(&fleet, ""));
    }

    /// Runs the daemon expecting it to refuse to start: it must exit
    /// within `within` (else it is killed and the test fails).
    pub fn refused_daemon(&self, within: Duration) -> CliRun {
        let mut child = self
            .fixture
            .bluegreen
            .spawn(&["daemon", "--config", &self.config]);
        let deadline = Instant::now() + within;
        while child.try_wait().expect("poll the daemon").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let output = child.wait_with_output().expect("reap the daemon");
                panic!(
                    "{}: the daemon still runs after {within:?}: {:?}",
                    self.name,
                    CliRun::from(output)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().expect("reap the daemon").into()
    }

    /// Starts the daemon (metrics on [`METRICS`] in its switch namespace)
    /// and waits until `status` answers.
    pub fn start_daemon(&mut self) {
        assert!(
            self.daemon.is_none(),
            "{}: daemon already running",
            self.name
        );
        self.daemon = Some(
            self.fixture
                .start_daemon(&self.config, &[&format!("--metrics={METRICS}")]),
        );
    }

    /// SIGKILL, as in a crash.
    pub fn kill_daemon(&mut self) {
        self.daemon.take().expect("daemon running").kill();
    }

    /// Adds `tables` (TOML) to the host's service "web", for its next
    /// daemon start.
    pub fn add_service_tables(&self, tables: &str) {
        let mut text = std::fs::read_to_string(&self.config).expect("read the host's config");
        text.push_str(tables);
        std::fs::write(&self.config, text).expect("write the host's config");
    }

    pub fn daemon_pid(&self) -> u32 {
        self.daemon.as_ref().expect("daemon running").pid()
    }

    /// Sends `signal` to the daemon (SIGSTOP, SIGCONT...).
    pub fn signal_daemon(&self, signal: libc::c_int) {
        self.daemon.as_ref().expect("daemon running").signal(signal);
    }

    /// The color (or `error: ...`) a new client connection gets.
    pub fn get(&self) -> String {
        self.fixture.get()
    }
}

/// etcd and `count` hosts named `h1`, `h2`..., each with service "web" and
/// both backends running; daemons not started yet.
pub struct FleetBed {
    // Hosts first: their daemons stop before etcd does.
    pub hosts: Vec<FleetHost>,
    pub etcd: Etcd,
}

impl FleetBed {
    pub fn new(count: usize) -> FleetBed {
        assert!((1..=MAX_HOSTS).contains(&count), "1 to {MAX_HOSTS} hosts");
        let name = format!(
            "bg{}-etcd{}",
            std::process::id(),
            NEXT_BED.fetch_add(1, Ordering::Relaxed)
        );
        let etcd = Etcd::start_in(Namespace::create(&name));
        let names: Vec<String> = (1..=count).map(|index| format!("h{index}")).collect();
        etcd.enable_auth(&names);
        let hosts = names
            .into_iter()
            .enumerate()
            .map(|(index, name)| {
                let fixture = Fixture::new();
                wire_to_etcd(&etcd.namespace, &fixture.topology.switch, index);
                let mut host = FleetHost {
                    name: name.clone(),
                    daemon: None,
                    fixture,
                    config: String::new(),
                };
                host.configure(&etcd.pki, &name, "");
                host
            })
            .collect();
        FleetBed { hosts, etcd }
    }

    /// The TLS flags of `bluegreen fleet` as etcd user `user`.
    pub fn tls_flags(&self, user: &str) -> Vec<String> {
        let pki = &self.etcd.pki;
        [
            ("--cacert", pki.cert("ca")),
            ("--cert", pki.cert(user)),
            ("--key", pki.key(user)),
        ]
        .iter()
        .map(|(flag, file)| format!("{flag}={}", path(file)))
        .collect()
    }

    /// Starts every daemon and waits (at most 30 s) until each is
    /// registered in etcd.
    pub fn start(&mut self) {
        for host in &mut self.hosts {
            host.start_daemon();
        }
        let names: Vec<String> = self.hosts.iter().map(|host| host.name.clone()).collect();
        self.wait_for_hosts(&names, Duration::from_secs(30));
    }

    /// `bluegreen fleet ARGS --etcd URL` from etcd's namespace, as the
    /// operator.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = self.bare_command(args);
        command
            .args(["--etcd", &etcd_url(), "--prefix", PREFIX])
            .args(self.tls_flags(OPERATOR));
        command
    }

    /// `bluegreen fleet ARGS` from etcd's namespace: `args` say where etcd
    /// is and how to connect.
    pub fn bare_command(&self, args: &[&str]) -> Command {
        let mut command = self
            .etcd
            .namespace
            .command(binary().to_str().expect("utf-8"));
        command.arg("fleet").args(args).env_remove("RUST_LOG");
        command
    }

    pub fn fleet(&self, args: &[&str]) -> CliRun {
        self.command(args)
            .output()
            .unwrap_or_else(|error| panic!("cannot run bluegreen fleet {args:?}: {error}"))
            .into()
    }

    /// `fleet status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let run = self.fleet(&["status", "--json"]);
        assert_eq!(run.code, 0, "fleet status failed: {run:?}");
        serde_json::from_str(&run.stdout).expect("fleet status --json is JSON")
    }

    /// The names of the hosts `fleet status` lists, sorted.
    pub fn live_hosts(&self) -> Vec<String> {
        live_hosts_in(&self.status())
    }

    /// Waits until exactly `names` are live.
    pub fn wait_for_hosts(&self, names: &[String], within: Duration) {
        let mut wanted = names.to_vec();
        wanted.sort();
        let deadline = Instant::now() + within;
        loop {
            let live = self.live_hosts();
            if live == wanted {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "live hosts {live:?}, expected {wanted:?} within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every host in `hosts` answers new connections with
    /// `color` (at most `within`).
    pub fn wait_serving(&self, hosts: &[&FleetHost], color: &str, within: Duration) {
        let deadline = Instant::now() + within;
        for host in hosts {
            loop {
                let got = host.get();
                if got == color {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} serves {got:?}, not {color}, after {within:?}",
                    host.name
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// A veth pair from etcd's namespace to host `index`'s switch, and the
/// route to [`ETCD_ADDR`] through it.
fn wire_to_etcd(etcd: &Namespace, switch: &Namespace, index: usize) {
    let (near, far) = (format!("e{index}"), "f0");
    veth(etcd, &near, switch, far);
    let subnet = 160 + index;
    etcd.ip(&[
        "addr",
        "add",
        &format!("10.200.{subnet}.1/24"),
        "dev",
        &near,
    ]);
    etcd.ip(&["link", "set", &near, "up"]);
    switch.ip(&["addr", "add", &format!("10.200.{subnet}.2/24"), "dev", far]);
    switch.ip(&["link", "set", far, "up"]);
    switch.ip(&[
        "route",
        "add",
        &format!("{ETCD_ADDR}/32"),
        "via",
        &format!("10.200.{subnet}.1"),
    ]);
    // The first connection must not wait out neighbour resolution.
    let target: SocketAddr = format!("{ETCD_ADDR}:2379").parse().expect("literal");
    let deadline = Instant::now() + Duration::from_secs(5);
    while switch
        .spawn(move || TcpStream::connect_timeout(&target, Duration::from_millis(500)).is_err())
        .join()
        .expect("probe thread")
    {
        assert!(
            Instant::now() < deadline,
            "{} cannot reach etcd at {target}",
            switch.name()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The live hosts `fleet status --json` lists, by name, sorted.
pub fn live_hosts_in(status: &serde_json::Value) -> Vec<String> {
    let mut names: Vec<String> = status["hosts"]
        .as_array()
        .expect("hosts array")
        .iter()
        .map(|host| host["host"].as_str().expect("host name").to_owned())
        .collect();
    names.sort();
    names
}
