//! `ljprobe offcpu`: where target threads wait. On `sched:sched_switch`, a target
//! thread leaving the CPU has its stack taken and kept per thread; when it comes
//! back, the time away is added to that stack. Lua-level stacks are summed here,
//! per stack, and sent to user space once; native stacks can only be unwound in
//! user space, so each block long enough to count is sent with its stack.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::TracePointContext,
};
use ljprobe_common::{
    BlockedTotal, OffcpuConfig, OffcpuHead, OffcpuSample, OffcpuSampleNative, VmLayout, MAX_KERNEL_FRAMES,
    MAX_LUA_FRAMES, OFFCPU_COUNTS, OFFCPU_IDLE_COUNT, OFFCPU_IDLE_NS, OFFCPU_RUNNABLE, OFFCPU_SHORT_COUNT,
    OFFCPU_SHORT_NS,
};
use ljprobe_probes::{capture, counters, regs, sched::Switch, NO_WAKEUP};

#[map]
static TARGETS: HashMap<u32, u8> = HashMap::with_max_entries(256, 0);

#[map]
static LAYOUT: Array<VmLayout> = Array::with_max_entries(1, 0);

#[map]
static CONFIG: Array<OffcpuConfig> = Array::with_max_entries(1, 0);

/// The last checked `global_State` per process (see `capture::lua`).
#[map]
static VMS: HashMap<u32, u64> = HashMap::with_max_entries(256, 0);

/// Per thread off the CPU: its stack and when it left; Lua-level stacks here,
/// with native stacks in `PENDING_NATIVE` (user space shrinks the one not in
/// use to a single entry at load, and each switch-out copies only what it needs).
#[map]
static PENDING: HashMap<u32, OffcpuSample> = HashMap::with_max_entries(1024, 0);

#[map]
static PENDING_NATIVE: HashMap<u32, OffcpuSampleNative> = HashMap::with_max_entries(1024, 0);

/// Per thread idle in `epoll_wait`: only when it went, since no stack is wanted.
#[map]
static IDLE_SINCE: HashMap<u32, u64> = HashMap::with_max_entries(1024, 0);

/// A record is built here (the BPF stack holds 512 bytes) and then copied into
/// `PENDING`.
#[map]
static SCRATCH: PerCpuArray<OffcpuSampleNative> = PerCpuArray::with_max_entries(1, 0);

/// Blocked time per Lua stack key (`OffcpuHead::key`), per CPU so that adding
/// needs no atomics; user space sums the CPUs.
#[map]
static BLOCKED: PerCpuHashMap<u64, BlockedTotal> = PerCpuHashMap::with_max_entries(16384, 0);

#[map]
static SAMPLES: RingBuf = RingBuf::with_byte_size(16 << 20, 0);

/// Records dropped: ring buffer or `BLOCKED` full.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Time not shown: blocks under the minimum, idle waits (`OFFCPU_*` slots).
#[map]
static COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(OFFCPU_COUNTS, 0);

#[tracepoint]
pub fn offcpu_switch(ctx: TracePointContext) -> u32 {
    let Some(config) = CONFIG.get(0) else { return 0 };
    let Some(switch) = Switch::read(&ctx, &config.sched) else { return 0 };
    let now = unsafe { bpf_ktime_get_ns() };
    switched_out(&ctx, config, &switch, now);
    switched_in(config, switch.next_tid, now);
    0
}

/// The current thread is `prev`, so its registers and memory are at hand.
#[inline(always)]
fn switched_out(ctx: &TracePointContext, config: &OffcpuConfig, switch: &Switch, now: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    // SAFETY: presence check only.
    if unsafe { TARGETS.get(&tgid) }.is_none() {
        return;
    }
    if switch.prev_exiting() {
        let _ = PENDING.remove(&tid);
        let _ = PENDING_NATIVE.remove(&tid);
        let _ = IDLE_SINCE.remove(&tid);
        return;
    }
    let Some(regs) = regs::saved_user_regs() else { return };
    // Preempted inside epoll_wait, it has work and waits for a CPU: not idle.
    if config.include_idle == 0 && !switch.prev_runnable() && regs::in_epoll_wait(&regs) {
        let _ = IDLE_SINCE.insert(&tid, &now, 0);
        return;
    }
    let (Some(layout), Some(rec)) = (LAYOUT.get(0), SCRATCH.get_ptr_mut(0)) else { return };
    // SAFETY: this CPU's scratch record; nothing else runs on it meanwhile.
    unsafe {
        let s = &mut (*rec).sample;
        let cur_l = capture::lua(&mut s.lua, pid_tgid, layout, &regs, &VMS);
        capture::kernel_stack(ctx, &mut s.lua, config.kernel != 0);
        s.head = OffcpuHead {
            key: 0,
            blocked_ns: 0,
            switched_out_ns: now,
            syscall: regs::syscall(&regs),
            flags: if switch.prev_runnable() { OFFCPU_RUNNABLE } else { 0 },
            _pad: 0,
        };
        if config.native != 0 {
            capture::native(&mut (*rec).native, &regs, layout, cur_l);
            let _ = PENDING_NATIVE.insert(&tid, &*rec, 0);
        } else {
            s.head.key = stack_key(s);
            let _ = PENDING.insert(&tid, s, 0);
        }
    }
}

#[inline(always)]
fn switched_in(config: &OffcpuConfig, tid: u32, now: u64) {
    // SAFETY: copied out immediately.
    if let Some(&since) = unsafe { IDLE_SINCE.get(&tid) } {
        counters::add(&COUNTS, OFFCPU_IDLE_NS, now.saturating_sub(since));
        counters::add(&COUNTS, OFFCPU_IDLE_COUNT, 1);
        let _ = IDLE_SINCE.remove(&tid);
        return;
    }
    if config.native != 0 {
        let Some(rec) = PENDING_NATIVE.get_ptr_mut(&tid) else { return };
        // SAFETY: the map value stays valid until removed below; only this
        // thread's own switches touch its entry, and those are serialized.
        unsafe {
            if long_enough(config, &mut (*rec).sample.head, now).is_some() {
                if SAMPLES.output(&*rec, NO_WAKEUP).is_err() {
                    counters::add(&LOST, 0, 1);
                }
            }
        }
        let _ = PENDING_NATIVE.remove(&tid);
    } else {
        let Some(rec) = PENDING.get_ptr_mut(&tid) else { return };
        // SAFETY: as above.
        unsafe {
            if let Some(blocked) = long_enough(config, &mut (*rec).head, now) {
                add_blocked(&*rec, blocked);
            }
        }
        let _ = PENDING.remove(&tid);
    }
}

/// The time blocked if it reaches the minimum (and set in `head`); shorter
/// blocks are only counted.
#[inline(always)]
fn long_enough(config: &OffcpuConfig, head: &mut OffcpuHead, now: u64) -> Option<u64> {
    let blocked = now.saturating_sub(head.switched_out_ns);
    if blocked < config.min_block_ns {
        counters::add(&COUNTS, OFFCPU_SHORT_NS, blocked);
        counters::add(&COUNTS, OFFCPU_SHORT_COUNT, 1);
        return None;
    }
    head.blocked_ns = blocked;
    Some(blocked)
}

/// Adds to the stack's total; a stack seen for the first time is also sent.
#[inline(always)]
fn add_blocked(s: &OffcpuSample, ns: u64) {
    let key = s.head.key;
    if add_to(key, ns) {
        return;
    }
    let first = BlockedTotal { ns, count: 1 };
    if BLOCKED.insert(&key, &first, BPF_NOEXIST as u64).is_ok() {
        if SAMPLES.output(s, NO_WAKEUP).is_err() {
            counters::add(&LOST, 0, 1);
        }
    } else if !add_to(key, ns) {
        // BLOCKED is full.
        counters::add(&LOST, 0, 1);
    }
}

#[inline(always)]
fn add_to(key: u64, ns: u64) -> bool {
    let Some(total) = BLOCKED.get_ptr_mut(&key) else { return false };
    // SAFETY: this CPU's copy of a live map value.
    unsafe {
        (*total).ns += ns;
        (*total).count += 1;
    }
    true
}

/// A 64-bit hash of everything that makes the stack what user space will show:
/// process, VM state, why it waited, frames. Never 0 (0 means "not aggregated").
#[inline(always)]
fn stack_key(s: &OffcpuSample) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut mix = |w: u64| h = (h ^ w).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29);
    let l = &s.lua;
    mix((l.tgid as u64) << 32 | l.flags as u64);
    mix((l.vmstate as u32 as u64) << 32 | s.head.flags as u64);
    mix(s.head.syscall as u64);
    // Inside a trace, the walked frames stop at its root: where in the trace
    // it stopped tells which inlined functions user space will find.
    mix(l.trace_pc);
    mix(l.pc);
    let n = l.nframes as usize;
    for i in 0..MAX_LUA_FRAMES {
        if i >= n {
            break;
        }
        mix(l.frames[i].func);
        mix(l.frames[i].link);
    }
    let k = l.nkernel as usize;
    for i in 0..MAX_KERNEL_FRAMES {
        if i >= k {
            break;
        }
        mix(l.kernel[i]);
    }
    h.max(1)
}
