use which::which;

/// Rebuild when bpf-linker changes: cargo cannot see that undeclared tool.
fn main() {
    let bpf_linker = which("bpf-linker").expect(
        "bpf-linker is not on PATH: run `cargo xtask setup` (it installs bpf-linker built against LLVM 22)",
    );
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
