//! `ljprobe alloc`: a uprobe on the VM's allocator function (`G->allocf`,
//! `lj_alloc_f(ud, ptr, osize, nsize)` in a stock build). Frees are counted;
//! allocations and growths are weighed by the share of time user space keeps
//! the probe attached (`AllocConfig::scale`) and added up per Lua stack inside
//! the kernel, each stack sent to user space once. With native stacks, every
//! event is sent with its stack copy instead.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user_buf},
    macros::{map, perf_event, uprobe, uretprobe},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{PerfEventContext, ProbeContext, RetProbeContext},
};
use ljprobe_common::{
    AllocAddr, AllocConfig, AllocPending, GcCycles, AllocRecord, AllocRecordNative, AllocTotals, CpuSample, VmLayout, ALLOC_BYTES, ALLOC_CALLS, ALLOC_COUNT_SLOTS, ALLOC_EXPLICIT_FREED_BYTES,
    ALLOC_FREED_BYTES, ALLOC_FREES, ALLOC_HIST_BUCKETS, ALLOC_LOST, ALLOC_NEW, ALLOC_REALLOC, ALLOC_STACKS_FULL,
    ALLOC_TABLE_RESIZE, MAX_LUA_FRAMES,
};
use ljprobe_probes::{capture, counters, gc_cycles, NO_WAKEUP};

#[map]
static TARGETS: HashMap<u32, u8> = HashMap::with_max_entries(256, 0);

#[map]
static LAYOUT: Array<VmLayout> = Array::with_max_entries(1, 0);

#[map]
static CONFIG: Array<AllocConfig> = Array::with_max_entries(1, 0);

/// Each target's `global_State`, seeded by user space: inside the allocator
/// the dispatch register is rarely still there.
#[map]
static VMS: HashMap<u32, u64> = HashMap::with_max_entries(256, 0);

/// Per (Lua stack hash | kind): what it allocated.
#[map]
static STACKS: PerCpuHashMap<u64, AllocTotals> = PerCpuHashMap::with_max_entries(16384, 0);

/// Stacks already sent to user space.
#[map]
static SENT: HashMap<u64, u8> = HashMap::with_max_entries(16384, 0);

/// Where a Lua-mode event's stack is walked before it is known to be new.
#[map]
static SCRATCH: PerCpuArray<AllocRecord> = PerCpuArray::with_max_entries(1, 0);

#[map]
static COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ALLOC_COUNT_SLOTS, 0);

/// Weighted allocations by log2 of their size.
#[map]
static HIST: PerCpuArray<u64> = PerCpuArray::with_max_entries(ALLOC_HIST_BUCKETS, 0);

/// Per process: the collector's accounting at each atomic phase (`gc_cycles.rs`).
#[map]
static CYCLES: HashMap<u32, GcCycles> = HashMap::with_max_entries(256, 0);

#[map]
static RECORDS: RingBuf = RingBuf::with_byte_size(16 << 20, 0);

/// With `addresses` (`ljprobe leak`): per thread, the new block asked for,
/// until the allocator returns it.
#[map]
static PENDING: HashMap<u64, AllocPending> = HashMap::with_max_entries(4096, 0);

/// Words above the allocator's stack pointer searched for a return address
/// into `lj_tab_resize` (it calls `lj_mem_realloc`/`lj_mem_newvec`, which call
/// the allocator: two small frames).
const RESIZE_SCAN_WORDS: usize = 24;

#[uprobe]
pub fn alloc_call(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: presence check only.
    if unsafe { TARGETS.get(&((pid_tgid >> 32) as u32)) }.is_none() {
        return 0;
    }
    counters::add(&COUNTS, ALLOC_CALLS, 1);
    // SAFETY: a uprobe's context is the user registers at the probed instruction.
    let regs = unsafe { *ctx.regs };
    let Some(config) = CONFIG.get(0) else { return 0 };
    // 0 between the probe's attachment and the moment user space starts
    // counting: a window counts exactly the span it measured the heap over.
    if config.scale == 0 {
        return 0;
    }
    // lua_Alloc(ud, ptr, osize, nsize): System V arguments.
    let (ptr, osize, nsize) = (regs.rsi, regs.rdx, regs.rcx);
    if nsize == 0 || (ptr != 0 && nsize <= osize) {
        let freed = if nsize == 0 { osize } else { osize - nsize };
        counters::add(&COUNTS, ALLOC_FREES, config.scale * u64::from(nsize == 0));
        counters::add(&COUNTS, ALLOC_FREED_BYTES, freed * config.scale);
        if !in_collector(pid_tgid) {
            counters::add(&COUNTS, ALLOC_EXPLICIT_FREED_BYTES, freed * config.scale);
        }
        return 0;
    }
    let (mut kind, bytes) = if ptr == 0 { (ALLOC_NEW, nsize) } else { (ALLOC_REALLOC, nsize - osize) };
    if in_resize(&regs, config) {
        kind = ALLOC_TABLE_RESIZE;
    }
    counters::add(&HIST, log2(bytes), config.scale);
    counters::add(&COUNTS, ALLOC_BYTES, bytes * config.scale);
    // The VM is found from the seeded `G`; the registers the interpreter keeps
    // its BASE and PC in hold the allocator's arguments and locals here.
    let mut vm_regs = regs;
    vm_regs.rdx = 0;
    vm_regs.rbx = 0;
    let key = if config.native != 0 {
        record_native(&ctx, pid_tgid, &vm_regs, config, kind, bytes)
    } else {
        count_lua(pid_tgid, &vm_regs, config, kind, bytes)
    };
    if config.addresses != 0 && ptr == 0 {
        if let Some(key) = key {
            let _ = PENDING.insert(&pid_tgid, &AllocPending { key, scale: config.scale, bytes, sp: regs.rsp }, 0);
        }
    }
    0
}

/// The allocator returns: with `addresses`, the new block's address goes to
/// user space beside the key of the stack that asked for it.
#[uretprobe]
pub fn alloc_return(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: copied out at once.
    let Some(p) = (unsafe { PENDING.get(&pid_tgid) }).copied() else { return 0 };
    let _ = PENDING.remove(&pid_tgid);
    // SAFETY: a uretprobe's context is the user registers at the return.
    let (addr, sp) = unsafe { ((*ctx.regs).rax, (*ctx.regs).rsp) };
    if addr == 0 || sp != p.sp.wrapping_add(8) {
        return 0;
    }
    // SAFETY: a helper without arguments.
    let ns = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    let rec = AllocAddr { key: p.key, addr, scale: p.scale, bytes: p.bytes as u32, pid: (pid_tgid >> 32) as u32, ns };
    if RECORDS.output(&rec, NO_WAKEUP).is_err() {
        counters::add(&COUNTS, ALLOC_LOST, 1);
    }
    0
}

/// At each atomic phase of a target's collector (a hardware watchpoint on
/// `gc.currentwhite`): the VM's own accounting of what it allocated, which
/// totals the sampled counts.
#[perf_event]
pub fn alloc_gc_atomic(_ctx: PerfEventContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(layout) = LAYOUT.get(0) {
        gc_cycles::on_atomic(layout, tgid, &VMS, &CYCLES);
    }
    0
}

/// The same from a uprobe on the atomic phase's store of the flipped white
/// (found in LuaJIT's code by `cli/src/lua/gc_flip.rs`): no debug register.
#[uprobe]
pub fn alloc_gc_flip(_ctx: ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(layout) = LAYOUT.get(0) {
        gc_cycles::on_atomic(layout, tgid, &VMS, &CYCLES);
    }
    0
}

#[inline(always)]
fn count_lua(pid_tgid: u64, regs: &pt_regs, config: &AllocConfig, kind: u32, bytes: u64) -> Option<u64> {
    let layout = LAYOUT.get(0)?;
    // The stack is walked into this CPU's scratch record: reserving ring
    // space for every event would fill the ring with discarded records
    // between two drains.
    let rec = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot; a BPF program is not preempted by another on the same CPU.
    let rec = unsafe { &mut *rec };
    capture::lua(&mut rec.stack, pid_tgid, layout, regs, &VMS);
    let key = (hash(&rec.stack) & !3) | u64::from(kind);
    let add = AllocTotals { count: config.scale, bytes: bytes * config.scale, events: 1 };
    match STACKS.get_ptr_mut(&key) {
        Some(t) => {
            // SAFETY: this CPU's value, as above.
            unsafe {
                (*t).count += add.count;
                (*t).bytes += add.bytes;
                (*t).events += 1;
            }
        }
        None => {
            if STACKS.insert(&key, &add, 0).is_err() {
                counters::add(&COUNTS, ALLOC_STACKS_FULL, 1);
            }
        }
    }
    // BPF_NOEXIST: only the first CPU to see a stack sends it.
    if SENT.insert(&key, &1, 1).is_ok() {
        rec.key = key;
        rec.kind = kind;
        rec._pad = 0;
        rec.scale = 0;
        rec.bytes = 0;
        if RECORDS.output(rec, 0).is_err() {
            // Sent never: let a later event of this stack try again.
            let _ = SENT.remove(&key);
            counters::add(&COUNTS, ALLOC_LOST, 1);
        }
    }
    Some(key)
}

#[inline(always)]
fn record_native(ctx: &ProbeContext, pid_tgid: u64, regs: &pt_regs, config: &AllocConfig, kind: u32, bytes: u64) -> Option<u64> {
    let layout = LAYOUT.get(0)?;
    let Some(mut entry) = RECORDS.reserve::<AllocRecordNative>(0) else {
        counters::add(&COUNTS, ALLOC_LOST, 1);
        return None;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: a reserved record we own until submit.
    unsafe {
        let cur_l = capture::lua(&mut (*rec).head.stack, pid_tgid, layout, regs, &VMS);
        capture::kernel_stack(ctx, &mut (*rec).head.stack, config.kernel != 0);
        capture::native(&mut (*rec).native, regs, layout, cur_l);
        (*rec).head.kind = kind;
        (*rec).head._pad = 0;
        (*rec).head.scale = config.scale;
        (*rec).head.bytes = bytes;
    }
    // Each native record is its own stack: a key of its own pairs it with its
    // address (taken last: a value kept across the captures' calls trips the verifier).
    // SAFETY: a helper without arguments.
    let key = if config.addresses != 0 { (unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() }) | 1 } else { 0 };
    // SAFETY: still our reserved record.
    unsafe { (*rec).head.key = key };
    entry.submit(NO_WAKEUP);
    Some(key)
}

/// The VM is collecting garbage (`LJ_VMST_GC`): a free here is a sweep.
#[inline(always)]
fn in_collector(pid_tgid: u64) -> bool {
    let Some(layout) = LAYOUT.get(0) else { return false };
    // SAFETY: copied out immediately.
    let Some(g) = (unsafe { VMS.get(&((pid_tgid >> 32) as u32)) }).copied() else { return false };
    ljprobe_probes::vm::read_i32(g + layout.g_vmstate as u64) == Some(!2)
}

/// A return address into `lj_tab_resize` just above the allocator's frame.
#[inline(always)]
fn in_resize(regs: &pt_regs, config: &AllocConfig) -> bool {
    if config.resize_hi == 0 {
        return false;
    }
    let mut words = [0u64; RESIZE_SCAN_WORDS];
    // SAFETY: the byte view covers exactly `words`.
    let bytes = unsafe { core::slice::from_raw_parts_mut(words.as_mut_ptr() as *mut u8, RESIZE_SCAN_WORDS * 8) };
    // SAFETY: bpf_probe_read_user fails instead of faulting.
    if unsafe { bpf_probe_read_user_buf(regs.rsp as *const u8, bytes) }.is_err() {
        return false;
    }
    for w in words {
        if w > config.resize_lo && w <= config.resize_hi {
            return true;
        }
    }
    false
}

/// FNV-1a over what names the stack: the process, the VM state, the walk's
/// flags, the place in a trace and every frame.
#[inline(always)]
fn hash(s: &CpuSample) -> u64 {
    const PRIME: u64 = 0x100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let head = [u64::from(s.tgid), s.vmstate as u32 as u64 | (u64::from(s.flags) << 32), s.trace_pc];
    for w in head {
        h = (h ^ w).wrapping_mul(PRIME);
    }
    let n = s.nframes as usize;
    for i in 0..MAX_LUA_FRAMES {
        if i >= n {
            break;
        }
        let f = &s.frames[i];
        h = (h ^ f.func).wrapping_mul(PRIME);
        h = (h ^ f.link).wrapping_mul(PRIME);
    }
    h
}

#[inline(always)]
fn log2(v: u64) -> u32 {
    let mut b = 0u32;
    let mut x = v;
    for _ in 0..ALLOC_HIST_BUCKETS {
        if x <= 1 {
            break;
        }
        x >>= 1;
        b += 1;
    }
    b.min(ALLOC_HIST_BUCKETS - 1)
}
