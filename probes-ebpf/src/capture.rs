//! Taking a target thread's stack at one moment: the Lua frames of the running
//! coroutine, the kernel stack, and the registers plus top of the user stack for
//! unwinding in user space. Every tool that records stacks uses these.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_probe_read_user_buf, gen::bpf_get_stack},
    maps::HashMap,
    EbpfContext,
};
use ljprobe_common::{CpuSample, NativeStack, VmLayout, STACK_BROKEN, STACK_NOT_IN_LUA, STACK_NO_VM, TRACE_ADDRS};

use crate::{lua_stack, vm};

/// Header and Lua frames; frames past `nframes` are left unwritten. Returns the
/// running coroutine, if a VM was found. `vms` caches the last checked
/// `global_State` per process, for moments when the dispatch register no longer
/// holds it (C code called from Lua, a system call).
#[inline(always)]
pub fn lua(
    sample: &mut CpuSample,
    pid_tgid: u64,
    layout: &VmLayout,
    regs: &pt_regs,
    vms: &HashMap<u32, u64>,
) -> Option<u64> {
    let tgid = (pid_tgid >> 32) as u32;
    sample.tgid = tgid;
    sample.tid = pid_tgid as u32;
    sample.nframes = 0;
    sample.vmstate = 0;
    sample.g = 0;
    sample.trace_pc = 0;
    sample.ntrace_addrs = 0;
    sample.pc = 0;

    let from_register = regs.r14.checked_sub(layout.g2disp as u64).and_then(|g| vm::check_g(layout, g));
    let (vm, in_lua) = match from_register {
        Some(vm) => {
            // SAFETY: copied out immediately.
            if unsafe { vms.get(&tgid) }.copied() != Some(vm.g) {
                let _ = vms.insert(&tgid, &vm.g, 0);
            }
            (Some(vm), true)
        }
        // SAFETY: copied out immediately.
        None => (unsafe { vms.get(&tgid) }.copied().and_then(|g| vm::check_g(layout, g)), false),
    };
    let Some(vm) = vm else {
        sample.flags = STACK_NO_VM;
        return None;
    };
    sample.vmstate = vm.vmstate;
    sample.g = vm.g;
    // Outside the dispatch register's reach, only a coroutine with a C frame
    // boundary is running Lua; otherwise the host (nginx) is in its own code and
    // the stack in memory is a stale one.
    if !in_lua && vm::read_u64(vm.cur_l + layout.l_cframe as u64).unwrap_or(0) == 0 {
        sample.flags = STACK_NOT_IN_LUA;
        return None;
    }
    let (n, flags) = match lua_stack::current_base(layout, vm.g, vm.cur_l, vm.vmstate, regs.rdx) {
        Some(base) => lua_stack::walk(layout, vm.cur_l, base, &mut sample.frames),
        None => (0, STACK_BROKEN),
    };
    sample.nframes = n;
    sample.flags = flags;
    if in_lua && vm.vmstate == !0 {
        sample.pc = regs.rbx;
    }
    if vm.vmstate >= 0 {
        trace_addrs(sample, regs);
        sample.trace_pc = trace_pc(sample, layout, vm.g, vm.vmstate as u64);
    }
    Some(vm.cur_l)
}

/// The instruction pointer and the top of the user stack, where a return
/// address into trace code sits when the trace called out (FFI, a system call).
#[inline(always)]
fn trace_addrs(sample: &mut CpuSample, regs: &pt_regs) {
    sample.trace_addrs[0] = regs.rip;
    sample.ntrace_addrs = 1;
    let words = &mut sample.trace_addrs[1..];
    // SAFETY: the byte view covers exactly the u64 slots after the first.
    let bytes = unsafe { core::slice::from_raw_parts_mut(words.as_mut_ptr() as *mut u8, words.len() * 8) };
    // SAFETY: bpf_probe_read_user fails instead of faulting.
    if unsafe { bpf_probe_read_user_buf(regs.rsp as *const u8, bytes) }.is_ok() {
        sample.ntrace_addrs = TRACE_ADDRS as u32;
    }
}

/// The kernel stack where `ctx` fired, into `sample.kernel` when `wanted`.
#[inline(always)]
pub fn kernel_stack<C: EbpfContext>(ctx: &C, sample: &mut CpuSample, wanted: bool) {
    sample.nkernel = 0;
    if !wanted {
        return;
    }
    let size = core::mem::size_of_val(&sample.kernel) as u32;
    // SAFETY: the buffer is `size` bytes of a record we own; flags 0 = kernel stack.
    let n = unsafe { bpf_get_stack(ctx.as_ptr(), sample.kernel.as_mut_ptr() as *mut _, size, 0) };
    if n > 0 {
        sample.nkernel = (n as u32) / 8;
    }
}

/// Registers, the largest of 8, 4 or 1 KiB that is readable from rsp up (a
/// shallow stack ends before 8 KiB, and a partial read fails whole), and the
/// coroutine's `L->cframe`, from which unwinding resumes past JIT code.
#[inline(always)]
pub fn native(out: &mut NativeStack, regs: &pt_regs, layout: &VmLayout, cur_l: Option<u64>) {
    out.rip = regs.rip;
    out.rsp = regs.rsp;
    out.rbp = regs.rbp;
    out._pad = 0;
    out.len = 0;
    // The low two bits of cframe are flags (CFRAME_RESUME, CFRAME_UNWIND_FF).
    out.cframe = cur_l.and_then(|l| vm::read_u64(l + layout.l_cframe as u64)).map_or(0, |c| c & !3);
    let src = regs.rsp as *const u8;
    // SAFETY: bpf_probe_read_user fails instead of faulting on unmapped memory.
    unsafe {
        if bpf_probe_read_user_buf(src, &mut out.bytes).is_ok() {
            out.len = out.bytes.len() as u32;
        } else if bpf_probe_read_user_buf(src, &mut out.bytes[..4096]).is_ok() {
            out.len = 4096;
        } else if bpf_probe_read_user_buf(src, &mut out.bytes[..1024]).is_ok() {
            out.len = 1024;
        }
    }
}

/// The first of the trace addresses inside trace `traceno`'s machine code, as
/// a return address (the byte before it is the call), or 0.
#[inline(always)]
fn trace_pc(sample: &CpuSample, layout: &VmLayout, g: u64, traceno: u64) -> u64 {
    // `jit_State.trace` is a real pointer, to an array of GCRefs.
    let Some(traces) = vm::read_u64(g + layout.g2j as u64 + layout.j_trace as u64) else { return 0 };
    let Some(trace) = vm::read_ref(layout, traces + layout.ref_size as u64 * traceno) else { return 0 };
    let (Some(mcode), Some(size)) =
        (vm::read_u64(trace + layout.trace_mcode as u64), vm::read_u32(trace + layout.trace_szmcode as u64))
    else {
        return 0;
    };
    let n = sample.ntrace_addrs as usize;
    for i in 0..TRACE_ADDRS {
        if i >= n {
            break;
        }
        let a = sample.trace_addrs[i];
        if a > mcode && a - 1 - mcode < size as u64 {
            return a;
        }
    }
    0
}
