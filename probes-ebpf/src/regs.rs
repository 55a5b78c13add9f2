//! The target's user-space registers, wherever the CPU was.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_task_btf, bpf_probe_read_kernel, bpf_task_pt_regs},
    programs::PerfEventContext,
    EbpfContext,
};
use ljprobe_common::EPOLL_SYSCALLS;

/// The user registers of the sampled task. A `cpu-clock` sample that interrupts a
/// system call sees kernel registers in its context; the task's saved user registers
/// are what the Lua VM left behind, so read those instead.
#[inline(always)]
pub fn user_regs(ctx: &PerfEventContext) -> Option<pt_regs> {
    // SAFETY: a perf_event program's context is `struct bpf_perf_event_data`, whose
    // first member is the interrupted `pt_regs`.
    let regs = unsafe { *(ctx.as_ptr() as *const pt_regs) };
    if regs.cs & 3 == 3 {
        return Some(regs);
    }
    saved_user_regs()
}

/// The current task's saved user registers: what it resumes with when it
/// returns to user space (valid in any program running in its context).
#[inline(always)]
pub fn saved_user_regs() -> Option<pt_regs> {
    // SAFETY: both helpers take the current task, which always exists in a
    // program's context.
    let saved = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    if saved.is_null() {
        return None;
    }
    unsafe { bpf_probe_read_kernel(saved) }.ok()
}

/// The system call a thread is in, from its saved registers, or -1.
#[inline(always)]
pub fn syscall(regs: &pt_regs) -> i64 {
    regs.orig_rax as i64
}

/// Waiting in the event loop: idle, not blocked.
#[inline(always)]
pub fn in_epoll_wait(regs: &pt_regs) -> bool {
    let nr = syscall(regs);
    nr == EPOLL_SYSCALLS[0] || nr == EPOLL_SYSCALLS[1] || nr == EPOLL_SYSCALLS[2]
}
