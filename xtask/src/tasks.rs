//! The commands that drive cargo on the workspace.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, bail};

use crate::{cmd, setup::setup};

/// The workspace root: this crate lives in `<root>/xtask`. `parent()`
/// rather than a `..` component keeps the paths we print and export tidy.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace root")
}

/// Where cargo puts build output, honouring CARGO_TARGET_DIR like cargo.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root().join(dir),
        None => root().join("target"),
    }
}

/// The bluegreen binary of a profile ("debug" or "release"); absolute
/// (the root is), so tests may change directory.
fn bluegreen_bin(profile: &str) -> PathBuf {
    target_dir().join(profile).join("bluegreen")
}

/// `cargo <args>` run from the workspace root.
fn cargo(args: &[&str]) -> Command {
    let mut cargo = cmd::new("cargo");
    cargo.current_dir(root()).args(args);
    cargo
}

pub fn build() -> Result<()> {
    setup()?;
    cmd::run(&mut cargo(&["build", "-p", "bluegreen"]))
}

pub fn test(args: &[String]) -> Result<()> {
    setup()?;
    cmd::run(&mut cargo(&["build", "-p", "bluegreen", "--bins"]))?;
    // The eBPF crate only builds for the BPF target; bluegreen's build
    // script builds and embeds it anyway.
    cmd::run(
        cargo(&["test", "--workspace", "--exclude", "bluegreen-ebpf"])
            .args(args)
            .env("BLUEGREEN_BIN", bluegreen_bin("debug")),
    )
}

pub fn demo(args: &[String]) -> Result<()> {
    build()?;
    cmd::run(
        cargo(&["run", "-p", "bluegreen-testbed", "--bin", "demo", "--"])
            .args(args)
            .env("BLUEGREEN_BIN", bluegreen_bin("debug")),
    )
}

pub fn bench(args: &[String]) -> Result<()> {
    setup()?;
    cmd::run(&mut cargo(&["build", "--release", "-p", "bluegreen"]))?;
    cmd::run(
        cargo(&[
            "run",
            "--release",
            "-p",
            "bluegreen-testbed",
            "--bin",
            "bench",
            "--",
        ])
        .args(args)
        .env("BLUEGREEN_BIN", bluegreen_bin("release")),
    )
}

/// Runs every check even after one fails, so a single run reports all
/// findings; fails if any did.
pub fn lint() -> Result<()> {
    setup()?;
    let checks = [
        cargo(&["fmt", "--all", "--", "--check"]),
        cargo(&[
            "clippy",
            "--workspace",
            "--exclude",
            "bluegreen-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
        ebpf_clippy(),
    ];
    let mut failed = Vec::new();
    for mut check in checks {
        if let Err(error) = cmd::run(&mut check) {
            eprintln!("xtask: lint: {error:#}");
            failed.push(cmd::display(&check));
        }
    }
    if !failed.is_empty() {
        bail!("lint failed: {}", failed.join("; "));
    }
    Ok(())
}

/// Clippy for the eBPF crate, which only builds for the BPF target with
/// nightly's build-std.
fn ebpf_clippy() -> Command {
    let mut clippy = cmd::new("cargo");
    clippy
        .current_dir(root().join("bluegreen-ebpf"))
        .args([
            "+nightly",
            "clippy",
            "--release",
            "--target",
            "bpfel-unknown-none",
        ])
        .args(["-Z", "build-std=core", "--", "-D", "warnings"])
        // Host flags from an outer cargo must not leak into the BPF build;
        // CARGO would point nested build scripts at the stable cargo.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO");
    clippy
}
