//! Kernel-side code shared by ljprobe's eBPF programs. Each tool is one binary in
//! this crate (`src/<tool>.rs`); what more than one tool needs lives here.
#![no_std]

pub mod capture;
pub mod counters;
pub mod gc_cycles;
pub mod lua_stack;
pub mod regs;
pub mod sched;
pub mod vm;

/// `BPF_RB_NO_WAKEUP`: user space drains ring buffers on a timer instead of
/// waking per record, which at 999 Hz (or on every context switch) would add a
/// thousand context switches a second on the target's CPUs.
pub const NO_WAKEUP: u64 = 1;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this; it only has to exist.
    loop {}
}
