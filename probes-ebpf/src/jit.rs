//! `ljprobe jit`: what the trace compiler does in a live LuaJIT, from its own
//! `jit_State`, without symbols. Two hardware watchpoints per VM thread run a
//! program right after the VM writes a field:
//! - `jit_state` on `J->state`, which the compiler's state machine writes a
//!   few times per trace attempt; `LJ_TRACE_ERR` is written once per abort,
//!   before `trace_abort` reads the error and frees the trace, so all of it
//!   is still there to copy;
//! - `jit_exit` on `J->parent`, which the exit handler (`vm_exit_handler`)
//!   writes on every trace exit, after `J->exitno` and with the VM state
//!   already `EXIT`: one count per (trace, exit).
//!
//! A watchpoint hit costs a debug exception (about 20 us on this machine's
//! VM: docs/bench.md#jit), so user space turns the exit watch off for the rest of a second
//! once a process has taken its budget of exits in it (`--max-exits`).
//!
//! `jit_sample` is the cpu tool's Lua sampler (VM state and Lua stack), and
//! `jit_request` (a uprobe on `ngx_http_free_request`, put in place once a
//! process takes exits) closes a request's count of exits into a log2
//! histogram.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, perf_event, uprobe},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{PerfEventContext, ProbeContext},
};
use ljprobe_common::{
    jit::{exit_key, JitAbort, JitLayout, ReqExits, JIT_REQ_SLOTS, JIT_STATE_SLOTS},
    CpuSample, VmLayout,
};
use ljprobe_probes::{
    capture, counters,
    regs::user_regs,
    vm::{read_i32, read_u32, read_u64},
    NO_WAKEUP,
};

#[map]
static TARGETS: HashMap<u32, u8> = HashMap::with_max_entries(256, 0);

#[map]
static LAYOUT: Array<VmLayout> = Array::with_max_entries(1, 0);

#[map]
static JIT_LAYOUT: Array<JitLayout> = Array::with_max_entries(1, 0);

/// Each target's `global_State`, seeded by user space and refreshed by the sampler.
#[map]
static VMS: HashMap<u32, u64> = HashMap::with_max_entries(256, 0);

#[map]
static SAMPLES: RingBuf = RingBuf::with_byte_size(16 << 20, 0);

/// Aborts are rare (each one costs the VM a recording): 1 MiB holds thousands.
#[map]
static ABORTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// [0]: samples, [1]: aborts lost to a full ring; [2]: exits not counted
/// because the map was full; [3]: writes of `J->parent` that were no exit.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(4, 0);

/// Writes of `J->state`, by the value written.
#[map]
static STATE_WRITES: PerCpuArray<u64> = PerCpuArray::with_max_entries(JIT_STATE_SLOTS, 0);

/// Exits by `exit_key(process, trace, exit)`.
#[map]
static EXITS: HashMap<u64, u64> = HashMap::with_max_entries(1 << 16, 0);

/// Exits per process, all told: user space reads them every tick to keep the
/// watch under its budget.
#[map]
static EXIT_TOTALS: HashMap<u32, u64> = HashMap::with_max_entries(256, 0);

/// Per process, the watching period now: even while the exit watch is on,
/// odd while user space has it off (`--max-exits`).
#[map]
static GENS: HashMap<u32, u64> = HashMap::with_max_entries(256, 0);

/// Exits since the process's last request ended (`ReqExits`).
#[map]
static REQ_EXITS: HashMap<u32, ReqExits> = HashMap::with_max_entries(256, 0);

/// Requests by their exits, log2 (`JIT_REQ_SLOTS`).
#[map]
static REQ_HIST: PerCpuArray<u64> = PerCpuArray::with_max_entries(JIT_REQ_SLOTS, 0);

#[perf_event]
pub fn jit_sample(ctx: PerfEventContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: presence check only.
    if unsafe { TARGETS.get(&((pid_tgid >> 32) as u32)) }.is_none() {
        return 0;
    }
    let Some(regs) = user_regs(&ctx) else { return 0 };
    let Some(layout) = LAYOUT.get(0) else { return 0 };
    let Some(mut entry) = SAMPLES.reserve::<CpuSample>(0) else {
        counters::add(&LOST, 0, 1);
        return 0;
    };
    // SAFETY: a reserved record we own until submit.
    unsafe { capture::lua(&mut *entry.as_mut_ptr(), pid_tgid, layout, &regs, &VMS) };
    entry.submit(NO_WAKEUP);
    0
}

/// The `jit_State` of the calling process, with both layouts.
#[inline(always)]
fn jit_state(tgid: u32) -> Option<(u64, &'static VmLayout, &'static JitLayout)> {
    let layout = LAYOUT.get(0)?;
    let jl = JIT_LAYOUT.get(0)?;
    // SAFETY: copied out immediately.
    let g = unsafe { VMS.get(&tgid) }.copied()?;
    Some((g + layout.g2j as u64, layout, jl))
}

#[perf_event]
pub fn jit_state_write(_ctx: PerfEventContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some((j, layout, jl)) = jit_state(tgid) else { return 0 };
    let Some(state) = read_u32(j + jl.j_state as u64) else { return 0 };
    counters::add(&STATE_WRITES, state & (JIT_STATE_SLOTS - 1), 1);
    if state == jl.state_err {
        abort(tgid, j, layout, jl);
    }
    0
}

#[inline(always)]
fn abort(tgid: u32, j: u64, layout: &VmLayout, jl: &JitLayout) {
    let Some(mut entry) = ABORTS.reserve::<JitAbort>(0) else {
        counters::add(&LOST, 1, 1);
        return;
    };
    let l = read_u64(j + jl.j_l as u64).unwrap_or(0);
    let top = read_u64(l + jl.l_top as u64).unwrap_or(0);
    let pt = read_u64(j + jl.j_pt as u64).unwrap_or(0);
    // SAFETY: a reserved record we own until submit.
    let a = unsafe { &mut *entry.as_mut_ptr() };
    *a = JitAbort {
        tgid,
        traceno: read_u32(j + jl.cur_traceno as u64).unwrap_or(0) & 0xffff,
        parent: read_u32(j + jl.j_parent as u64).unwrap_or(0),
        exitno: read_u32(j + jl.j_exitno as u64).unwrap_or(0),
        // SAFETY: a plain helper call.
        ns: unsafe { bpf_ktime_get_ns() },
        error: read_u64(top.wrapping_sub(jl.tvalue as u64)).unwrap_or(0),
        errinfo: read_u64(j + jl.j_errinfo as u64).unwrap_or(0),
        startpt: read_u64(j + jl.cur_startpt as u64).unwrap_or(0),
        startpc: read_u64(j + jl.cur_startpc as u64).unwrap_or(0),
        pt,
        pc: read_u64(j + jl.j_pc as u64).unwrap_or(0),
        frame_func: 0,
        frame_link: 0,
    };
    if pt == 0 {
        // The recorder stopped outside Lua (in a fast function it was
        // recording): keep the innermost frame, whose link leads back to the
        // Lua call, as `lj_debug_frame` would find it.
        if let Some(base) = read_u64(l + layout.l_base as u64) {
            a.frame_func = read_u64(base.wrapping_sub(2 * jl.tvalue as u64)).unwrap_or(0);
            a.frame_link = read_u64(base.wrapping_sub(jl.tvalue as u64)).unwrap_or(0);
        }
    }
    entry.submit(NO_WAKEUP);
}

#[perf_event]
pub fn jit_exit(_ctx: PerfEventContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some((j, layout, jl)) = jit_state(tgid) else { return 0 };
    let g = j - layout.g2j as u64;
    // `J->parent` is also written when a trace starts (0) and around the
    // recorder's vmevents: only the exit handler writes it in state EXIT.
    if read_i32(g + layout.g_vmstate as u64) != Some(jl.vmstate_exit) {
        counters::add(&LOST, 3, 1);
        return 0;
    }
    let (Some(traceno), Some(exitno)) = (read_u32(j + jl.j_parent as u64), read_u32(j + jl.j_exitno as u64)) else {
        return 0;
    };
    if !bump(&EXITS, exit_key(tgid, traceno, exitno)) {
        counters::add(&LOST, 2, 1);
    }
    bump(&EXIT_TOTALS, tgid);
    if let Some(r) = REQ_EXITS.get_ptr_mut(&tgid) {
        // SAFETY: as above.
        unsafe { (*r).exits += 1 };
    }
    0
}

/// Adds one to `key`'s count; false if the map is full.
#[inline(always)]
fn bump<K>(map: &HashMap<K, u64>, key: K) -> bool {
    match map.get_ptr_mut(&key) {
        // SAFETY: the map's value; one VM runs on one thread at a time.
        Some(n) => {
            unsafe { *n += 1 };
            true
        }
        None => map.insert(&key, &1, 0).is_ok(),
    }
}

#[uprobe]
pub fn jit_request(_ctx: ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: copied out immediately.
    let gen = unsafe { GENS.get(&tgid) }.copied().unwrap_or(1);
    // SAFETY: as above.
    let last = unsafe { REQ_EXITS.get(&tgid) }.copied();
    // The request that ends now began when the previous one ended: counted
    // only if the watch was on all along.
    if let Some(r) = last.filter(|r| r.gen == gen && gen & 1 == 0) {
        let slot = if r.exits == 0 { 0 } else { 64 - r.exits.leading_zeros() };
        counters::add(&REQ_HIST, slot.min(JIT_REQ_SLOTS - 1), 1);
    }
    let _ = REQ_EXITS.insert(&tgid, &ReqExits { gen, exits: 0 }, 0);
    0
}
