//! What every XDP object of the crate needs beside its programs: a panic
//! handler (never reached: the verifier admits no panicking path) and the
//! licence the kernel reads before it allows GPL-only helpers.

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
