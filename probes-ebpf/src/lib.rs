//! Kernel-side code shared by ljprobe's eBPF programs. Each tool is one binary in
//! this crate (`src/<tool>.rs`); what more than one tool needs lives here.
#![no_std]

pub mod lua_stack;
pub mod regs;
pub mod vm;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this; it only has to exist.
    loop {}
}
