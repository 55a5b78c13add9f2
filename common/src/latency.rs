//! Records of `ljprobe latency` (`probes-ebpf/src/latency.rs`,
//! `cli/src/tools/latency`): per nginx request, where its time went.

use crate::{CpuSample, SchedSwitchFormat};

/// Phases a request's time is charged to, in nginx's order. "read" runs from
/// the request's creation until its phases start (reading the header);
/// upstream from `ngx_http_upstream_init` of the request itself (a
/// `proxy_pass` location) until it ends. Header filters run inside whichever
/// phase sends the header; log handlers run after the request's end, as
/// nginx's own `$request_time` is taken there too.
pub const LAT_PHASES: usize = 5;
pub const PHASE_READ: u32 = 0;
pub const PHASE_REWRITE: u32 = 1;
pub const PHASE_ACCESS: u32 = 2;
pub const PHASE_CONTENT: u32 = 3;
pub const PHASE_UPSTREAM: u32 = 4;

/// Kinds of time. While the worker runs the request: on the CPU, blocked in
/// the kernel (asleep in a system call), or preempted (runnable, waiting for a
/// CPU). While it does not: waiting on an upstream or subrequest it started,
/// waiting on anything else (a timer such as `ngx.sleep`, a cosocket, the
/// client), or waiting behind other requests: ready to run while the worker
/// was busy with others (see `KIND_BEHIND`).
pub const LAT_KINDS: usize = 6;
pub const KIND_CPU: u32 = 0;
pub const KIND_BLOCKED: u32 = 1;
pub const KIND_PREEMPTED: u32 = 2;
pub const KIND_UPSTREAM: u32 = 3;
pub const KIND_WAIT: u32 = 4;
/// A request that runs again in an event-loop iteration became ready while
/// the `epoll_wait` that began the iteration slept, if it slept, else after
/// the previous `epoll_wait` returned (else that iteration would have run
/// it). The time from then, or from when it last ran if later, is counted as
/// behind: exact for a wake-up, else an upper bound off by at most the part
/// of one iteration in which it was not yet ready.
pub const KIND_BEHIND: u32 = 5;

/// Slots of (phase, kind) sums, `phase * LAT_KINDS + kind`: 30 used, rounded
/// up to a power of two so that the kernel program can mask an index into range.
pub const LAT_SLOTS: usize = 32;
const _: () = assert!(LAT_PHASES * LAT_KINDS <= LAT_SLOTS);

/// Where nginx keeps what the probe reads, in bytes (a layout of Debian's
/// build, checked against the live worker by user space before use).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NginxLayout {
    pub r_connection: u32,
    pub r_loc_conf: u32,
    pub r_upstream_states: u32,
    pub r_main: u32,
    pub r_uri: u32,
    pub r_method_name: u32,
    pub r_status: u32,
    pub r_err_status: u32,
    pub r_start_sec: u32,
    pub r_start_msec: u32,
    /// `ngx_http_core_module.ctx_index` as the target has it: the core
    /// module's slot in `r->loc_conf`, whose location conf starts with its name.
    pub core_ctx_index: u32,
    /// `sizeof(ngx_http_upstream_state_t)` and the fields read from it.
    pub us_size: u32,
    pub us_connect_time: u32,
    pub us_header_time: u32,
    pub us_response_time: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencyConfig {
    pub nginx: NginxLayout,
    pub sched: SchedSwitchFormat,
    /// The sampling period: an on-CPU sample's weight.
    pub sample_ns: u64,
    /// `CLOCK_REALTIME - CLOCK_MONOTONIC`: turns nginx's own start time of a
    /// request (wall clock) into the probe's clock.
    pub realtime_offset_ns: u64,
    /// Blocks shorter than this send no stack.
    pub stack_after_ns: u64,
    /// Non-zero (`--sample`): follow only requests whose creation was seen,
    /// the others run untracked.
    pub sampled: u64,
}

/// `LatReq::flags`: an upstream or subrequest was started since the request last ran.
pub const REQ_UPSTREAM: u32 = 1;
/// Its creation was not seen: its start is nginx's own (ms, cached clock).
pub const REQ_NGINX_START: u32 = 2;

/// Per request in flight, kept by the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LatReq {
    pub start_ns: u64,
    /// When it stopped running (another request's turn, or the worker went
    /// back to `epoll_wait`); 0 while it runs.
    pub left_ns: u64,
    pub phase: u32,
    pub flags: u32,
    pub ns: [u64; LAT_SLOTS],
}

/// Per worker thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LatThread {
    /// The request it runs (`r->main`), 0 if none.
    pub cur: u64,
    /// Since when the current piece of its time is not yet charged.
    pub since_ns: u64,
    /// 0 on the CPU, else off it: `KIND_BLOCKED` or `KIND_PREEMPTED`.
    pub off: u32,
    pub _pad: u32,
    /// When its last `epoll_wait` returned.
    pub iter_ns: u64,
    /// No request that runs in this iteration was ready before this (see
    /// `KIND_BEHIND`): when `epoll_wait` returned if the thread slept in it
    /// (what it returned came while it slept), else when the previous one
    /// returned (what was ready then, it returned then).
    pub ready_floor_ns: u64,
    /// Inside `epoll_wait`, and whether it slept there.
    pub in_wait: u32,
    pub slept: u32,
}

/// `LatHead::kind`
pub const LAT_END: u32 = 1;
pub const LAT_ON_CPU: u32 = 2;
pub const LAT_OFF_CPU: u32 = 3;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LatHead {
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    /// Stacks: the request's phase when taken.
    pub phase: u32,
    /// The request (`ngx_http_request_t *` of the main request).
    pub r: u64,
}

pub const LAT_URI: usize = 128;
pub const LAT_METHOD: usize = 16;
pub const LAT_LOCATION: usize = 64;
/// `ngx_msec_t` -1: nginx's "not measured".
pub const LAT_NO_MS: u64 = u64::MAX;

/// A request ended (`ngx_http_free_request`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LatEnd {
    pub head: LatHead,
    pub start_ns: u64,
    pub end_ns: u64,
    pub flags: u32,
    pub status: u32,
    pub uri_len: u32,
    pub method_len: u32,
    pub location_len: u32,
    /// Upstream tries the request made itself.
    pub upstreams: u32,
    /// The last try's, as nginx measured them (ms, `LAT_NO_MS` if not).
    pub connect_ms: u64,
    pub header_ms: u64,
    pub response_ms: u64,
    pub ns: [u64; LAT_SLOTS],
    pub uri: [u8; LAT_URI],
    pub method: [u8; LAT_METHOD],
    pub location: [u8; LAT_LOCATION],
}

/// A stack of a running request: sampled on the CPU (weight: the period) or
/// taken where it blocked (weight: the time away).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LatStack {
    pub head: LatHead,
    pub ns: u64,
    pub syscall: i64,
    pub lua: CpuSample,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `repr(C)` integers with explicit padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::LatencyConfig {}
    unsafe impl aya::Pod for super::LatReq {}
    unsafe impl aya::Pod for super::LatThread {}
}
