//! Throwaway network-namespace topologies.
//!
//! Everything is created under a prefix unique to the process and the
//! topology (`bg<pid>-<n>`), uses only `10.200.0.0/16` and `fd00:bb::/64`,
//! and is removed on drop, also when a test panics.

use std::{
    fs::File,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

static NEXT_TOPOLOGY: AtomicU32 = AtomicU32::new(0);

/// Runs a command, panicking with the command line and its stderr on failure.
pub fn run(program: &str, args: &[&str]) -> Output {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {program} {args:?}: {error}"));
    assert!(
        output.status.success(),
        "{program} {} failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    output
}

/// One network namespace, deleted on drop.
pub struct Namespace {
    name: String,
}

impl Namespace {
    pub fn create(name: &str) -> Namespace {
        run("ip", &["netns", "add", name]);
        let namespace = Namespace {
            name: name.to_owned(),
        };
        namespace.ip(&["link", "set", "lo", "up"]);
        namespace
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// `ip -n NAME ...`
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs a program inside the namespace with `nsenter --net`, which,
    /// unlike `ip netns exec`, leaves /sys and so the host's bpffs visible.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        let net = format!("--net={}", self.path().display());
        let mut full = vec![net.as_str(), program];
        full.extend_from_slice(args);
        run("nsenter", &full)
    }

    /// A `Command` that runs inside the namespace; for callers that need
    /// the exit status or a background child.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.path().display()))
            .arg(program);
        command
    }

    pub fn sysctl(&self, setting: &str) {
        self.exec("sysctl", &["-qw", setting]);
    }

    /// Spawns a thread whose sockets live in this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = self.path();
        std::thread::spawn(move || {
            enter(&path);
            work()
        })
    }
}

/// Moves the calling thread into the namespace at `path`.
pub fn enter(path: &Path) {
    let file =
        File::open(path).unwrap_or_else(|error| panic!("cannot open {}: {error}", path.display()));
    // SAFETY: setns on a namespace descriptor we own; it affects only this thread.
    let status = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        status,
        0,
        "setns({}) failed: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Deleting the namespace also deletes the veth ends inside it.
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}

/// Connects two namespaces with a veth pair.
pub fn veth(left: &Namespace, left_name: &str, right: &Namespace, right_name: &str) {
    run(
        "ip",
        &[
            "link",
            "add",
            left_name,
            "netns",
            left.name(),
            "type",
            "veth",
            "peer",
            "name",
            right_name,
            "netns",
            right.name(),
        ],
    );
}

/// Addresses of the standard topology.
pub mod addr {
    pub const CLIENT_V4: &str = "10.200.1.2";
    pub const SWITCH_CLIENT_SIDE_V4: &str = "10.200.1.1";
    pub const BLUE_V4: &str = "10.200.2.2";
    pub const GREEN_V4: &str = "10.200.3.2";
    pub const VIP_V4: &str = "10.200.100.1";
    pub const BLUE_V6: &str = "fd00:bb::2:2";
    pub const GREEN_V6: &str = "fd00:bb::3:2";
    pub const VIP_V6: &str = "fd00:bb::100:1";
}

/// The interface bluegreen attaches to, inside the switch namespace.
pub const SWITCH_IFACE: &str = "s0";

/// client --veth-- switch --veth-- blue
///                        \--veth-- green
///
/// The client routes the VIP ranges to the switch; the switch forwards to
/// the backends; bluegreen runs on the switch's client-facing veth.
/// Checksum offload is off wherever packets are sent, so receivers check
/// every checksum the dataplane rewrote.
pub struct Topology {
    pub prefix: String,
    pub client: Namespace,
    pub switch: Namespace,
    pub blue: Namespace,
    pub green: Namespace,
}

impl Topology {
    pub fn new() -> Topology {
        let prefix = format!(
            "bg{}-{}",
            std::process::id(),
            NEXT_TOPOLOGY.fetch_add(1, Ordering::Relaxed)
        );
        let topology = Topology {
            client: Namespace::create(&format!("{prefix}-client")),
            switch: Namespace::create(&format!("{prefix}-switch")),
            blue: Namespace::create(&format!("{prefix}-blue")),
            green: Namespace::create(&format!("{prefix}-green")),
            prefix,
        };
        topology.wire();
        topology
    }

    fn wire(&self) {
        self.wire_client_link();
        veth(&self.blue, "b0", &self.switch, "sb");
        veth(&self.green, "g0", &self.switch, "sg");
        let links = [
            (&self.switch, "sb", "10.200.2.1/24", "fd00:bb::2:1/112"),
            (&self.switch, "sg", "10.200.3.1/24", "fd00:bb::3:1/112"),
            (&self.blue, "b0", "10.200.2.2/24", "fd00:bb::2:2/112"),
            (&self.green, "g0", "10.200.3.2/24", "fd00:bb::3:2/112"),
        ];
        configure(&links);
        for (namespace, v4_gateway, v6_gateway) in [
            (&self.blue, "10.200.2.1", "fd00:bb::2:1"),
            (&self.green, "10.200.3.1", "fd00:bb::3:1"),
        ] {
            namespace.ip(&["route", "add", "default", "via", v4_gateway]);
            namespace.ip(&["-6", "route", "add", "default", "via", v6_gateway]);
        }
        self.switch.sysctl("net.ipv4.ip_forward=1");
        self.switch.sysctl("net.ipv6.conf.all.forwarding=1");
        self.resolve_neighbours();
    }
}

impl Topology {
    /// Resolves every neighbour before a test starts: a fresh namespace
    /// otherwise loses the first IPv6 packets to neighbour discovery and
    /// the first connection pays a one-second SYN retransmission.
    fn resolve_neighbours(&self) {
        resolve(&[
            (&self.client, "c0", ["10.200.1.1", "fd00:bb::1:1"]),
            (&self.blue, "b0", ["10.200.2.1", "fd00:bb::2:1"]),
            (&self.green, "g0", ["10.200.3.1", "fd00:bb::3:1"]),
            (&self.switch, SWITCH_IFACE, ["10.200.1.2", "fd00:bb::1:2"]),
            (&self.switch, "sb", ["10.200.2.2", "fd00:bb::2:2"]),
            (&self.switch, "sg", ["10.200.3.2", "fd00:bb::3:2"]),
        ]);
    }

    /// The client's veth pair (`c0` and the switch's [`SWITCH_IFACE`]), its
    /// addresses, and the client's routes through the switch.
    fn wire_client_link(&self) {
        use addr::*;
        veth(&self.client, "c0", &self.switch, SWITCH_IFACE);
        configure(&[
            (&self.client, "c0", "10.200.1.2/24", "fd00:bb::1:2/112"),
            (
                &self.switch,
                SWITCH_IFACE,
                "10.200.1.1/24",
                "fd00:bb::1:1/112",
            ),
        ]);
        // Everything in the test ranges (the VIPs, and the backends for
        // direct access) goes through the switch.
        self.client.ip(&[
            "route",
            "add",
            "10.200.0.0/16",
            "via",
            SWITCH_CLIENT_SIDE_V4,
        ]);
        self.client
            .ip(&["-6", "route", "add", "fd00:bb::/64", "via", "fd00:bb::1:1"]);
    }

    /// Deletes the switch's [`SWITCH_IFACE`] (and with it the client's end
    /// of the pair), as an operator or a driver reset would.
    pub fn delete_switch_iface(&self) {
        self.switch.ip(&["link", "delete", SWITCH_IFACE]);
    }

    /// Re-creates [`SWITCH_IFACE`] and the client's end under the same
    /// names and addresses, after [`Topology::delete_switch_iface`].
    pub fn recreate_switch_iface(&self) {
        self.wire_client_link();
        resolve(&[
            (&self.client, "c0", ["10.200.1.1", "fd00:bb::1:1"]),
            (&self.switch, SWITCH_IFACE, ["10.200.1.2", "fd00:bb::1:2"]),
        ]);
    }
}

/// Addresses each device and brings it up, with transmit checksum offload
/// off.
fn configure(links: &[(&Namespace, &str, &str, &str)]) {
    for &(namespace, device, v4, v6) in links {
        namespace.ip(&["addr", "add", v4, "dev", device]);
        namespace.ip(&["-6", "addr", "add", v6, "dev", device, "nodad"]);
        namespace.ip(&["link", "set", device, "up"]);
        namespace.exec("ethtool", &["-K", device, "tx", "off"]);
    }
}

/// Resolves each device's neighbours (within 5 s in all).
fn resolve(pairs: &[(&Namespace, &str, [&str; 2])]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    for &(namespace, device, neighbours) in pairs {
        for neighbour in neighbours {
            let target: IpAddr = neighbour.parse().expect("address literal");
            loop {
                namespace
                    .spawn(move || {
                        let bind: SocketAddr = if target.is_ipv4() {
                            "0.0.0.0:0".parse().expect("literal")
                        } else {
                            "[::]:0".parse().expect("literal")
                        };
                        // The discard port: nobody answers, but sending
                        // makes the kernel resolve the neighbour.
                        let socket = UdpSocket::bind(bind).expect("probe socket");
                        let _ = socket.send_to(b"", (target, 9));
                    })
                    .join()
                    .expect("probe thread");
                std::thread::sleep(Duration::from_millis(10));
                let state = namespace.ip(&["neigh", "show", "dev", device, neighbour]);
                let state = String::from_utf8_lossy(&state.stdout);
                if state.contains("REACHABLE") || state.contains("STALE") || state.contains("DELAY")
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} cannot resolve {neighbour} on {device}: {state}",
                    namespace.name()
                );
            }
        }
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}
