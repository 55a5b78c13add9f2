//! `ljprobe cpu`: on-CPU sampling of a LuaJIT process. At each `cpu-clock` tick on
//! a target thread, find the VM, decide where the running coroutine's innermost
//! frame is, walk its Lua frames and hand them to user space; with
//! `CpuConfig::native`, also the registers and the top of the user stack for
//! CFI unwinding in user space.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user_buf, gen::bpf_get_stack},
    macros::{map, perf_event},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::PerfEventContext,
    EbpfContext,
};
use ljprobe_common::{
    CpuConfig, CpuSample, CpuSampleNative, NativeStack, VmLayout, STACK_BROKEN, STACK_NOT_IN_LUA, STACK_NO_VM,
};
use ljprobe_probes::{lua_stack, regs::user_regs, vm};

#[map]
static TARGETS: HashMap<u32, u8> = HashMap::with_max_entries(256, 0);

#[map]
static LAYOUT: Array<VmLayout> = Array::with_max_entries(1, 0);

#[map]
static CONFIG: Array<CpuConfig> = Array::with_max_entries(1, 0);

/// The last checked `global_State` per process, for samples taken where the
/// dispatch register no longer holds it (C code called from Lua).
#[map]
static VMS: HashMap<u32, u64> = HashMap::with_max_entries(256, 0);

/// 2 KiB a Lua-only sample, 10 KiB with the native stack: 32 MiB holds a few
/// seconds of 999 Hz on several CPUs should user space fall behind.
#[map]
static SAMPLES: RingBuf = RingBuf::with_byte_size(32 << 20, 0);

/// `BPF_RB_NO_WAKEUP`: user space drains on a timer instead of waking per sample,
/// which at 999 Hz would be a thousand context switches a second on the target's CPUs.
const NO_WAKEUP: u64 = 1;

/// Samples dropped because the ring buffer was full.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[perf_event]
pub fn cpu_sample(ctx: PerfEventContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: presence check only.
    if unsafe { TARGETS.get(&tgid) }.is_none() {
        return 0;
    }
    let Some(regs) = user_regs(&ctx) else { return 0 };
    let Some(layout) = LAYOUT.get(0) else { return 0 };
    let config = CONFIG.get(0).copied().unwrap_or_default();
    if config.native != 0 {
        let Some(mut entry) = SAMPLES.reserve::<CpuSampleNative>(0) else { return lost() };
        let rec = entry.as_mut_ptr();
        // SAFETY: a reserved record we own until submit.
        unsafe {
            let cur_l = fill_lua(&mut (*rec).lua, pid_tgid, layout, &regs);
            kernel_stack(&ctx, &mut (*rec).lua, config.kernel != 0);
            copy_stack(&mut (*rec).native, &regs);
            // The low two bits of cframe are flags (CFRAME_RESUME, CFRAME_UNWIND_FF).
            (*rec).native.cframe =
                cur_l.and_then(|l| vm::read_u64(l + layout.l_cframe as u64)).map_or(0, |c| c & !3);
        }
        entry.submit(NO_WAKEUP);
    } else {
        let Some(mut entry) = SAMPLES.reserve::<CpuSample>(0) else { return lost() };
        // SAFETY: a reserved record we own until submit.
        unsafe {
            let rec = &mut *entry.as_mut_ptr();
            fill_lua(rec, pid_tgid, layout, &regs);
            kernel_stack(&ctx, rec, config.kernel != 0);
        }
        entry.submit(NO_WAKEUP);
    }
    0
}

#[inline(always)]
fn kernel_stack(ctx: &PerfEventContext, sample: &mut CpuSample, wanted: bool) {
    sample.nkernel = 0;
    if !wanted {
        return;
    }
    let size = core::mem::size_of_val(&sample.kernel) as u32;
    // SAFETY: the buffer is `size` bytes of the reserved record; flags 0 = kernel stack.
    let n = unsafe { bpf_get_stack(ctx.as_ptr(), sample.kernel.as_mut_ptr() as *mut _, size, 0) };
    if n > 0 {
        sample.nkernel = (n as u32) / 8;
    }
}

fn lost() -> u32 {
    if let Some(lost) = LOST.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *lost += 1 };
    }
    0
}

/// Header and Lua frames; frames past `nframes` are left unwritten. Returns the
/// running coroutine, if a VM was found.
#[inline(always)]
fn fill_lua(sample: &mut CpuSample, pid_tgid: u64, layout: &VmLayout, regs: &pt_regs) -> Option<u64> {
    let tgid = (pid_tgid >> 32) as u32;
    sample.tgid = tgid;
    sample.tid = pid_tgid as u32;
    sample.nframes = 0;
    sample.vmstate = 0;

    let from_register = regs.r14.checked_sub(layout.g2disp as u64).and_then(|g| vm::check_g(layout, g));
    let (vm, in_lua) = match from_register {
        Some(vm) => {
            // SAFETY: copied out immediately.
            if unsafe { VMS.get(&tgid) }.copied() != Some(vm.g) {
                let _ = VMS.insert(&tgid, &vm.g, 0);
            }
            (Some(vm), true)
        }
        // SAFETY: copied out immediately.
        None => (unsafe { VMS.get(&tgid) }.copied().and_then(|g| vm::check_g(layout, g)), false),
    };
    let Some(vm) = vm else {
        sample.flags = STACK_NO_VM;
        return None;
    };
    sample.vmstate = vm.vmstate;
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
    Some(vm.cur_l)
}

/// The largest of 8, 4 or 1 KiB that is readable from rsp up: a shallow stack
/// ends before 8 KiB, and a partial read fails whole.
#[inline(always)]
fn copy_stack(out: &mut NativeStack, regs: &pt_regs) {
    out.rip = regs.rip;
    out.rsp = regs.rsp;
    out.rbp = regs.rbp;
    out._pad = 0;
    out.cframe = 0;
    out.len = 0;
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
