//! `cargo xtask setup`: installs what building and testing need.
//!
//! Every step first probes silently and acts only when something is
//! missing, so a second run prints nothing. Each action is announced on
//! one line before it starts.

use anyhow::{Context, Result, bail};

use crate::cmd;

/// What a command is about to do, which decides what it must install:
/// each command installs only what it uses, so the demo on a fresh
/// machine does not wait for the test and benchmark tools.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Build the bluegreen binary (and the test bed that drives it).
    Build,
    /// Build, then run the demo in network namespaces.
    Demo,
    /// Format and clippy checks of every crate.
    Lint,
    /// Build the .deb.
    Package,
    /// Build, package, then run the whole test suite.
    Test,
    /// Build in release mode and run the benchmarks.
    Bench,
    /// `cargo xtask setup`: everything any command needs.
    Everything,
}

/// LLVM 22 for bpf-linker, and protoc with the well-known types it
/// imports (libprotobuf-dev: apt installs it only as a recommendation,
/// which setup skips), which the etcd-client crate's build script needs.
const BUILD_PACKAGES: &[&str] = &["llvm-22-dev", "protobuf-compiler", "libprotobuf-dev"];

/// The demo's namespaces, veth pairs and checksum-offload switch.
const NETWORK_PACKAGES: &[&str] = &["iproute2", "ethtool"];

/// dpkg-dev for cargo-deb (it runs dpkg-shlibdeps for `$auto`
/// dependencies, and strip).
const PACKAGE_PACKAGES: &[&str] = &["dpkg-dev"];

/// bpftool reads attachments in the end-to-end tests, prometheus brings
/// the `promtool` that checks the shipped alert rules (and a server the
/// tests scrape through), etcd (server and etcdctl) runs the fleet's
/// tests, openssl makes their TLS certificates, strace counts the pins a
/// command opens.
const TEST_PACKAGES: &[&str] = &[
    "bpftool",
    "prometheus",
    "etcd-server",
    "etcd-client",
    "openssl",
    "strace",
];

/// The benchmarks' baselines (nftables DNAT), load generator (wrk),
/// attachment checks (bpftool) and fleet part (etcd, and openssl for its
/// TLS certificates).
const BENCH_PACKAGES: &[&str] = &[
    "bpftool",
    "nftables",
    "wrk",
    "etcd-server",
    "etcd-client",
    "openssl",
];

impl Purpose {
    fn debian_packages(self) -> Vec<&'static str> {
        let groups: &[&[&str]] = match self {
            Self::Build => &[BUILD_PACKAGES],
            Self::Demo => &[BUILD_PACKAGES, NETWORK_PACKAGES],
            Self::Lint => &[BUILD_PACKAGES],
            Self::Package => &[BUILD_PACKAGES, PACKAGE_PACKAGES],
            Self::Test => &[
                BUILD_PACKAGES,
                NETWORK_PACKAGES,
                PACKAGE_PACKAGES,
                TEST_PACKAGES,
            ],
            Self::Bench => &[BUILD_PACKAGES, NETWORK_PACKAGES, BENCH_PACKAGES],
            Self::Everything => &[
                BUILD_PACKAGES,
                NETWORK_PACKAGES,
                PACKAGE_PACKAGES,
                TEST_PACKAGES,
                BENCH_PACKAGES,
            ],
        };
        let mut packages: Vec<&str> = groups
            .iter()
            .flat_map(|group| group.iter().copied())
            .collect();
        packages.sort_unstable();
        packages.dedup();
        packages
    }

    fn needs_cargo_deb(self) -> bool {
        matches!(self, Self::Package | Self::Test | Self::Everything)
    }

    fn needs_lint_components(self) -> bool {
        matches!(self, Self::Lint | Self::Everything)
    }

    fn needs_bpffs(self) -> bool {
        !matches!(self, Self::Build | Self::Lint | Self::Package)
    }
}

/// bpf-linker must link against the same LLVM major as `llvm-22-dev`.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

const BPFFS: &str = "/sys/fs/bpf";

/// Installs what `purpose` needs and is missing; silent when nothing is.
pub fn setup(purpose: Purpose) -> Result<()> {
    ensure_root()?;
    ensure_debian_packages(&purpose.debian_packages())?;
    // Nightly builds the eBPF crate with `-Z build-std=core`, which needs
    // rust-src; stable lints and formats the workspace, nightly lints the
    // eBPF crate.
    if purpose.needs_lint_components() {
        ensure_toolchain("stable", &["clippy", "rustfmt"])?;
        ensure_toolchain("nightly", &["rust-src", "clippy"])?;
    } else {
        ensure_toolchain("nightly", &["rust-src"])?;
    }
    ensure_bpf_linker()?;
    if purpose.needs_cargo_deb() {
        ensure_cargo_deb()?;
    }
    if purpose.needs_bpffs() {
        ensure_bpffs()?;
    }
    Ok(())
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

fn ensure_debian_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
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
            // Its own code is glue around LLVM (the system library, built
            // optimised): unoptimised and without debug info it links the
            // programs as well, and builds in half the time, which a fresh
            // machine's first command waits for.
            .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
            .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "0")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_installs_only_what_building_and_its_namespaces_need() {
        assert_eq!(
            Purpose::Demo.debian_packages(),
            [
                "ethtool",
                "iproute2",
                "libprotobuf-dev",
                "llvm-22-dev",
                "protobuf-compiler"
            ]
        );
        assert!(!Purpose::Demo.needs_cargo_deb());
        assert!(!Purpose::Demo.needs_lint_components());
    }

    #[test]
    fn setup_installs_what_every_command_needs() {
        let everything = Purpose::Everything.debian_packages();
        for purpose in [
            Purpose::Build,
            Purpose::Demo,
            Purpose::Lint,
            Purpose::Package,
            Purpose::Test,
            Purpose::Bench,
        ] {
            for package in purpose.debian_packages() {
                assert!(everything.contains(&package), "{package}");
            }
            assert!(!purpose.needs_cargo_deb() || Purpose::Everything.needs_cargo_deb());
        }
        for tool in [
            "prometheus",
            "etcd-server",
            "openssl",
            "strace",
            "wrk",
            "nftables",
        ] {
            assert!(everything.contains(&tool), "{tool}");
            assert!(!Purpose::Demo.debian_packages().contains(&tool), "{tool}");
        }
    }
}
