//! A fleet on one machine: a real `etcd` in a namespace of its own and
//! hosts that are each a standard [`Fixture`] (client, switch, blue and
//! green namespaces) whose daemon reaches etcd over a veth pair.
//!
//! etcd listens on [`ETCD_ADDR`], on its namespace's loopback; host `i`'s
//! switch namespace reaches it through `10.200.(160 + i).0/24`. Fleet
//! commands run in etcd's namespace, as an operator's machine would.

use std::{
    fs,
    net::{SocketAddr, TcpStream},
    path::PathBuf,
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
    format!("http://{ETCD_ADDR}:2379")
}

/// A real etcd, killed (by its PID) on drop; its data directory survives a
/// [`Etcd::stop`] so that a restart keeps every key and revision.
pub struct Etcd {
    pub namespace: Namespace,
    data_dir: PathBuf,
    child: Option<Child>,
}

impl Etcd {
    fn start_in(namespace: Namespace) -> Etcd {
        namespace.ip(&["addr", "add", &format!("{ETCD_ADDR}/32"), "dev", "lo"]);
        let data_dir = std::env::temp_dir().join(format!("{}-data", namespace.name()));
        let _ = fs::remove_dir_all(&data_dir);
        let mut etcd = Etcd {
            namespace,
            data_dir,
            child: None,
        };
        etcd.start();
        etcd
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
        let url = etcd_url();
        self.namespace
            .command("etcdctl")
            .args([
                "--endpoints",
                &url,
                "--dial-timeout",
                "1s",
                "get",
                "health-probe",
            ])
            .env("ETCDCTL_API", "3")
            .output()
            .is_ok_and(|output| output.status.success())
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
        let hosts = (0..count)
            .map(|index| {
                let fixture = Fixture::new();
                wire_to_etcd(&etcd.namespace, &fixture.topology.switch, index);
                let name = format!("h{}", index + 1);
                let fleet = format!(
                    "[fleet]\nendpoints = [\"{}\"]\nhost = \"{name}\"\nprefix = \"{PREFIX}\"\nlease_ttl_secs = {LEASE_TTL_SECS}\n\n",
                    etcd_url()
                );
                let config = fixture.write_config(&config_text(&fleet, ""));
                FleetHost {
                    name,
                    daemon: None,
                    fixture,
                    config,
                }
            })
            .collect();
        FleetBed { hosts, etcd }
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

    /// `bluegreen fleet ARGS --etcd URL` from etcd's namespace.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = self
            .etcd
            .namespace
            .command(binary().to_str().expect("utf-8"));
        command
            .arg("fleet")
            .args(args)
            .args(["--etcd", &etcd_url(), "--prefix", PREFIX])
            .env_remove("RUST_LOG");
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
        let status = self.status();
        let mut names: Vec<String> = status["hosts"]
            .as_array()
            .expect("hosts array")
            .iter()
            .map(|host| host["host"].as_str().expect("host name").to_owned())
            .collect();
        names.sort();
        names
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
