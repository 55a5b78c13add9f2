//! Records shared by the kernel programs (`probes-ebpf`) and user space (`cli`).
//! Every type is `#[repr(C)]`, fixed-size and padding-explicit, because both sides
//! read the same bytes out of BPF maps.
#![no_std]

pub mod jit;
pub mod latency;

/// Where LuaJIT keeps what the probes read, in bytes. User space fills it from the
/// target's DWARF or from a built-in layout; the kernel only follows it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Deserialize), serde(default, deny_unknown_fields))]
pub struct VmLayout {
    /// `offsetof(GG_State, dispatch) - offsetof(GG_State, g)`: the interpreter keeps
    /// the dispatch table in a register, so `G = DISPATCH - g2disp`.
    pub g2disp: u32,
    /// `offsetof(GG_State, g)`: the main thread's `lua_State` sits this far before G.
    pub gg_g: u32,
    pub g_vmstate: u32,
    pub g_cur_l: u32,
    /// `global_State.jit_base`: the frame base of the trace that is running.
    pub g_jit_base: u32,
    pub l_glref: u32,
    /// `lua_State.base`: synced by the VM whenever it calls out of the interpreter.
    pub l_base: u32,
    pub l_stack: u32,
    pub l_maxstack: u32,
    /// `lua_State.cframe`: non-NULL while the coroutine is running (inside a C call boundary).
    pub l_cframe: u32,
    /// From G to the `jit_State` (`GG_State.J - GG_State.g`), its `trace` array,
    /// and a trace's machine code (`GCtrace.mcode`, `szmcode`): where a trace's
    /// code lies, so stacks taken in different places of one trace differ.
    pub g2j: u32,
    pub j_trace: u32,
    pub trace_mcode: u32,
    pub trace_szmcode: u32,
    /// `global_State.gc`: `total` and `estimate` (u64 each in GC64), the
    /// collector's own accounting, and `currentwhite` (u8), which only its
    /// atomic phase writes (`probes-ebpf/src/gc_cycles.rs`).
    pub g_gc_total: u32,
    pub g_gc_estimate: u32,
    pub g_gc_currentwhite: u32,
    /// `sizeof(GCRef)`: 8 in GC64 builds, 4 otherwise (references then
    /// point below 4 GB). The probes read GC64 VMs only, for now.
    pub ref_size: u32,
}

/// Per process, what the collector's accounting said at each atomic phase
/// (`probes-ebpf/src/gc_cycles.rs`): cycles, and the bytes allocated before
/// each (`gc.total - gc.estimate` then), added up.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcCycles {
    pub cycles: u64,
    pub allocated: u64,
}

/// How a probe found a VM's `global_State`.
pub const VM_SOURCE_DISPATCH_REG: u32 = 1;
pub const VM_SOURCE_API_ARG: u32 = 2;

/// A `global_State` the kernel found in a target process and checked against the
/// main thread's back link (`mainthread->glref == G`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmFound {
    pub g: u64,
    pub cur_l: u64,
    /// `global_State.vmstate` when found: a trace number (>= 0) or `!LJ_VMST_*`.
    pub vmstate: i32,
    pub source: u32,
    pub tid: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `repr(C)` integers with explicit padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::VmLayout {}
    unsafe impl aya::Pod for super::VmFound {}
    unsafe impl aya::Pod for super::LuaFrameRaw {}
    unsafe impl aya::Pod for super::CpuSample {}
    unsafe impl aya::Pod for super::CpuConfig {}
    unsafe impl aya::Pod for super::OffcpuConfig {}
    unsafe impl aya::Pod for super::BlockedTotal {}
    unsafe impl aya::Pod for super::LoopConfig {}
    unsafe impl aya::Pod for super::OffcpuSample {}
    unsafe impl aya::Pod for super::OffcpuSampleNative {}
    unsafe impl aya::Pod for super::AllocConfig {}
    unsafe impl aya::Pod for super::AllocTotals {}
    unsafe impl aya::Pod for super::GcCycles {}
}

/// Frames the kernel walks per sample; deeper stacks are cut and flagged.
pub const MAX_LUA_FRAMES: usize = 128;

/// One Lua frame as found on the VM stack: the function (`GCfunc *`) and the raw
/// frame link (`ftsz`: the return PC into the caller for a Lua frame, else a delta
/// and a frame type). User space turns these into names.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LuaFrameRaw {
    pub func: u64,
    pub link: u64,
}

/// The stack walk reached MAX_LUA_FRAMES before the bottom of the coroutine.
pub const STACK_TRUNCATED: u32 = 1;
/// No checked VM for this process yet: nothing Lua-level to say.
pub const STACK_NO_VM: u32 = 2;
/// The sample ran outside Lua (no coroutine running): e.g. nginx's own C code.
pub const STACK_NOT_IN_LUA: u32 = 4;
/// A link or read failed mid-walk: the frames before it are good, the rest unknown.
pub const STACK_BROKEN: u32 = 8;

/// Kernel frames kept per sample with `--kernel`.
pub const MAX_KERNEL_FRAMES: usize = 32;

/// Candidate addresses kept per stack taken inside a JIT trace.
pub const TRACE_ADDRS: usize = 64;

/// One stack of a target thread, Lua-level: what every stack-recording program
/// takes (a `cpu-clock` sample, a switch-out, ...).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CpuSample {
    pub tgid: u32,
    pub tid: u32,
    pub vmstate: i32,
    pub flags: u32,
    pub nframes: u32,
    /// Valid entries of `kernel` (0 unless `CpuConfig::kernel`).
    pub nkernel: u32,
    /// The checked `global_State`, 0 if none.
    pub g: u64,
    /// Inside a trace: the first of `trace_addrs` that lies in the running
    /// trace's machine code (where it runs, or returns to from a call), else 0.
    pub trace_pc: u64,
    /// Valid entries of `trace_addrs`: non-zero only inside a JIT trace.
    pub ntrace_addrs: u32,
    pub _pad: u32,
    /// In the interpreter: its PC register (rbx on x64), which points just
    /// past the bytecode instruction being executed, so user space can say
    /// which line of the innermost frame runs; 0 elsewhere. Inside C code the
    /// interpreter called, the register may hold anything: user space accepts
    /// it only inside the innermost frame's bytecode.
    pub pc: u64,
    /// Inside a trace: the user instruction pointer, then the words at the top
    /// of the user stack. The first that lies in the trace's machine code tells
    /// user space which snapshot applies, and so which inlined Lua functions
    /// (which have no frames of their own) were running.
    pub trace_addrs: [u64; TRACE_ADDRS],
    /// Innermost first.
    pub frames: [LuaFrameRaw; MAX_LUA_FRAMES],
    /// Kernel return addresses, innermost first.
    pub kernel: [u64; MAX_KERNEL_FRAMES],
}

/// Bytes of user stack copied per sample for native unwinding (perf's default
/// for `--call-graph dwarf` is 8 KiB too).
pub const USER_STACK_BYTES: usize = 8192;

/// Registers and the top of the user stack at a sample: enough for user space to
/// unwind with CFI, since neither nginx nor LuaJIT keeps frame pointers.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NativeStack {
    pub rip: u64,
    pub rsp: u64,
    pub rbp: u64,
    /// The running coroutine's `L->cframe` (flag bits cleared), 0 if none: the
    /// interpreter's stack frame, from which unwinding resumes past JIT trace
    /// code, which has no CFI.
    pub cframe: u64,
    /// Valid bytes in `bytes`, from `rsp` up.
    pub len: u32,
    pub _pad: u32,
    pub bytes: [u8; USER_STACK_BYTES],
}

/// A `CpuSample` followed by its native stack: what the cpu program emits when
/// `CpuConfig::native` is set.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CpuSampleNative {
    pub lua: CpuSample,
    pub native: NativeStack,
}

/// Run-time switches of the cpu program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuConfig {
    /// Non-zero: copy registers and user stack with every sample.
    pub native: u32,
    /// Non-zero: record the kernel stack too.
    pub kernel: u32,
}

/// Where `sched:sched_switch` keeps the fields the switch programs read, in bytes
/// from the start of the record, as tracefs' `format` file gives them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedSwitchFormat {
    pub prev_pid: u32,
    pub prev_state: u32,
    pub next_pid: u32,
    pub _pad: u32,
}

/// `prev_state` bits of a thread switched out for the last time (`EXIT_DEAD`,
/// `EXIT_ZOMBIE`): it will never come back, so nothing is kept for it.
pub const TASK_STATE_EXITING: u64 = 0x10 | 0x20;
/// `prev_state` of a preempted thread (`TASK_REPORT_MAX`, shown as "R+"); 0 is a
/// thread that yielded while runnable. Both only wait for a CPU.
pub const TASK_STATE_PREEMPTED: u64 = 0x100;

/// The x86-64 numbers of `epoll_wait`, `epoll_pwait` and `epoll_pwait2`: an event
/// loop waiting for work, not blocked.
pub const EPOLL_SYSCALLS: [i64; 3] = [232, 281, 441];

/// Run-time switches of the offcpu program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffcpuConfig {
    /// Non-zero: copy registers and user stack at every switch-out, and send every
    /// block to user space (native stacks can only be unwound there).
    pub native: u32,
    pub kernel: u32,
    /// Non-zero: keep the idle wait in `epoll_wait` like any other block.
    pub include_idle: u32,
    pub _pad: u32,
    /// Shorter blocks are only counted, in `OFFCPU_SHORT_*`.
    pub min_block_ns: u64,
    pub sched: SchedSwitchFormat,
}

/// The thread was runnable when switched out (preempted): it waited for a CPU.
pub const OFFCPU_RUNNABLE: u32 = 1;

/// What the kernel knows of one block besides its stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffcpuHead {
    /// Non-zero: a Lua-only stack, sent once; the kernel sums the time of every
    /// block with this stack in `BLOCKED` under this key. Zero: `blocked_ns` is
    /// this record's own weight.
    pub key: u64,
    pub blocked_ns: u64,
    pub switched_out_ns: u64,
    /// The system call the thread was in when it left the CPU (`orig_rax`), or -1.
    pub syscall: i64,
    pub flags: u32,
    pub _pad: u32,
}

/// A block with its Lua-level stack.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OffcpuSample {
    pub head: OffcpuHead,
    pub lua: CpuSample,
}

/// A block with its Lua and native stacks: what the offcpu program sends when
/// `OffcpuConfig::native` is set (and what it keeps per blocked thread).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OffcpuSampleNative {
    pub sample: OffcpuSample,
    pub native: NativeStack,
}

/// Blocked time summed in the kernel per Lua stack key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockedTotal {
    pub ns: u64,
    pub count: u64,
}

/// Slots of the offcpu program's `COUNTS` per-CPU array.
pub const OFFCPU_SHORT_NS: u32 = 0;
pub const OFFCPU_SHORT_COUNT: u32 = 1;
pub const OFFCPU_IDLE_NS: u32 = 2;
pub const OFFCPU_IDLE_COUNT: u32 = 3;
pub const OFFCPU_COUNTS: u32 = 4;

/// Log2 buckets of event-loop iteration time: bucket 0 holds 0 µs, bucket i holds
/// [2^(i-1), 2^i) µs. The kernel fills them; user space renders them.
pub const LOOP_BUCKETS: u32 = 64;

#[inline(always)]
pub fn log2_bucket(us: u64) -> u32 {
    64 - us.leading_zeros()
}

/// Run-time switches of the epoll-loop program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoopConfig {
    /// Iterations at least this long are reported one by one.
    pub long_ns: u64,
    /// Stacks are sent only once an iteration has run this long (on-CPU samples)
    /// or for blocks inside an iteration at least this long.
    pub stack_after_ns: u64,
    /// The sampling period: the weight of one on-CPU sample.
    pub sample_ns: u64,
    pub sched: SchedSwitchFormat,
}

/// `LoopHead::kind`: the end of an iteration at least `long_ns` long (`LoopEnd`).
pub const LOOP_ITERATION: u32 = 1;
/// A stack sampled on-CPU inside a running iteration.
pub const LOOP_ON_CPU: u32 = 2;
/// A stack that blocked (left the CPU) inside a running iteration. Preemption
/// sends no stack: it is counted in `LoopTimes::runnable_ns` instead.
pub const LOOP_OFF_CPU: u32 = 3;

/// Per thread inside an iteration, kept by the kernel: when it began and where
/// its time off the CPU went, so a long iteration can say whether its code
/// blocked or the thread waited for a CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoopTimes {
    /// When `epoll_wait` returned, `bpf_ktime_get_ns`.
    pub start_ns: u64,
    /// When the thread last left the CPU, or 0 while it runs.
    pub out_since_ns: u64,
    /// It left runnable (preempted), not blocked.
    pub out_runnable: u64,
    /// Time blocked (asleep in the kernel) so far.
    pub blocked_ns: u64,
    /// Time preempted, waiting for a CPU, so far.
    pub runnable_ns: u64,
}

/// A `LOOP_ITERATION` record: the iteration's length in `head.ns`, and how
/// much of it was spent off the CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoopEnd {
    pub head: LoopHead,
    pub blocked_ns: u64,
    pub runnable_ns: u64,
}

/// The start of every epoll-loop record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoopHead {
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    pub _pad: u32,
    /// When the iteration began (`epoll_wait` returned), `bpf_ktime_get_ns`.
    pub iteration_ns: u64,
    /// `LOOP_ITERATION`: its length; otherwise the stack's weight (the sampling
    /// period, or the time blocked).
    pub ns: u64,
}

/// A stack inside an iteration (`LOOP_ON_CPU`, `LOOP_OFF_CPU`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LoopStack {
    pub head: LoopHead,
    /// `LOOP_OFF_CPU`: the system call it blocked in, or -1.
    pub syscall: i64,
    pub lua: CpuSample,
}

/// `ljprobe gc`'s (and any VM-state counter's) slots: samples in compiled
/// traces, then one per `LJ_VMST_*` (interpreter, C, GC, exit, record, opt,
/// asm), then samples where the process ran its own code outside Lua, then
/// samples where no VM was found.
pub const VMSTATE_TRACE: u32 = 0;
pub const VMSTATE_FIRST_VMST: u32 = 1;
pub const VMSTATE_OUTSIDE_LUA: u32 = 8;
pub const VMSTATE_NO_VM: u32 = 9;
pub const VMSTATE_SLOTS: u32 = 10;

/// `ljprobe alloc`: a weight of one event is `scale / ALLOC_SCALE_ONE`, the
/// inverse of the share of time the probe was on while it fired.
pub const ALLOC_SCALE_ONE: u64 = 1024;

/// What an allocator call did, as `ljprobe alloc` tells them apart: a new
/// block, a table's array or hash part resized (`lj_tab_resize`), or another
/// block grown in place (string buffers, Lua stacks; on a build without
/// symbols, table array parts too).
pub const ALLOC_NEW: u32 = 0;
pub const ALLOC_TABLE_RESIZE: u32 = 1;
pub const ALLOC_REALLOC: u32 = 2;

/// Slots of the alloc program's `COUNTS`: every call of the allocator (raw),
/// frees and the bytes they returned (weighted), records the ring buffer or
/// the stack map had no room for, the bytes allocated, and the bytes freed
/// outside the collector (a table's old hash part, a shrunk buffer): what
/// `gc.total - gc.estimate` does not see.
pub const ALLOC_CALLS: u32 = 0;
pub const ALLOC_FREES: u32 = 1;
pub const ALLOC_FREED_BYTES: u32 = 2;
pub const ALLOC_LOST: u32 = 3;
pub const ALLOC_STACKS_FULL: u32 = 4;
pub const ALLOC_BYTES: u32 = 5;
pub const ALLOC_EXPLICIT_FREED_BYTES: u32 = 6;
pub const ALLOC_COUNT_SLOTS: u32 = 7;

/// log2 buckets of the alloc program's size histogram (bucket i: sizes in [2^i, 2^(i+1))).
pub const ALLOC_HIST_BUCKETS: u32 = 48;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AllocConfig {
    pub scale: u64,
    /// `lj_tab_resize`'s code, [lo, hi), 0 when unknown: a return address into
    /// it near the top of the allocator's stack marks a table resize.
    pub resize_lo: u64,
    pub resize_hi: u64,
    /// 1: a record with the native stack for every event; 0: Lua stacks are
    /// counted in the kernel and each sent once.
    pub native: u32,
    pub kernel: u32,
    /// 1 (`ljprobe leak`): each new block's address is sent too, from a
    /// uretprobe on the allocator, as an `AllocAddr`.
    pub addresses: u32,
    pub _pad: u32,
}

/// A new block the allocator returned, and the stack that asked for it (the
/// key of its `AllocRecord`: a stack hash in Lua mode, the record's own in
/// native mode). 40 bytes, so user space tells it from an `AllocRecord` by size.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AllocAddr {
    pub key: u64,
    pub addr: u64,
    pub scale: u64,
    pub bytes: u32,
    pub pid: u32,
    /// `bpf_ktime_get_ns` at the return: events after the end snapshot are left out.
    pub ns: u64,
}

/// What the allocator probe keeps per thread between the call and its return.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AllocPending {
    pub key: u64,
    pub scale: u64,
    pub bytes: u64,
    /// The stack pointer at the call: the return of that same call has it 8
    /// higher, so a return is never paired with another call's entry (the
    /// two probes of a window attach one after the other).
    pub sp: u64,
}

/// The value of the alloc program's per-CPU `STACKS` map, keyed by a hash of
/// the Lua stack with the kind in its low two bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AllocTotals {
    /// Weighted (see `ALLOC_SCALE_ONE`).
    pub count: u64,
    pub bytes: u64,
    /// Events recorded, unweighted.
    pub events: u64,
}

/// One allocation with its stack: in Lua mode the first time a stack is seen
/// (`scale` 0: the counts come from `STACKS`), with native stacks every event.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct AllocRecord {
    pub key: u64,
    pub kind: u32,
    pub _pad: u32,
    pub scale: u64,
    pub bytes: u64,
    pub stack: CpuSample,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct AllocRecordNative {
    pub head: AllocRecord,
    pub native: NativeStack,
}
