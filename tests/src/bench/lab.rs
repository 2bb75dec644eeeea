//! The end-to-end bench's world: one topology with blue and green HTTP
//! backends ([`FastBackend`]), and the dataplanes that can sit in the switch namespace, one at
//! a time: none (a plain router), bluegreen in native or generic XDP mode,
//! or nftables DNAT through a verdict map (the peer without eBPF).

use std::{
    fs::File,
    io::{Read, Write},
    net::SocketAddr,
    os::{fd::AsRawFd, unix::process::CommandExt},
    process::{Child, ChildStdout, Command, ExitStatus, Stdio},
    sync::mpsc::{self, RecvTimeoutError},
    time::Duration,
};

use serde::Serialize;

use super::{Interrupted, backend::FastBackend, check, raw::RawProgram};
use crate::{
    cli::{self, Bluegreen},
    http,
    netns::{Namespace, SWITCH_IFACE, Topology, addr},
};

pub const VIP_PORT: u16 = 80;
pub const BACKEND_PORT: u16 = 8080;
const NFT_TABLE: &str = "bgbench";

pub fn vip() -> SocketAddr {
    SocketAddr::new(addr::VIP_V4.parse().expect("literal"), VIP_PORT)
}

pub fn backend(color: &str) -> SocketAddr {
    let address = if color == "blue" {
        addr::BLUE_V4
    } else {
        addr::GREEN_V4
    };
    SocketAddr::new(address.parse().expect("literal"), BACKEND_PORT)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dataplane {
    /// No NAT at all: the client asks blue's own address, the switch only
    /// routes. The ceiling.
    Router,
    /// The plain router with a no-op program attached in native mode: a
    /// control that shows what native XDP on veth costs by itself.
    NoopNative,
    BluegreenNative,
    BluegreenGeneric,
    Nftables,
}

impl Dataplane {
    pub const ALL: [Dataplane; 5] = [
        Dataplane::Router,
        Dataplane::NoopNative,
        Dataplane::BluegreenNative,
        Dataplane::BluegreenGeneric,
        Dataplane::Nftables,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Dataplane::Router => "direct (plain router)",
            Dataplane::NoopNative => "direct + no-op native XDP (control)",
            Dataplane::BluegreenNative => "bluegreen, native XDP",
            Dataplane::BluegreenGeneric => "bluegreen, generic XDP",
            Dataplane::Nftables => "nftables DNAT (map)",
        }
    }

    /// Where clients connect.
    pub fn target(self) -> SocketAddr {
        match self {
            Dataplane::Router | Dataplane::NoopNative => backend("blue"),
            _ => vip(),
        }
    }
}

/// Drop order is field order: bluegreen goes down before the backends
/// stop, and the namespaces go last.
pub struct Lab {
    pub bluegreen: Bluegreen,
    pub blue: FastBackend,
    pub green: FastBackend,
    pub topology: Topology,
}

impl Lab {
    pub fn new() -> Lab {
        let topology = Topology::new();
        let blue = FastBackend::start(&topology.blue, BACKEND_PORT, "blue");
        let green = FastBackend::start(&topology.green, BACKEND_PORT, "green");
        Lab {
            bluegreen: Bluegreen::new(&topology.switch),
            blue,
            green,
            topology,
        }
    }

    pub fn client(&self) -> &Namespace {
        &self.topology.client
    }

    /// Puts `dataplane` in place (blue active) until the guard is dropped.
    pub fn activate(&self, dataplane: Dataplane) -> Active<'_> {
        self.assert_bare();
        match dataplane {
            Dataplane::Router => {}
            Dataplane::NoopNative => self.noop_xdp(),
            Dataplane::BluegreenNative => self.bluegreen_up("native"),
            Dataplane::BluegreenGeneric => self.bluegreen_up("skb"),
            Dataplane::Nftables => self.nft(&nft_ruleset("blue")),
        }
        let active = Active {
            lab: self,
            dataplane,
        };
        active.expect_served_by("blue");
        active
    }

    fn bluegreen_up(&self, mode: &str) {
        // The standard service: the bench's VIP and backends are the
        // tests' own.
        let mut args = vec!["-q".to_owned()];
        args.extend(crate::fixture::up_args());
        args.extend(["--xdp-mode".to_owned(), mode.to_owned()]);
        self.bluegreen.ok(&crate::fixture::strs(&args));
        let status = self.bluegreen.status();
        assert_eq!(
            status["interfaces"][0]["xdp_mode"], mode,
            "bluegreen came up in another XDP mode: {status}"
        );
    }

    /// Attaches a no-op XDP program in native mode.
    fn noop_xdp(&self) {
        let switch = &self.topology.switch;
        // The link holds the program; the pin only hands it to ip.
        let pin = std::path::PathBuf::from(format!("/sys/fs/bpf/{}-noop", switch.name()));
        RawProgram::noop_xdp()
            .pin(&pin)
            .unwrap_or_else(|error| panic!("cannot pin the no-op program: {error}"));
        let pinned = pin.to_str().expect("utf-8 path");
        let attached = switch
            .command("ip")
            .args([
                "link",
                "set",
                "dev",
                SWITCH_IFACE,
                "xdpdrv",
                "pinned",
                pinned,
            ])
            .output();
        let _ = std::fs::remove_file(&pin);
        let attached = attached.expect("cannot run ip");
        assert!(
            attached.status.success(),
            "cannot attach the no-op program: {}",
            String::from_utf8_lossy(&attached.stderr)
        );
    }

    /// Removes what [`Self::activate`] put in place. Never panics (it runs
    /// in a destructor, maybe while unwinding); the next `activate` checks
    /// that it worked.
    fn deactivate(&self, dataplane: Dataplane) {
        let switch = &self.topology.switch;
        let _ = match dataplane {
            Dataplane::Router => return,
            Dataplane::NoopNative => switch
                .command("ip")
                .args(["link", "set", "dev", SWITCH_IFACE, "xdpdrv", "off"])
                .output(),
            Dataplane::BluegreenNative | Dataplane::BluegreenGeneric => self
                .bluegreen
                .command(&["-q", "down", "--iface", SWITCH_IFACE])
                .output(),
            Dataplane::Nftables => switch
                .command("nft")
                .args(["delete", "table", "ip", NFT_TABLE])
                .output(),
        };
    }

    /// Applies an nft script in the switch namespace as one transaction.
    pub fn nft(&self, script: &str) {
        let status = nft_command(&self.topology.switch)
            .stdout(Stdio::null())
            .status_with_input(script);
        assert!(status.success(), "nft -f - failed ({status}):\n{script}");
    }

    /// Neither a program on the switch's interface nor our nft table:
    /// each peer is measured alone.
    fn assert_bare(&self) {
        let switch = &self.topology.switch;
        let programs = switch.exec("bpftool", &["net", "show", "dev", SWITCH_IFACE]);
        let programs = String::from_utf8_lossy(&programs.stdout);
        assert!(
            !programs.contains("bluegreen") && !programs.contains("bench_noop"),
            "a program is still attached: {programs}"
        );
        let tables = switch.exec("nft", &["list", "tables"]);
        assert!(
            !String::from_utf8_lossy(&tables.stdout).contains(NFT_TABLE),
            "the nft table is still there"
        );
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

/// A dataplane in place; removed when dropped (also on panic).
pub struct Active<'a> {
    lab: &'a Lab,
    pub dataplane: Dataplane,
}

impl Active<'_> {
    /// One request on a new connection, answered by `color`: the dataplane
    /// works before anything is measured through it.
    pub fn expect_served_by(&self, color: &str) {
        let target = self.dataplane.target();
        let answer = self
            .lab
            .client()
            .spawn(move || http::get(target, Duration::from_secs(2)))
            .join()
            .expect("client thread");
        match answer {
            Ok(body) if body == color => {}
            other => panic!(
                "{} answered {other:?}, expected {color}",
                self.dataplane.label()
            ),
        }
    }

    /// The command that makes `color` take new connections. bluegreen's
    /// names the service: other interfaces may be up with theirs.
    pub fn switch_command(&self, color: &str) -> SwitchCommand {
        match self.dataplane {
            Dataplane::BluegreenNative | Dataplane::BluegreenGeneric => {
                self.bluegreen_command(&["switch", color, "--service", "web"])
            }
            Dataplane::Nftables => SwitchCommand {
                command: nft_command(&self.lab.topology.switch),
                input: Some(nft_switch(color)),
            },
            Dataplane::Router | Dataplane::NoopNative => {
                panic!("a plain router has nothing to switch")
            }
        }
    }

    /// `bluegreen -q ARGS` against this lab's instance (see
    /// [`SwitchCommand::bluegreen`]).
    pub fn bluegreen_command(&self, args: &[&str]) -> SwitchCommand {
        SwitchCommand::bluegreen(&self.lab.bluegreen, &self.lab.topology.switch, args)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.lab.deactivate(self.dataplane);
    }
}

/// A switch, ready to spawn.
pub struct SwitchCommand {
    command: Command,
    input: Option<String>,
}

impl SwitchCommand {
    /// `bluegreen -q ARGS` against `bluegreen`, spawned directly rather
    /// than through nsenter: a switch is timed from the spawn, and nsenter
    /// would add an exec to it.
    pub fn bluegreen(bluegreen: &Bluegreen, switch: &Namespace, args: &[&str]) -> SwitchCommand {
        let mut command = Command::new(cli::binary());
        command
            .arg("--pin-dir")
            .arg(&bluegreen.pin_dir)
            .arg("--state-dir")
            .arg(&bluegreen.state_dir)
            .arg("-q")
            .args(args)
            .env_remove("RUST_LOG");
        // In the switch namespace all the same: before a switch the CLI
        // connects to the color that gains traffic, which only the
        // topology can reach (the host would send 10.200.0.0/16 out of its
        // default route).
        let namespace = File::open(switch.path())
            .unwrap_or_else(|error| panic!("cannot open the switch namespace: {error}"));
        // SAFETY: between fork and exec the closure makes one syscall,
        // setns(2), on a descriptor it owns.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        SwitchCommand {
            command,
            input: None,
        }
    }

    /// Runs it to completion; panics if it fails, unless because of Ctrl-C
    /// (which reaches the child too).
    pub fn run(mut self) -> Result<(), Interrupted> {
        self.command.stdout(Stdio::null());
        self.complete().map(drop)
    }

    /// [`Self::run`], returning what the command printed. Read once it
    /// has exited: its few lines fit in the pipe.
    pub fn output(mut self) -> Result<String, Interrupted> {
        self.command.stdout(Stdio::piped());
        let mut stdout = self.complete()?.expect("stdout is piped");
        let mut printed = String::new();
        stdout
            .read_to_string(&mut printed)
            .expect("read the switch command's output");
        Ok(printed)
    }

    /// Runs it to completion as [`Self::run`] says; its stdout, if piped.
    fn complete(mut self) -> Result<Option<ChildStdout>, Interrupted> {
        let (status, stdout) = match &self.input {
            Some(input) => (self.command.status_with_input(input), None),
            None => {
                let mut child = self
                    .command
                    .spawn()
                    .expect("cannot start the switch command");
                let status = wait_bounded(&mut child, Duration::from_secs(10));
                (status, child.stdout.take())
            }
        };
        check()?;
        assert!(status.success(), "switch command failed: {status}");
        Ok(stdout)
    }
}

fn nft_command(switch: &Namespace) -> Command {
    let mut command = switch.command("nft");
    command.args(["-f", "-"]);
    command
}

/// A table whose DNAT rule looks the destination up in a map: a switch is
/// then one element replaced, conntrack keeps established connections on
/// the backend they started on (as bluegreen's flow table does).
fn nft_ruleset(color: &str) -> String {
    let (vip, backend) = (vip(), backend(color));
    format!(
        "table ip {NFT_TABLE} {{
  map svc {{
    type ipv4_addr . inet_service : ipv4_addr . inet_service
    elements = {{ {} . {} : {} . {} }}
  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    dnat ip addr . port to ip daddr . tcp dport map @svc
  }}
}}
",
        vip.ip(),
        vip.port(),
        backend.ip(),
        backend.port()
    )
}

/// One transaction (nft applies a whole file atomically) that replaces the
/// VIP's element.
fn nft_switch(color: &str) -> String {
    let (vip, backend) = (vip(), backend(color));
    format!(
        "delete element ip {NFT_TABLE} svc {{ {vip_ip} . {vip_port} }}
add element ip {NFT_TABLE} svc {{ {vip_ip} . {vip_port} : {} . {} }}
",
        backend.ip(),
        backend.port(),
        vip_ip = vip.ip(),
        vip_port = vip.port()
    )
}

trait WithInput {
    fn status_with_input(&mut self, input: &str) -> ExitStatus;
}

impl WithInput for Command {
    fn status_with_input(&mut self, input: &str) -> ExitStatus {
        let mut child = self
            .stdin(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {self:?}: {error}"));
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(input.as_bytes())
            .expect("write to the child's stdin");
        wait_bounded(&mut child, Duration::from_secs(10))
    }
}

/// Waits for a child at most `limit`, killing it after that: every step of
/// the benchmark is bounded in time. A watchdog thread does the killing, so
/// the wait itself blocks instead of polling (which would steal CPU from the
/// very process being timed).
pub fn wait_bounded(child: &mut Child, limit: Duration) -> ExitStatus {
    let pid = child.id() as libc::pid_t;
    let (done, finished) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let late = finished.recv_timeout(limit) == Err(RecvTimeoutError::Timeout);
        if late {
            // SAFETY: plain kill(2). Only if the limit expired in the few
            // microseconds between reaping and `done` could the pid name
            // another process, and only if it was reused in that instant.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        late
    });
    let status = child.wait().expect("wait for a child");
    let _ = done.send(());
    let killed = watchdog.join().expect("watchdog thread");
    assert!(
        !killed,
        "a child process ran longer than {limit:?} and was killed"
    );
    status
}
