//! `ljprobe epoll-loop`: how long each event-loop iteration runs, from the return
//! of `epoll_wait` to the next call, as a log2 histogram summed here. Iterations
//! past the threshold are reported one by one, and while an iteration runs long,
//! the Lua stacks it runs (sampled) and blocks in (at each switch-out) are sent
//! with it, so user space can name what held the loop. Time preempted inside an
//! iteration is summed, not sampled: there the culprit is the CPU, not the code.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, perf_event, tracepoint},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{PerfEventContext, TracePointContext},
};
use ljprobe_common::{
    log2_bucket, LoopConfig, LoopEnd, LoopHead, LoopStack, LoopTimes, VmLayout, LOOP_BUCKETS, LOOP_ITERATION,
    LOOP_OFF_CPU, LOOP_ON_CPU,
};
use ljprobe_probes::{capture, counters, regs, sched::Switch, NO_WAKEUP};

#[map]
static TARGETS: HashMap<u32, u8> = HashMap::with_max_entries(256, 0);

#[map]
static LAYOUT: Array<VmLayout> = Array::with_max_entries(1, 0);

#[map]
static CONFIG: Array<LoopConfig> = Array::with_max_entries(1, 0);

/// The last checked `global_State` per process (see `capture::lua`).
#[map]
static VMS: HashMap<u32, u64> = HashMap::with_max_entries(256, 0);

/// Per thread inside an iteration: when its `epoll_wait` returned, and its time
/// off the CPU since.
#[map]
static ITERATION: HashMap<u32, LoopTimes> = HashMap::with_max_entries(1024, 0);

/// Iterations per log2 bucket of their length in µs (`log2_bucket`).
#[map]
static HIST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOOP_BUCKETS, 0);

/// Per thread off the CPU inside an iteration: its stack and when it left.
#[map]
static PENDING: HashMap<u32, LoopStack> = HashMap::with_max_entries(1024, 0);

/// A record is built here (the BPF stack holds 512 bytes), then copied to `PENDING`.
#[map]
static SCRATCH: PerCpuArray<LoopStack> = PerCpuArray::with_max_entries(1, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// A target thread calls `epoll_wait`: the iteration that ran since the last
/// return is over.
#[tracepoint]
pub fn loop_wait_enter(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    // SAFETY: presence check / copied out immediately.
    let Some(&times) = (unsafe { TARGETS.get(&tgid) }).and_then(|_| unsafe { ITERATION.get(&tid) }) else {
        return 0;
    };
    let _ = ITERATION.remove(&tid);
    let Some(config) = CONFIG.get(0) else { return 0 };
    let ns = unsafe { bpf_ktime_get_ns() }.saturating_sub(times.start_ns);
    counters::add(&HIST, log2_bucket(ns / 1000).min(LOOP_BUCKETS - 1), 1);
    if ns >= config.long_ns {
        let end = LoopEnd {
            head: LoopHead { kind: LOOP_ITERATION, tgid, tid, _pad: 0, iteration_ns: times.start_ns, ns },
            blocked_ns: times.blocked_ns,
            runnable_ns: times.runnable_ns,
        };
        if EVENTS.output(&end, NO_WAKEUP).is_err() {
            counters::add(&LOST, 0, 1);
        }
    }
    0
}

/// `epoll_wait` returns: an iteration begins.
#[tracepoint]
pub fn loop_wait_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: presence check only.
    if unsafe { TARGETS.get(&((pid_tgid >> 32) as u32)) }.is_some() {
        let times = LoopTimes { start_ns: unsafe { bpf_ktime_get_ns() }, ..LoopTimes::default() };
        let _ = ITERATION.insert(&(pid_tgid as u32), &times, 0);
    }
    0
}

/// On-CPU samples of iterations that have already run long.
#[perf_event]
pub fn loop_sample(ctx: PerfEventContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some((config, start)) = long_iteration(pid_tgid) else { return 0 };
    let (Some(regs), Some(layout)) = (regs::user_regs(&ctx), LAYOUT.get(0)) else { return 0 };
    let Some(mut entry) = EVENTS.reserve::<LoopStack>(0) else {
        counters::add(&LOST, 0, 1);
        return 0;
    };
    // SAFETY: a reserved record we own until submit.
    unsafe {
        let rec = &mut *entry.as_mut_ptr();
        rec.head = head(LOOP_ON_CPU, pid_tgid, start, config.sample_ns);
        rec.syscall = -1;
        capture::lua(&mut rec.lua, pid_tgid, layout, &regs, &VMS);
        capture::kernel_stack(&ctx, &mut rec.lua, false);
    }
    entry.submit(NO_WAKEUP);
    0
}

#[inline(always)]
fn long_iteration(pid_tgid: u64) -> Option<(&'static LoopConfig, u64)> {
    // SAFETY: presence check / copied out immediately.
    unsafe { TARGETS.get(&((pid_tgid >> 32) as u32)) }?;
    let start = unsafe { ITERATION.get(&(pid_tgid as u32)) }?.start_ns;
    let config = CONFIG.get(0)?;
    let ran = unsafe { bpf_ktime_get_ns() }.saturating_sub(start);
    (ran >= config.stack_after_ns).then_some((config, start))
}

#[inline(always)]
fn head(kind: u32, pid_tgid: u64, iteration_ns: u64, ns: u64) -> LoopHead {
    LoopHead { kind, tgid: (pid_tgid >> 32) as u32, tid: pid_tgid as u32, _pad: 0, iteration_ns, ns }
}

/// Time off the CPU inside an iteration, and for blocks the stack at switch-out,
/// sent at switch-in if the block was long enough to matter.
#[tracepoint]
pub fn loop_switch(ctx: TracePointContext) -> u32 {
    let Some(config) = CONFIG.get(0) else { return 0 };
    let Some(switch) = Switch::read(&ctx, &config.sched) else { return 0 };
    let now = unsafe { bpf_ktime_get_ns() };
    switched_out(&switch, now);
    switched_in(config, switch.next_tid, now);
    0
}

#[inline(always)]
fn switched_out(switch: &Switch, now: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // SAFETY: presence check only.
    if unsafe { TARGETS.get(&((pid_tgid >> 32) as u32)) }.is_none() {
        return;
    }
    if switch.prev_exiting() {
        let _ = PENDING.remove(&tid);
        let _ = ITERATION.remove(&tid);
        return;
    }
    let Some(times) = ITERATION.get_ptr_mut(&tid) else { return };
    let runnable = switch.prev_runnable();
    // SAFETY: this thread's entry; only its own events touch it.
    let start = unsafe {
        (*times).out_since_ns = now;
        (*times).out_runnable = runnable as u64;
        (*times).start_ns
    };
    if runnable {
        return;
    }
    let (Some(regs), Some(layout), Some(rec)) = (regs::saved_user_regs(), LAYOUT.get(0), SCRATCH.get_ptr_mut(0))
    else {
        return;
    };
    // SAFETY: this CPU's scratch record; nothing else runs on it meanwhile.
    unsafe {
        // Its weight, the time away, is known at switch-in.
        (*rec).head = head(LOOP_OFF_CPU, pid_tgid, start, 0);
        (*rec).syscall = regs::syscall(&regs);
        capture::lua(&mut (*rec).lua, pid_tgid, layout, &regs, &VMS);
        (*rec).lua.nkernel = 0;
        let _ = PENDING.insert(&tid, &*rec, 0);
    }
}

#[inline(always)]
fn switched_in(config: &LoopConfig, tid: u32, now: u64) {
    // Every switch on the machine comes here: one lookup for threads that are
    // not inside an iteration.
    let Some(times) = ITERATION.get_ptr_mut(&tid) else { return };
    // SAFETY: this thread's entry; only its own events touch it.
    let (away, runnable) = unsafe {
        let since = (*times).out_since_ns;
        if since == 0 {
            return;
        }
        (*times).out_since_ns = 0;
        let away = now.saturating_sub(since);
        let runnable = (*times).out_runnable != 0;
        if runnable {
            (*times).runnable_ns += away;
        } else {
            (*times).blocked_ns += away;
        }
        (away, runnable)
    };
    // Preempted: no stack was taken.
    if runnable {
        return;
    }
    let Some(rec) = PENDING.get_ptr_mut(&tid) else { return };
    // SAFETY: valid until removed below; only this thread's switches touch it.
    unsafe {
        if away >= config.stack_after_ns {
            (*rec).head.ns = away;
            if EVENTS.output(&*rec, NO_WAKEUP).is_err() {
                counters::add(&LOST, 0, 1);
            }
        }
    }
    let _ = PENDING.remove(&tid);
}
