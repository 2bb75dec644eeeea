//! The commands that drive cargo on the workspace.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::cmd;
use crate::setup::{Purpose, setup};

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
    setup(Purpose::Build)?;
    build_debug()
}

fn build_debug() -> Result<()> {
    cmd::run(&mut cargo(&["build", "-p", "bluegreen"]))
}

pub fn test(args: &[String]) -> Result<()> {
    setup(Purpose::Test)?;
    cmd::run(&mut cargo(&["build", "-p", "bluegreen", "--bins"]))?;
    // The packaging tests inspect a real release .deb; building it here
    // once keeps a release build out of the test binaries.
    let deb = build_package()?;
    // The eBPF crate only builds for the BPF target; bluegreen's build
    // script builds and embeds it anyway.
    cmd::run(
        cargo(&["test", "--workspace", "--exclude", "bluegreen-ebpf"])
            .args(args)
            .env("BLUEGREEN_BIN", bluegreen_bin("debug"))
            .env("BLUEGREEN_DEB", deb),
    )
}

pub fn package() -> Result<()> {
    setup(Purpose::Package)?;
    let deb = build_package()?;
    println!("{}", deb.display());
    Ok(())
}

/// Builds the release binary, the man page and completions it generates,
/// then the .deb from them; returns the .deb's path.
fn build_package() -> Result<PathBuf> {
    cmd::run(&mut cargo(&["build", "--release", "-p", "bluegreen"]))?;
    // bluegreen/Cargo.toml's `[package.metadata.deb]` names these files;
    // cargo-deb resolves its `target/release` prefix to `target_dir()`.
    let assets = target_dir().join("release").join("package-assets");
    write_generated_assets(&bluegreen_bin("release"), &assets)?;
    // `--no-build`: the binary was just built, and cargo-deb would
    // otherwise build the whole workspace because the generated assets
    // are not a crate's output.
    let stdout =
        cmd::stdout(cargo(&["deb", "-p", "bluegreen", "--no-build"]).stderr(Stdio::inherit()))?;
    // cargo-deb prints the path of the package it wrote, last.
    let deb = stdout
        .lines()
        .last()
        .map(PathBuf::from)
        .filter(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .with_context(|| format!("cargo deb printed no .deb path: {stdout:?}"))?;
    Ok(root().join(deb))
}

fn write_generated_assets(binary: &Path, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let write = |name: &str, args: &[&str]| -> Result<()> {
        let path = dir.join(name);
        let text = cmd::stdout(cmd::new(binary).args(args))?;
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    write("bluegreen.1", &["man"])?;
    write("bluegreen.bash", &["completions", "bash"])?;
    write("_bluegreen", &["completions", "zsh"])?;
    write("bluegreen.fish", &["completions", "fish"])?;
    // Compressed here because cargo-deb compresses man pages only when they
    // do not come from the target directory. `-n` keeps the name and time
    // out, so the same page gives the same bytes.
    cmd::run(
        cmd::new("gzip")
            .args(["-9", "-n", "-f"])
            .arg(dir.join("bluegreen.1")),
    )
}

/// Runs the demo and says where its time went, so a slow first run on a
/// fresh machine shows whether installing, building or the demo was slow.
pub fn demo(args: &[String]) -> Result<()> {
    let started = Instant::now();
    // The crates download while apt installs: on a fresh machine both wait
    // on the network, not on the two cores the build needs.
    let fetch = cargo(&["fetch", "--quiet"])
        .stdin(Stdio::null())
        .spawn()
        .context("could not start `cargo fetch`")?;
    let installed = setup(Purpose::Demo);
    let fetched = cmd::finish(fetch, "cargo fetch");
    installed?;
    fetched?;
    let installed = Instant::now();
    build_with_bluegreen(&[], "demo")?;
    let built = Instant::now();
    let result = cmd::run(
        cargo(&["run", "-p", "bluegreen-testbed", "--bin", "demo", "--"])
            .args(args)
            .env("BLUEGREEN_BIN", bluegreen_bin("debug")),
    );
    let ran = Instant::now();
    eprintln!(
        "xtask: demo took {:.0?} in all: install {:.0?}, build {:.0?}, run {:.0?}",
        ran - started,
        installed - started,
        built - installed,
        ran - built
    );
    result
}

/// Builds `bluegreen` and the test bed's binary `testbed_bin` with one
/// cargo, so that the test bed's own dependencies build beside
/// bluegreen's; `profile` is empty or `--release`.
fn build_with_bluegreen(profile: &[&str], testbed_bin: &str) -> Result<()> {
    let mut args = vec!["build"];
    args.extend_from_slice(profile);
    args.extend([
        "-p",
        "bluegreen",
        "-p",
        "bluegreen-testbed",
        "--bin",
        "bluegreen",
        "--bin",
        testbed_bin,
    ]);
    cmd::run(&mut cargo(&args))
}

pub fn bench(args: &[String]) -> Result<()> {
    setup(Purpose::Bench)?;
    // The lifecycle part starts `backend` as green's process, from next
    // to the bench binary; `cargo run` builds only the bench.
    build_with_bluegreen(&["--release"], "backend")?;
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
    setup(Purpose::Lint)?;
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
