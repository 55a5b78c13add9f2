//! `ljprobe latency`: per nginx request, its total time and where it went, by
//! phase and by kind (on the CPU, blocked, preempted, waiting on an upstream,
//! waiting on anything else, waiting behind other requests).
//!
//! A worker runs one request at a time, between calls to `epoll_wait`. Uprobes
//! on nginx's exported functions say which request it runs from that moment
//! (`ngx_http_core_run_phases`, `ngx_http_lua_run_thread`, ...) and which phase
//! it is in; `sched_switch` says when it is off the CPU; `epoll_wait` when it
//! runs none. Each event charges the time since the previous one to the
//! request that was running, or, when a request runs again, the time it was
//! not running to waiting. `ngx_http_free_request` sends the sums.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, bpf_probe_read_user_buf},
    macros::{map, perf_event, tracepoint, uprobe},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{PerfEventContext, ProbeContext, TracePointContext},
};
use ljprobe_common::{
    latency::{
        LatEnd, LatHead, LatReq, LatStack, LatThread, LatencyConfig, KIND_BEHIND, KIND_CPU, KIND_PREEMPTED,
        KIND_UPSTREAM, KIND_WAIT, LAT_END, LAT_KINDS, LAT_NO_MS, LAT_OFF_CPU, LAT_ON_CPU, LAT_SLOTS, PHASE_ACCESS,
        PHASE_CONTENT, PHASE_READ, PHASE_REWRITE, PHASE_UPSTREAM, REQ_NGINX_START, REQ_UPSTREAM,
    },
    VmLayout,
};
use ljprobe_probes::{capture, counters, regs, sched::Switch, NO_WAKEUP};

#[map]
static TARGETS: HashMap<u32, u8> = HashMap::with_max_entries(256, 0);

#[map]
static LAYOUT: Array<VmLayout> = Array::with_max_entries(1, 0);

#[map]
static CONFIG: Array<LatencyConfig> = Array::with_max_entries(1, 0);

/// The last checked `global_State` per process (see `capture::lua`).
#[map]
static VMS: HashMap<u32, u64> = HashMap::with_max_entries(256, 0);

#[map]
static THREADS: HashMap<u32, LatThread> = HashMap::with_max_entries(1024, 0);

/// Main requests in flight, from their first event to `ngx_http_free_request`.
/// Not an LRU map: that one evicted live entries long before it was full (a
/// tenth of the requests of a mixed load lost their phases mid-way).
#[map]
static REQS: HashMap<u64, LatReq> = HashMap::with_max_entries(65536, 0);

/// When each connection's current request was created, until its first event
/// (not LRU either: see `REQS`; a connection's next request overwrites it).
#[map]
static CREATED: HashMap<u64, u64> = HashMap::with_max_entries(65536, 0);

/// A new request's state is built here (the BPF stack holds 512 bytes).
#[map]
static SCRATCH: PerCpuArray<LatReq> = PerCpuArray::with_max_entries(1, 0);

/// Per thread blocked while running a request: where, sent when it is back.
#[map]
static PENDING: HashMap<u32, LatStack> = HashMap::with_max_entries(1024, 0);

#[map]
static STACK_SCRATCH: PerCpuArray<LatStack> = PerCpuArray::with_max_entries(1, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(16 << 20, 0);

/// Records dropped (ring buffer full).
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn read_u64(addr: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_user fails instead of faulting.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

#[inline(always)]
fn target(pid_tgid: u64) -> bool {
    // SAFETY: presence check only.
    unsafe { TARGETS.get(&((pid_tgid >> 32) as u32)) }.is_some()
}

/// Adds `ns` to slot (phase, kind) of a request.
#[inline(always)]
fn charge(req: *mut LatReq, phase: u32, kind: u32, ns: u64) {
    // Masked, not compared: the verifier then knows the slot is in the array.
    let i = ((phase as usize) * LAT_KINDS + kind as usize) & (LAT_SLOTS - 1);
    if ns > 0 {
        // SAFETY: `i` < LAT_SLOTS by the mask; a map value we hold a pointer
        // to; only this worker's thread touches a request (one request runs
        // on one worker).
        unsafe { *(*req).ns.get_unchecked_mut(i) += ns };
    }
}

/// Charges the running request for the time since the thread's last event.
#[inline(always)]
fn settle(t: *mut LatThread, now: u64) {
    // SAFETY: this thread's entry; only its own events touch it.
    unsafe {
        let since = (*t).since_ns;
        (*t).since_ns = now;
        let cur = (*t).cur;
        if cur == 0 || since == 0 {
            return;
        }
        let Some(req) = REQS.get_ptr_mut(&cur) else { return };
        let kind = if (*t).off != 0 { (*t).off } else { KIND_CPU };
        charge(req, (*req).phase, kind, now.saturating_sub(since));
    }
}

#[inline(always)]
fn thread(tid: u32) -> Option<*mut LatThread> {
    if let Some(t) = THREADS.get_ptr_mut(&tid) {
        return Some(t);
    }
    // A blocked stack left from before the thread's state was cleared
    // (`latency --sample` clears it between windows) is not this thread's now.
    let _ = PENDING.remove(&tid);
    let _ = THREADS.insert(&tid, &LatThread::default(), 0);
    THREADS.get_ptr_mut(&tid)
}

/// The state of request `r`, made on its first event: its start is when its
/// connection created it, if seen, else nginx's own start time. The time
/// from then to this first event is its reading of the header: on the CPU
/// since the current loop iteration began (`iter_ns`), waiting for the
/// client before that (a header that came in pieces).
#[inline(always)]
fn request(config: &LatencyConfig, r: u64, now: u64, iter_ns: u64) -> Option<*mut LatReq> {
    if let Some(req) = REQS.get_ptr_mut(&r) {
        return Some(req);
    }
    let n = &config.nginx;
    let fresh = SCRATCH.get_ptr_mut(0)?;
    let c = read_u64(r + n.r_connection as u64).unwrap_or(0);
    // SAFETY: this CPU's scratch entry; nothing else runs on it meanwhile.
    unsafe {
        (*fresh).left_ns = 0;
        (*fresh).phase = PHASE_READ;
        (*fresh).flags = 0;
        (*fresh).ns = [0; LAT_SLOTS];
        match CREATED.get(&c).copied() {
            Some(at) => {
                (*fresh).start_ns = at;
                let _ = CREATED.remove(&c);
            }
            // Sampled: only requests created while the create probe was open.
            None if config.sampled != 0 => return None,
            None => {
                let sec = read_u64(r + n.r_start_sec as u64).unwrap_or(0);
                let msec = read_u64(r + n.r_start_msec as u64).unwrap_or(0);
                let wall = sec * 1_000_000_000 + msec * 1_000_000;
                (*fresh).start_ns = wall.saturating_sub(config.realtime_offset_ns).min(now);
                (*fresh).flags = REQ_NGINX_START;
            }
        }
        let start = (*fresh).start_ns;
        let running_from = if iter_ns > start && iter_ns < now { iter_ns } else { start };
        let (waited, ran) = (running_from - start, now.saturating_sub(running_from));
        let i = |kind: u32| PHASE_READ as usize * LAT_KINDS + kind as usize;
        (*fresh).ns[i(KIND_WAIT)] = waited;
        (*fresh).ns[i(KIND_CPU)] = ran;
        let _ = REQS.insert(&r, &*fresh, 0);
    }
    REQS.get_ptr_mut(&r)
}

/// The main request of `r` (a subrequest's time is its main request's).
#[inline(always)]
fn main_of(config: &LatencyConfig, r: u64) -> u64 {
    match read_u64(r + config.nginx.r_main as u64) {
        Some(m) if m != 0 => m,
        _ => r,
    }
}

/// The thread runs request `r` from now. Returns its state.
#[inline(always)]
fn runs(config: &LatencyConfig, tid: u32, r: u64, now: u64) -> Option<*mut LatReq> {
    let t = thread(tid)?;
    settle(t, now);
    // SAFETY: this thread's entry and requests; only its own events touch them.
    unsafe {
        if (*t).cur == r {
            return REQS.get_ptr_mut(&r);
        }
        left(t, now);
        let req = request(config, r, now, (*t).iter_ns)?;
        let left_ns = (*req).left_ns;
        if left_ns != 0 {
            let waited = now.saturating_sub(left_ns);
            // Ready no earlier than this (see KIND_BEHIND).
            let ready = if (*t).ready_floor_ns > left_ns { (*t).ready_floor_ns } else { left_ns };
            let behind = now.saturating_sub(ready).min(waited);
            let kind = if (*req).flags & REQ_UPSTREAM != 0 { KIND_UPSTREAM } else { KIND_WAIT };
            charge(req, (*req).phase, kind, waited - behind);
            charge(req, (*req).phase, KIND_BEHIND, behind);
            (*req).flags &= !REQ_UPSTREAM;
            (*req).left_ns = 0;
        }
        (*t).cur = r;
        (*t).since_ns = now;
        Some(req)
    }
}

/// The phase request `r` is in.
#[inline(always)]
fn phase_of(r: u64) -> u32 {
    // SAFETY: copied out immediately.
    unsafe { REQS.get(&r) }.map_or(PHASE_READ, |q| q.phase)
}

/// The running request, if any, stops running (already settled).
#[inline(always)]
fn left(t: *mut LatThread, now: u64) {
    // SAFETY: as in `runs`.
    unsafe {
        let cur = (*t).cur;
        if cur != 0 {
            if let Some(req) = REQS.get_ptr_mut(&cur) {
                (*req).left_ns = now;
            }
        }
        (*t).cur = 0;
    }
}

/// An event of request `r` on this thread, and the phase it enters if any.
/// Returns the state of its main request.
#[inline(always)]
fn event(r: u64, phase: Option<u32>) -> Option<*mut LatReq> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if r == 0 || !target(pid_tgid) {
        return None;
    }
    let config = CONFIG.get(0)?;
    let now = unsafe { bpf_ktime_get_ns() };
    let main = main_of(config, r);
    let req = runs(config, pid_tgid as u32, main, now)?;
    // A subrequest's phases are not its main request's; phases only go forward
    // (run_phases says "rewrite" when the phases go on after a wait in access).
    if let Some(p) = phase {
        // SAFETY: as in `runs`.
        unsafe {
            if main == r && p > (*req).phase {
                (*req).phase = p;
            }
        }
    }
    Some(req)
}

/// `ngx_http_create_request(c)`.
#[uprobe]
pub fn lat_create(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !target(pid_tgid) {
        return 0;
    }
    let Some(c) = ctx.arg::<u64>(0) else { return 0 };
    let now = unsafe { bpf_ktime_get_ns() };
    let _ = CREATED.insert(&c, &now, 0);
    0
}

/// `ngx_http_core_run_phases(r)`: the request's phases start (its header is
/// read: rewrite begins) or go on (after a wait in rewrite or access).
#[uprobe]
pub fn lat_runs(ctx: ProbeContext) -> u32 {
    let _ = event(ctx.arg::<u64>(0).unwrap_or(0), Some(PHASE_REWRITE));
    0
}

/// `ngx_http_lua_run_thread(L, r, ctx, nrets)`: Lua code of request `r`
/// starts or resumes (after `ngx.sleep`, a cosocket, a subrequest).
#[uprobe]
pub fn lat_lua_runs(ctx: ProbeContext) -> u32 {
    let _ = event(ctx.arg::<u64>(1).unwrap_or(0), None);
    0
}

/// `ngx_http_core_post_rewrite_phase`: preaccess and access begin.
#[uprobe]
pub fn lat_access(ctx: ProbeContext) -> u32 {
    let _ = event(ctx.arg::<u64>(0).unwrap_or(0), Some(PHASE_ACCESS));
    0
}

/// `ngx_http_core_content_phase`.
#[uprobe]
pub fn lat_content(ctx: ProbeContext) -> u32 {
    let _ = event(ctx.arg::<u64>(0).unwrap_or(0), Some(PHASE_CONTENT));
    0
}

/// `ngx_http_upstream_init(r)`: the request (a `proxy_pass` location) or a
/// subrequest of it goes to an upstream; its waits from here are for it.
#[uprobe]
pub fn lat_upstream(ctx: ProbeContext) -> u32 {
    if let Some(req) = event(ctx.arg::<u64>(0).unwrap_or(0), Some(PHASE_UPSTREAM)) {
        // SAFETY: as in `runs`.
        unsafe { (*req).flags |= REQ_UPSTREAM };
    }
    0
}

/// `ngx_http_free_request(r, rc)`: the request ends (its log handlers run
/// next, inside this call, where nginx takes `$request_time`).
#[uprobe]
pub fn lat_free(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let r = ctx.arg::<u64>(0).unwrap_or(0);
    if r == 0 || !target(pid_tgid) {
        return 0;
    }
    let Some(config) = CONFIG.get(0) else { return 0 };
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(req) = runs(config, pid_tgid as u32, r, now) else { return 0 };
    if let Some(t) = THREADS.get_ptr_mut(&(pid_tgid as u32)) {
        left(t, now);
    }
    let Some(mut entry) = EVENTS.reserve::<LatEnd>(0) else {
        counters::add(&LOST, 0, 1);
        let _ = REQS.remove(&r);
        return 0;
    };
    // SAFETY: a reserved record we own until submit; `req` stays valid until removed below.
    unsafe {
        let e = &mut *entry.as_mut_ptr();
        e.head = LatHead { kind: LAT_END, tgid: (pid_tgid >> 32) as u32, tid: pid_tgid as u32, phase: (*req).phase, r };
        e.start_ns = (*req).start_ns;
        e.end_ns = now;
        e.flags = (*req).flags;
        e.ns = (*req).ns;
        describe(e, &config.nginx, r);
    }
    entry.submit(NO_WAKEUP);
    let _ = REQS.remove(&r);
    0
}

/// What the request was: method, URI, location, status, upstream timings.
#[inline(always)]
fn describe(e: &mut LatEnd, n: &ljprobe_common::latency::NginxLayout, r: u64) {
    e.status = read_u64(r + n.r_err_status as u64).filter(|&s| s as u32 != 0).unwrap_or_else(|| read_u64(r + n.r_status as u64).unwrap_or(0)) as u32;
    e.uri_len = read_str(r + n.r_uri as u64, &mut e.uri);
    e.method_len = read_str(r + n.r_method_name as u64, &mut e.method);
    e.location_len = 0;
    if let Some(loc_conf) = read_u64(r + n.r_loc_conf as u64) {
        if let Some(core) = read_u64(loc_conf + 8 * n.core_ctx_index as u64) {
            e.location_len = read_str(core, &mut e.location);
        }
    }
    e.upstreams = 0;
    e.connect_ms = LAT_NO_MS;
    e.header_ms = LAT_NO_MS;
    e.response_ms = LAT_NO_MS;
    // ngx_array_t { elts, nelts, ... } of ngx_http_upstream_state_t.
    let Some(states) = read_u64(r + n.r_upstream_states as u64).filter(|&a| a != 0) else { return };
    let (Some(elts), Some(nelts)) = (read_u64(states), read_u64(states + 8)) else { return };
    if nelts == 0 || nelts > 64 {
        return;
    }
    e.upstreams = nelts as u32;
    let last = elts + (nelts - 1) * n.us_size as u64;
    e.connect_ms = read_u64(last + n.us_connect_time as u64).unwrap_or(LAT_NO_MS);
    e.header_ms = read_u64(last + n.us_header_time as u64).unwrap_or(LAT_NO_MS);
    e.response_ms = read_u64(last + n.us_response_time as u64).unwrap_or(LAT_NO_MS);
}

/// An `ngx_str_t` at `at` into `out` (cut to its size); returns the length kept.
#[inline(always)]
fn read_str<const N: usize>(at: u64, out: &mut [u8; N]) -> u32 {
    let (Some(len), Some(data)) = (read_u64(at), read_u64(at + 8)) else { return 0 };
    let len = if len as usize > N { N } else { len as usize };
    if len == 0 {
        return 0;
    }
    // A fixed-size read: the verifier wants a constant length; the tail
    // past `len` may hold the bytes after the string, which user space ignores.
    // SAFETY: bpf_probe_read_user fails instead of faulting.
    if unsafe { bpf_probe_read_user_buf(data as *const u8, out) }.is_ok() {
        return len as u32;
    }
    // The string ends near the end of a mapping: read what fits, halving.
    let mut n = N / 2;
    while n >= 8 {
        if n <= N && unsafe { bpf_probe_read_user_buf(data as *const u8, &mut out[..n]) }.is_ok() {
            return (if len < n { len } else { n }) as u32;
        }
        n /= 2;
    }
    0
}

/// The worker goes back to its event loop: no request runs.
#[tracepoint]
pub fn lat_wait_enter(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !target(pid_tgid) {
        return 0;
    }
    let Some(t) = THREADS.get_ptr_mut(&(pid_tgid as u32)) else { return 0 };
    let now = unsafe { bpf_ktime_get_ns() };
    settle(t, now);
    left(t, now);
    // SAFETY: this thread's entry.
    unsafe {
        (*t).in_wait = 1;
        (*t).slept = 0;
    }
    0
}

/// `epoll_wait` returns: an event-loop iteration begins.
#[tracepoint]
pub fn lat_wait_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !target(pid_tgid) {
        return 0;
    }
    let Some(t) = thread(pid_tgid as u32) else { return 0 };
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: this thread's entry.
    unsafe {
        (*t).ready_floor_ns = if (*t).slept != 0 { now } else { (*t).iter_ns };
        (*t).iter_ns = now;
        (*t).since_ns = now;
        (*t).in_wait = 0;
        (*t).slept = 0;
    }
    0
}

#[tracepoint]
pub fn lat_switch(ctx: TracePointContext) -> u32 {
    let Some(config) = CONFIG.get(0) else { return 0 };
    let Some(switch) = Switch::read(&ctx, &config.sched) else { return 0 };
    let now = unsafe { bpf_ktime_get_ns() };
    switched_out(&switch, now);
    switched_in(switch.next_tid, now);
    0
}

#[inline(always)]
fn switched_out(switch: &Switch, now: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    if !target(pid_tgid) {
        return;
    }
    if switch.prev_exiting() {
        let _ = THREADS.remove(&tid);
        let _ = PENDING.remove(&tid);
        return;
    }
    let Some(t) = THREADS.get_ptr_mut(&tid) else { return };
    settle(t, now);
    let runnable = switch.prev_runnable();
    // SAFETY: this thread's entry.
    let cur = unsafe {
        (*t).off = if runnable { KIND_PREEMPTED } else { ljprobe_common::latency::KIND_BLOCKED };
        if (*t).in_wait != 0 && !runnable {
            (*t).slept = 1;
        }
        (*t).cur
    };
    if cur == 0 || runnable {
        return;
    }
    let (Some(regs), Some(layout), Some(rec)) = (regs::saved_user_regs(), LAYOUT.get(0), STACK_SCRATCH.get_ptr_mut(0))
    else {
        return;
    };
    // SAFETY: this CPU's scratch record; nothing else runs on it meanwhile.
    unsafe {
        (*rec).head = LatHead { kind: LAT_OFF_CPU, tgid: (pid_tgid >> 32) as u32, tid, phase: phase_of(cur), r: cur };
        (*rec).ns = now;
        (*rec).syscall = regs::syscall(&regs);
        capture::lua(&mut (*rec).lua, pid_tgid, layout, &regs, &VMS);
        (*rec).lua.nkernel = 0;
        let _ = PENDING.insert(&tid, &*rec, 0);
    }
}

#[inline(always)]
fn switched_in(tid: u32, now: u64) {
    // Every switch on the machine comes here: one lookup for other threads.
    let Some(t) = THREADS.get_ptr_mut(&tid) else { return };
    // SAFETY: this thread's entry.
    unsafe {
        if (*t).off == 0 {
            return;
        }
        settle(t, now);
        (*t).off = 0;
    }
    let Some(rec) = PENDING.get_ptr_mut(&tid) else { return };
    let Some(config) = CONFIG.get(0) else { return };
    // SAFETY: valid until removed below; only this thread's switches touch it.
    unsafe {
        let away = now.saturating_sub((*rec).ns);
        if away >= config.stack_after_ns {
            (*rec).ns = away;
            if EVENTS.output(&*rec, NO_WAKEUP).is_err() {
                counters::add(&LOST, 0, 1);
            }
        }
    }
    let _ = PENDING.remove(&tid);
}

/// On-CPU samples of a worker while it runs a request.
#[perf_event]
pub fn lat_sample(ctx: PerfEventContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !target(pid_tgid) {
        return 0;
    }
    // SAFETY: copied out immediately.
    let Some(cur) = (unsafe { THREADS.get(&(pid_tgid as u32)) }).map(|t| t.cur).filter(|&c| c != 0) else {
        return 0;
    };
    let (Some(config), Some(regs), Some(layout)) = (CONFIG.get(0), regs::user_regs(&ctx), LAYOUT.get(0)) else {
        return 0;
    };
    let Some(mut entry) = EVENTS.reserve::<LatStack>(0) else {
        counters::add(&LOST, 0, 1);
        return 0;
    };
    // SAFETY: a reserved record we own until submit.
    unsafe {
        let rec = &mut *entry.as_mut_ptr();
        rec.head = LatHead { kind: LAT_ON_CPU, tgid: (pid_tgid >> 32) as u32, tid: pid_tgid as u32, phase: phase_of(cur), r: cur };
        rec.ns = config.sample_ns;
        rec.syscall = -1;
        capture::lua(&mut rec.lua, pid_tgid, layout, &regs, &VMS);
        rec.lua.nkernel = 0;
    }
    entry.submit(NO_WAKEUP);
    0
}
