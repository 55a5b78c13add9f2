//! Records of `ljprobe jit` (`probes-ebpf/src/jit.rs`, `cli/src/tools/jit`):
//! what the trace compiler did, read from its own `jit_State` at the moments
//! it writes two of its fields.

/// Where one build keeps what the watchpoint programs read, in bytes from the
/// `jit_State` (whose place is `VmLayout::g2j`) unless said otherwise.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Deserialize), serde(deny_unknown_fields))]
pub struct JitLayout {
    /// `jit_State.state`: written at each step of the compiler's state
    /// machine; `state_err` is `LJ_TRACE_ERR`, written once per abort.
    pub j_state: u32,
    pub state_err: u32,
    /// `jit_State.parent`: the exit handler writes the exiting trace's number
    /// here right after the exit number (`exitno`).
    pub j_parent: u32,
    pub j_exitno: u32,
    /// `jit_State.L`, `.pc`, `.pt`, `.errinfo`.
    pub j_l: u32,
    pub j_pc: u32,
    pub j_pt: u32,
    pub j_errinfo: u32,
    /// The trace being recorded (`jit_State.cur`, a `GCtrace`): its
    /// `traceno` (u16), `startpt` and `startpc`.
    pub cur_traceno: u32,
    pub cur_startpt: u32,
    pub cur_startpc: u32,
    /// `lua_State.top`: `lj_trace_err` leaves the error number below it.
    pub l_top: u32,
    /// `global_State.vmstate` while the exit handler runs: `~LJ_VMST_EXIT`.
    pub vmstate_exit: i32,
    /// `sizeof(TValue)`: one frame slot (two per frame in GC64).
    pub tvalue: u32,
}

/// One trace abort, as `trace_abort` sees it (`lj_trace.c`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JitAbort {
    pub tgid: u32,
    /// The aborted trace's number (0: aborted before it got one).
    pub traceno: u32,
    /// A side trace's parent trace and exit (0, 0 for a root trace).
    pub parent: u32,
    pub exitno: u32,
    pub ns: u64,
    /// The error object `lj_trace_err` pushed (a `TraceError` number) and
    /// `J->errinfo` (its argument), as raw TValue bits.
    pub error: u64,
    pub errinfo: u64,
    /// Where the trace started.
    pub startpt: u64,
    pub startpc: u64,
    /// Where the recorder was: the prototype and instruction (pt is 0 when the
    /// recorder was not in a Lua function).
    pub pt: u64,
    pub pc: u64,
    /// The innermost frame's function and link, for a recorder outside Lua.
    pub frame_func: u64,
    pub frame_link: u64,
}

/// Key of the exit counts: process, trace number and exit number.
#[inline(always)]
pub fn exit_key(tgid: u32, traceno: u32, exitno: u32) -> u64 {
    ((tgid as u64) << 32) | (((traceno & 0xffff) as u64) << 16) | (exitno & 0xffff) as u64
}

/// A process's exits since its last request ended, and in which watching
/// period (`JitGen`) that request ended: a request counts only if it began
/// (the previous one ended) and ended in the same period, all of it watched.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReqExits {
    pub gen: u64,
    pub exits: u64,
}

/// Slots of `STATE_WRITES` (indexed by the state's value, masked).
pub const JIT_STATE_SLOTS: u32 = 32;

/// Slots of the exits-per-request histogram: slot 0 counts requests without
/// an exit, slot k those with 2^(k-1) .. 2^k - 1.
pub const JIT_REQ_SLOTS: u32 = 34;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `repr(C)` integers with explicit padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::JitLayout {}
    unsafe impl aya::Pod for super::JitAbort {}
    unsafe impl aya::Pod for super::ReqExits {}
}
