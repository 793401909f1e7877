//! The context's packet as a [`Frame`], for `lb_common::parse`: the parser
//! lives there so the host's unit tests and fuzzer run the same code.

use aya_ebpf::programs::XdpContext;
use lb_common::parse::Frame;

/// The packet an XDP program was given.
pub struct Packet<'a>(pub &'a XdpContext);

// SAFETY: the kernel hands the program `data..data_end` readable (and
// writable) for the whole run; the verifier admits only accesses checked
// against `data_end`, which `ptr_at` does.
unsafe impl Frame for Packet<'_> {
    #[inline(always)]
    fn data(&self) -> usize {
        self.0.data()
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        self.0.data_end()
    }
}
