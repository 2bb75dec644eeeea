//! The standard end-to-end setup: a [`Topology`], HTTP backends answering
//! "blue" and "green", and a [`Bluegreen`] instance on the switch, with one
//! service "web" on [`vip()`] sent to [`blue_backend()`] or
//! [`green_backend()`].

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use crate::{
    cli::Bluegreen,
    http::{self, Backend, KeepAlive, Load},
    netns::{Namespace, SWITCH_IFACE, Topology, addr, veth},
};

/// Connect, read and write timeout of every client request.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// The port both backends listen on.
pub const BACKEND_PORT: u16 = 8080;

/// The standard service's VIP, `10.200.100.1:80`.
pub fn vip() -> SocketAddr {
    SocketAddr::new(addr::VIP_V4.parse().expect("literal"), 80)
}

/// The standard service's blue backend, `10.200.2.2:8080`.
pub fn blue_backend() -> SocketAddr {
    SocketAddr::new(addr::BLUE_V4.parse().expect("literal"), BACKEND_PORT)
}

/// The standard service's green backend, `10.200.3.2:8080`.
pub fn green_backend() -> SocketAddr {
    SocketAddr::new(addr::GREEN_V4.parse().expect("literal"), BACKEND_PORT)
}

/// Replica `index` of a pool whose first backend is `first`: the same
/// host, the next ports (replica 0 is `first` itself).
pub fn replica(first: SocketAddr, index: u16) -> SocketAddr {
    SocketAddr::new(first.ip(), BACKEND_PORT + index)
}

/// Starts replica `index` (1 or more) of a color's pool in `namespace`,
/// answering `NAME-2`, `NAME-3`... (the standard backend being `NAME`).
pub fn start_replica(namespace: &Namespace, name: &str, index: u16) -> Backend {
    Backend::start(
        namespace,
        BACKEND_PORT + index,
        &format!("{name}-{}", index + 1),
    )
}

/// `up` on the switch interface with the standard service given by flags.
pub fn up_args() -> Vec<String> {
    [
        "up",
        "--iface",
        SWITCH_IFACE,
        "--service",
        "web",
        "--vip",
        &vip().to_string(),
        "--blue",
        &blue_backend().to_string(),
        "--green",
        &green_backend().to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Borrows owned arguments for [`Bluegreen::run`] and friends.
pub fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// A config file for the switch interface with the standard service:
/// `before_service` goes between the `interface` line (and a blank line) and
/// the `[[service]]` table (end it with a blank line), `after_service`
/// right after the service's last key (start it with a blank line).
pub fn config_text(before_service: &str, after_service: &str) -> String {
    format!(
        "interface = \"{SWITCH_IFACE}\"\n\n{before_service}[[service]]\nname = \"web\"\nvip = \"{}\"\nblue = \"{}\"\ngreen = \"{}\"\n{after_service}",
        vip(),
        blue_backend(),
        green_backend()
    )
}

/// A topology with both backends running and a bluegreen instance that is
/// not up yet. Everything is torn down on drop, in field order.
pub struct Fixture {
    // Field order is drop order: the instance goes down before the
    // backends stop and the namespaces disappear.
    pub bluegreen: Bluegreen,
    blue: Backend,
    /// See [`Fixture::start_green`] and [`Fixture::stop_green`].
    green: Option<Backend>,
    pub topology: Topology,
}

impl Fixture {
    /// Both backends running.
    pub fn new() -> Fixture {
        let mut fixture = Fixture::blue_only();
        fixture.start_green();
        fixture
    }

    /// Only the blue backend running: green's address answers nothing
    /// (start it later with [`Fixture::start_green`]).
    pub fn blue_only() -> Fixture {
        let topology = Topology::new();
        Fixture {
            bluegreen: Bluegreen::new(&topology.switch),
            blue: Backend::start(&topology.blue, BACKEND_PORT, "blue"),
            green: None,
            topology,
        }
    }

    /// Starts the green backend (see [`Fixture::blue_only`]).
    pub fn start_green(&mut self) {
        self.green = Some(Backend::start(&self.topology.green, BACKEND_PORT, "green"));
    }

    /// The standard backend of `color`, to read what it was asked; `None`
    /// for green while it is stopped.
    pub fn backend(&self, color: &str) -> Option<&Backend> {
        match color {
            "blue" => Some(&self.blue),
            "green" => self.green.as_ref(),
            other => panic!("no color {other:?}"),
        }
    }

    /// Stops the green backend: its address no longer answers.
    pub fn stop_green(&mut self) {
        self.green = None;
    }

    /// `up` with the standard service ([`up_args`]); must succeed. Returns
    /// stdout.
    pub fn up(&self) -> String {
        self.up_with(&[])
    }

    /// [`Fixture::up`] with `extra` arguments.
    pub fn up_with(&self, extra: &[&str]) -> String {
        let mut args = up_args();
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        self.bluegreen.ok(&strs(&args))
    }

    /// Where [`Fixture::write_config`] writes: next to the state directory.
    fn config_path(&self) -> PathBuf {
        self.bluegreen.state_dir.with_extension("toml")
    }

    /// Writes a config file next to the state directory (removed on drop);
    /// returns its path as an argument.
    pub fn write_config(&self, text: &str) -> String {
        let path = self.config_path();
        std::fs::write(&path, text).expect("write config");
        path.to_str().expect("utf-8 path").to_owned()
    }

    /// `up --iface s0 --config path`; must succeed. Returns stdout.
    pub fn up_with_config(&self, path: &str) -> String {
        self.bluegreen
            .ok(&["up", "--iface", SWITCH_IFACE, "--config", path])
    }

    /// One request on a new connection from the client namespace: the color
    /// that answered, or `error: ...`.
    pub fn get(&self) -> String {
        self.topology
            .client
            .spawn(|| http::get(vip(), TIMEOUT).unwrap_or_else(|error| format!("error: {error}")))
            .join()
            .expect("client thread")
    }

    /// A keep-alive connection opened from the client namespace (its socket
    /// stays there; the handle can be used from any thread).
    pub fn keep_alive(&self) -> KeepAlive {
        self.topology
            .client
            .spawn(|| KeepAlive::connect(vip(), TIMEOUT).expect("keep-alive connect"))
            .join()
            .expect("client thread")
    }

    /// Load on the VIP from the client namespace: `workers` threads making
    /// `requests` requests in total, each on a new connection.
    pub fn load(&self, workers: usize, requests: u64, deadline: Duration) -> Load {
        Load::start(&self.topology.client, vip(), workers, requests, deadline)
    }

    /// The first service of the first interface in `status --json`.
    pub fn service_status(&self) -> serde_json::Value {
        self.bluegreen.status()["interfaces"][0]["services"][0].clone()
    }

    /// Starts `daemon --config config` with `extra` arguments and waits (at
    /// most 20 s) until `status` succeeds.
    pub fn start_daemon(&self, config: &str, extra: &[&str]) -> Daemon {
        let mut args = vec!["daemon", "--config", config];
        args.extend_from_slice(extra);
        self.start_daemon_with(self.bluegreen.command(&args))
    }

    /// Starts a prepared daemon command (extra environment, say) and waits
    /// as [`Fixture::start_daemon`] does.
    pub fn start_daemon_with(&self, mut command: Command) -> Daemon {
        let child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the daemon");
        let daemon = Daemon(Some(child));
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.bluegreen.run(&["status"]).code != 0 {
            assert!(Instant::now() < deadline, "daemon did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.config_path());
    }
}

/// A running `bluegreen daemon`, stopped with SIGTERM (and reaped) on drop.
pub struct Daemon(Option<Child>);

impl Daemon {
    /// SIGKILL, as in a crash; waits for the process to exit.
    pub fn kill(mut self) {
        let mut child = self.0.take().expect("daemon running");
        child.kill().expect("kill -9 the daemon");
        child.wait().expect("reap the daemon");
    }

    /// Sends `signal` (SIGHUP to reload, say) without waiting.
    pub fn signal(&self, signal: libc::c_int) {
        let child = self.0.as_ref().expect("daemon running");
        // SAFETY: signalling a child we spawned and have not reaped.
        unsafe { libc::kill(child.id() as i32, signal) };
    }

    /// Its process id (`nsenter` execs the daemon: the same process).
    pub fn pid(&self) -> u32 {
        self.0.as_ref().expect("daemon running").id()
    }

    /// SIGTERM; returns how the daemon exited.
    pub fn terminate(mut self) -> ExitStatus {
        let mut child = self.0.take().expect("daemon running");
        sigterm(&child);
        child.wait().expect("daemon exit")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            sigterm(&child);
            let _ = child.wait();
        }
    }
}

fn sigterm(child: &Child) {
    // SAFETY: signalling a child we spawned and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
}

/// Interfaces up beside the switch interface, for costs that must not grow
/// with their number: veth pairs inside the switch namespace (`oN`, its
/// peer `pN`), each with a service of its own (`other-N` on
/// `10.200.(100+N).1:80`, the standard backends) that no test sends
/// traffic to. Taken down and deleted on drop, also when a test fails.
pub struct OtherInterfaces<'a> {
    bluegreen: &'a Bluegreen,
    switch: &'a Namespace,
    names: Vec<String>,
}

impl<'a> OtherInterfaces<'a> {
    /// `count` of them (at most 99), up. Their names sort before
    /// [`SWITCH_IFACE`]: finding its services passes them all.
    pub fn up(bluegreen: &'a Bluegreen, switch: &'a Namespace, count: u8) -> Self {
        assert!(
            count < 100,
            "{count} interfaces: their VIPs would leave the test range"
        );
        let mut others = OtherInterfaces {
            bluegreen,
            switch,
            names: Vec::new(),
        };
        for n in 1..=count {
            let (name, peer) = (format!("o{n}"), format!("p{n}"));
            veth(switch, &name, switch, &peer);
            others.names.push(name.clone());
            for device in [&name, &peer] {
                switch.ip(&["link", "set", device, "up"]);
            }
            let vip = format!("10.200.{}.1:80", 100 + u16::from(n));
            bluegreen.ok(&[
                "-q",
                "up",
                "--iface",
                &name,
                "--service",
                &format!("other-{n}"),
                "--vip",
                &vip,
                "--blue",
                &blue_backend().to_string(),
                "--green",
                &green_backend().to_string(),
                "--no-local",
            ]);
        }
        others
    }
}

impl Drop for OtherInterfaces<'_> {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = self
                .bluegreen
                .command(&["-q", "down", "--iface", name])
                .output();
            // Deleting one end deletes the pair.
            let _ = Command::new("ip")
                .args(["-n", self.switch.name(), "link", "delete", name])
                .output();
        }
    }
}
