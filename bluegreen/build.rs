//! Builds the eBPF programs with aya-build so that a plain `cargo build`
//! embeds a fresh object in the binary; see the README's architecture notes.

fn main() -> anyhow::Result<()> {
    // aya-build watches the eBPF crate; the shared types live elsewhere.
    println!("cargo:rerun-if-changed=../bluegreen-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "bluegreen-ebpf",
            root_dir: "../bluegreen-ebpf",
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
