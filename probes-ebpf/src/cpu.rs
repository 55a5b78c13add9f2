//! `ljprobe cpu`: on-CPU sampling of a LuaJIT process. At each `cpu-clock` tick on
//! a target thread, find the VM, decide where the running coroutine's innermost
//! frame is, walk its Lua frames and hand them to user space; with
//! `CpuConfig::native`, also the registers and the top of the user stack for
//! CFI unwinding in user space.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{map, perf_event},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::PerfEventContext,
};
use ljprobe_common::{CpuConfig, CpuSample, CpuSampleNative, VmLayout};
use ljprobe_probes::{capture, counters, regs::user_regs, NO_WAKEUP};

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
            let cur_l = capture::lua(&mut (*rec).lua, pid_tgid, layout, &regs, &VMS);
            capture::kernel_stack(&ctx, &mut (*rec).lua, config.kernel != 0);
            capture::native(&mut (*rec).native, &regs, layout, cur_l);
        }
        entry.submit(NO_WAKEUP);
    } else {
        let Some(mut entry) = SAMPLES.reserve::<CpuSample>(0) else { return lost() };
        // SAFETY: a reserved record we own until submit.
        unsafe {
            let rec = &mut *entry.as_mut_ptr();
            capture::lua(rec, pid_tgid, layout, &regs, &VMS);
            capture::kernel_stack(&ctx, rec, config.kernel != 0);
        }
        entry.submit(NO_WAKEUP);
    }
    0
}

fn lost() -> u32 {
    counters::add(&LOST, 0, 1);
    0
}
