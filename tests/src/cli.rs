//! Drives the real `bluegreen` binary inside a topology's switch namespace,
//! with pin and state directories of its own so runs never collide.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
};

use crate::netns::{Namespace, SWITCH_IFACE};

/// The binary under test: `BLUEGREEN_BIN` (set by `cargo xtask test`), or
/// the one cargo built next to the running executable.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("BLUEGREEN_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let candidate = dir.join("bluegreen");
    assert!(
        candidate.exists(),
        "{} not found: build it first (`cargo xtask test` does) or set BLUEGREEN_BIN",
        candidate.display()
    );
    candidate
}

/// One invocation's result.
#[derive(Debug)]
pub struct CliRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for CliRun {
    fn from(output: Output) -> Self {
        CliRun {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// A bluegreen instance's directories, torn down (`down`, then removal of
/// whatever is left) on drop.
/// Where pins of layout `version` live below a pin directory.
pub fn layout_dir(version: u32) -> String {
    format!("v{version}")
}

pub struct Bluegreen {
    pub namespace_path: PathBuf,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
}

impl Bluegreen {
    /// The switch interface's pins, in this version's layout.
    pub fn interface_pins(&self) -> PathBuf {
        self.pin_dir
            .join(layout_dir(bluegreen_common::LAYOUT_VERSION))
            .join(SWITCH_IFACE)
    }

    pub fn new(switch: &Namespace) -> Bluegreen {
        let tag = switch.name();
        let instance = Bluegreen {
            namespace_path: switch.path(),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/{tag}")),
            state_dir: std::env::temp_dir().join(format!("{tag}-state")),
        };
        let _ = fs::remove_dir_all(&instance.state_dir);
        instance
    }

    /// A command running the binary in the switch namespace with this
    /// instance's directories.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.namespace_path.display()))
            .arg(binary())
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(args)
            .env_remove("RUST_LOG");
        command
    }

    pub fn run(&self, args: &[&str]) -> CliRun {
        self.command(args)
            .output()
            .unwrap_or_else(|error| panic!("cannot run bluegreen {args:?}: {error}"))
            .into()
    }

    /// Runs and requires exit code 0; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert_eq!(
            run.code,
            0,
            "bluegreen {} failed:\nstdout: {}\nstderr: {}",
            args.join(" "),
            run.stdout,
            run.stderr
        );
        run.stdout
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start bluegreen {args:?}: {error}"))
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).expect("status --json is JSON")
    }

    /// The first service's active color, per `status --json`.
    pub fn active(&self) -> String {
        self.status()["interfaces"][0]["services"][0]["active"]
            .as_str()
            .expect("active color in status")
            .to_owned()
    }

    /// Every path under the pin directory, sorted: compared before and after
    /// a failing command to prove it changed nothing.
    pub fn pins(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        collect(&self.pin_dir, &mut found);
        found.sort();
        found
    }

    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join(format!("{SWITCH_IFACE}.json"))
    }
}

fn collect(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        found.push(path.clone());
        if path.is_dir() {
            collect(&path, found);
        }
    }
}

impl Drop for Bluegreen {
    fn drop(&mut self) {
        let _ = self
            .command(&["-q", "down", "--iface", SWITCH_IFACE])
            .output();
        // Whatever `down` could not remove (a test that broke the layout on
        // purpose): files first, then directories, deepest first.
        let mut leftovers = self.pins();
        leftovers.sort_by_key(|path| std::cmp::Reverse(path.components().count()));
        for path in leftovers {
            let _ = fs::remove_file(&path).or_else(|_| fs::remove_dir(&path));
        }
        let _ = fs::remove_dir(&self.pin_dir);
        let _ = fs::remove_dir_all(&self.state_dir);
    }
}
