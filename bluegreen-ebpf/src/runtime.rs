//! What every eBPF object of this crate needs besides its programs: a panic
//! handler (never reached: the verifier rejects any path that could panic)
//! and the license the kernel checks before allowing GPL-only helpers.

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
