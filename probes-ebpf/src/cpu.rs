//! `ljprobe cpu`: on-CPU sampling of a LuaJIT process. At each `cpu-clock` tick on
//! a target thread, find the VM, decide where the running coroutine's innermost
//! frame is, walk its Lua frames and hand them to user space.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{map, perf_event},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::PerfEventContext,
};
use ljprobe_common::{CpuSample, VmLayout, STACK_NOT_IN_LUA, STACK_NO_VM};
use ljprobe_probes::{lua_stack, regs::user_regs, vm};

#[map]
static TARGETS: HashMap<u32, u8> = HashMap::with_max_entries(256, 0);

#[map]
static LAYOUT: Array<VmLayout> = Array::with_max_entries(1, 0);

/// The last checked `global_State` per process, for samples taken where the
/// dispatch register no longer holds it (C code called from Lua).
#[map]
static VMS: HashMap<u32, u64> = HashMap::with_max_entries(256, 0);

/// About 2 KiB a sample: 16 MiB holds several seconds of 999 Hz on many CPUs
/// should user space fall behind.
#[map]
static SAMPLES: RingBuf = RingBuf::with_byte_size(16 << 20, 0);

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

    let Some(mut entry) = SAMPLES.reserve::<CpuSample>(0) else {
        if let Some(lost) = LOST.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, no concurrent writer.
            unsafe { *lost += 1 };
        }
        return 0;
    };
    let sample = entry.as_mut_ptr();
    // SAFETY: `sample` points at a reserved, exclusively owned ring buffer record;
    // every header field is written before submit, frames up to `nframes`.
    unsafe {
        (*sample).tgid = tgid;
        (*sample).tid = pid_tgid as u32;
        (*sample)._pad = 0;
        (*sample).nframes = 0;
        let Some(vm) = vm else {
            (*sample).vmstate = 0;
            (*sample).flags = STACK_NO_VM;
            entry.submit(0);
            return 0;
        };
        (*sample).vmstate = vm.vmstate;
        // Outside the dispatch register's reach, only a coroutine with a C frame
        // boundary is running Lua; otherwise the host (nginx) is in its own code and
        // the stack in memory is a stale one.
        if !in_lua && vm::read_u64(vm.cur_l + layout.l_cframe as u64).unwrap_or(0) == 0 {
            (*sample).flags = STACK_NOT_IN_LUA;
            entry.submit(0);
            return 0;
        }
        let base = lua_stack::current_base(layout, vm.g, vm.cur_l, vm.vmstate, regs.rdx);
        let (n, flags) = match base {
            Some(base) => lua_stack::walk(layout, vm.cur_l, base, &mut (*sample).frames),
            None => (0, ljprobe_common::STACK_BROKEN),
        };
        (*sample).nframes = n;
        (*sample).flags = flags;
    }
    entry.submit(0);
    0
}
