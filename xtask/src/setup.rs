//! `cargo xtask setup`: installs what building and testing need.
//!
//! Every step first probes silently and acts only when something is
//! missing, so a second run prints nothing. Each action is announced on
//! one line before it starts.

use anyhow::{Context, Result, bail};

use crate::cmd;

/// Debian packages: LLVM 22 for bpf-linker, the tools the end-to-end
/// tests, demo and benchmarks drive, dpkg-dev for cargo-deb (it runs
/// dpkg-shlibdeps for `$auto` dependencies, and strip), prometheus for
/// the `promtool` that checks the shipped alert rules, etcd (server and
/// etcdctl) for the fleet's tests and benchmark, and protoc with the
/// well-known types it imports (libprotobuf-dev: apt installs it only as a
/// recommendation, which setup skips), which the etcd-client crate's build
/// script needs.
const DEBIAN_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "iproute2",
    "ethtool",
    "bpftool",
    "nftables",
    "wrk",
    "curl",
    "python3",
    "dpkg-dev",
    "prometheus",
    "etcd-server",
    "etcd-client",
    "protobuf-compiler",
    "libprotobuf-dev",
];

/// bpf-linker must link against the same LLVM major as `llvm-22-dev`.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

const BPFFS: &str = "/sys/fs/bpf";

pub fn setup() -> Result<()> {
    ensure_root()?;
    ensure_debian_packages()?;
    // Stable lints and formats the workspace; nightly builds the eBPF
    // crate with `-Z build-std=core`, which needs rust-src.
    ensure_toolchain("stable", &["clippy", "rustfmt"])?;
    ensure_toolchain("nightly", &["rust-src", "clippy"])?;
    ensure_bpf_linker()?;
    ensure_cargo_deb()?;
    ensure_bpffs()
}

fn announce(step: &str) {
    eprintln!("setup: {step}");
}

fn ensure_root() -> Result<()> {
    let uid = cmd::stdout(cmd::new("id").arg("-u"))?;
    if uid.trim() != "0" {
        bail!(
            "setup must run as root (it installs packages and mounts bpffs); uid is {}",
            uid.trim()
        );
    }
    Ok(())
}

fn is_installed(package: &str) -> bool {
    cmd::probe(cmd::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.contains("install ok installed"))
}

fn ensure_debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|package| !is_installed(package))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    announce("updating apt package lists");
    cmd::run(cmd::new("apt-get").args(["update", "-qq"]))?;
    // Checked before installing so the error names the packages at fault
    // rather than leaving the user to dig through apt's output.
    let unknown: Vec<&str> = missing
        .iter()
        .copied()
        .filter(|package| !has_candidate(package))
        .collect();
    if !unknown.is_empty() {
        bail!(
            "apt has no installation candidate for {} (check the apt sources in /etc/apt)",
            unknown.join(", ")
        );
    }
    announce(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    cmd::run(
        cmd::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
    )
}

/// Whether apt knows a version of `package` it could install;
/// `apt-cache policy` prints nothing or "Candidate: (none)" otherwise.
fn has_candidate(package: &str) -> bool {
    cmd::probe(cmd::new("apt-cache").args(["policy", package])).is_some_and(|policy| {
        policy.lines().any(|line| {
            line.trim()
                .strip_prefix("Candidate:")
                .is_some_and(|version| version.trim() != "(none)")
        })
    })
}

fn has_toolchain(toolchain: &str) -> Result<bool> {
    let list = cmd::stdout(cmd::new("rustup").args(["toolchain", "list"]))?;
    // Lines look like "nightly-x86_64-unknown-linux-gnu (default)".
    let prefix = format!("{toolchain}-");
    Ok(list.lines().any(|line| line.starts_with(&prefix)))
}

fn ensure_toolchain(toolchain: &str, components: &[&str]) -> Result<()> {
    if !has_toolchain(toolchain)? {
        announce(&format!(
            "installing the {toolchain} Rust toolchain with {}",
            components.join(", ")
        ));
        let mut install = cmd::new("rustup");
        install.args(["toolchain", "install", toolchain, "--profile", "minimal"]);
        for component in components {
            install.args(["--component", component]);
        }
        return cmd::run(&mut install);
    }
    let installed = cmd::stdout(cmd::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        toolchain,
        "--installed",
    ]))?;
    // Lines are "rust-src" or "clippy-x86_64-unknown-linux-gnu".
    let missing: Vec<&str> = components
        .iter()
        .copied()
        .filter(|component| {
            !installed
                .lines()
                .any(|line| line == *component || line.starts_with(&format!("{component}-")))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    announce(&format!(
        "adding {} to the {toolchain} Rust toolchain",
        missing.join(", ")
    ));
    cmd::run(
        cmd::new("rustup")
            .args(["component", "add", "--toolchain", toolchain])
            .args(&missing),
    )
}

fn ensure_bpf_linker() -> Result<()> {
    // `--version` loads libLLVM, so this also catches a binary left broken
    // by an LLVM upgrade, not just a missing one.
    if cmd::succeeds(cmd::new("bpf-linker").arg("--version")) {
        return Ok(());
    }
    announce("installing bpf-linker with cargo install (takes about a minute)");
    // `--force` because a binary that exists but fails to run would
    // otherwise make cargo report "already installed" and do nothing.
    cmd::run(
        cmd::new("cargo")
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .args(["install", "bpf-linker", "--locked", "--force"])
            .args(["--no-default-features", "--features", "llvm-22"]),
    )
    .context("could not install bpf-linker")?;
    if !cmd::succeeds(cmd::new("bpf-linker").arg("--version")) {
        bail!("bpf-linker was installed but `bpf-linker --version` still fails");
    }
    Ok(())
}

/// cargo-deb builds the .deb for `cargo xtask package` (and `test`).
fn ensure_cargo_deb() -> Result<()> {
    if cmd::succeeds(cmd::new("cargo").args(["deb", "--version"])) {
        return Ok(());
    }
    announce("installing cargo-deb with cargo install (takes a few minutes)");
    cmd::run(cmd::new("cargo").args(["install", "cargo-deb", "--locked"]))
        .context("could not install cargo-deb")
}

fn ensure_bpffs() -> Result<()> {
    if cmd::succeeds(cmd::new("mountpoint").args(["-q", BPFFS])) {
        return Ok(());
    }
    announce(&format!("mounting bpffs at {BPFFS}"));
    cmd::run(cmd::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
}
