//! Builds the eBPF programs with aya-build so that a plain `cargo build`
//! embeds a fresh object in the binary; see the README's architecture notes.

fn main() -> anyhow::Result<()> {
    // aya-build watches the eBPF crate; the shared types live elsewhere.
    println!("cargo:rerun-if-changed=../bluegreen-common/src");
    // aya-build relays each line the nested cargo writes to stderr as a
    // `cargo:warning`, so its ~150 "Compiling ..." lines would show on every
    // clean build. Quiet cargo drops only those progress lines: compiler
    // diagnostics reach aya-build through cargo's JSON output and cargo's
    // own errors are still printed, so a failing build shows why it failed.
    // SAFETY: nothing else runs in this process yet, so no thread can be
    // reading the environment.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "bluegreen-ebpf",
            root_dir: "../bluegreen-ebpf",
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
