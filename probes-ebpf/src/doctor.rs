//! `ljprobe doctor`: proves the eBPF chain end to end by finding each target's Lua VM.
//! Two ways in, so that a process that never calls the LuaJIT API after we attach
//! (one long Lua loop) is found as well as an nginx worker that calls it per request:
//! - a `cpu-clock` sample reads the interpreter's DISPATCH register (r14 on x64);
//! - a uprobe on a LuaJIT API function reads its `lua_State *` argument.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{map, perf_event, uprobe},
    maps::{Array, HashMap},
    programs::{PerfEventContext, ProbeContext},
    EbpfContext,
};
use aya_log_ebpf::info;
use ljprobe_common::{VmFound, VmLayout, VM_SOURCE_API_ARG, VM_SOURCE_DISPATCH_REG};
use ljprobe_probes::{regs::user_regs, vm};

/// Processes (tgid) to look at; the value is unused.
#[map]
static TARGETS: HashMap<u32, u8> = HashMap::with_max_entries(256, 0);

#[map]
static LAYOUT: Array<VmLayout> = Array::with_max_entries(1, 0);

/// The first checked VM per process.
#[map]
static FOUND: HashMap<u32, VmFound> = HashMap::with_max_entries(256, 0);

#[perf_event]
pub fn doctor_sample(ctx: PerfEventContext) -> u32 {
    let Some(tgid) = target() else { return 0 };
    let Some(regs) = user_regs(&ctx) else { return 0 };
    let Some(layout) = LAYOUT.get(0) else { return 0 };
    let Some(g) = regs.r14.checked_sub(layout.g2disp as u64) else { return 0 };
    record(&ctx, tgid, layout, g, VM_SOURCE_DISPATCH_REG);
    0
}

#[uprobe]
pub fn doctor_api(ctx: ProbeContext) -> u32 {
    let Some(tgid) = target() else { return 0 };
    let Some(layout) = LAYOUT.get(0) else { return 0 };
    let Some(l) = ctx.arg::<u64>(0) else { return 0 };
    let Some(g) = vm::g_of_thread(layout, l) else { return 0 };
    record(&ctx, tgid, layout, g, VM_SOURCE_API_ARG);
    0
}

#[inline(always)]
fn target() -> Option<u32> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: the value is copied out before the map can change under us.
    unsafe { TARGETS.get(&tgid) }.map(|_| tgid)
}

#[inline(always)]
fn record<C: EbpfContext>(ctx: &C, tgid: u32, layout: &VmLayout, g: u64, source: u32) {
    // SAFETY: only checks presence.
    if unsafe { FOUND.get(&tgid) }.is_some() {
        return;
    }
    let Some(vm) = vm::check_g(layout, g) else { return };
    let found = VmFound {
        g: vm.g,
        cur_l: vm.cur_l,
        vmstate: vm.vmstate,
        source,
        tid: bpf_get_current_pid_tgid() as u32,
        _pad: 0,
    };
    if FOUND.insert(&tgid, &found, 0).is_ok() {
        info!(ctx, "pid {}: global_State at {:x} (source {})", tgid, vm.g, source);
    }
}
