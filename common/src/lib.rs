//! Records shared by the kernel programs (`probes-ebpf`) and user space (`cli`).
//! Every type is `#[repr(C)]`, fixed-size and padding-explicit, because both sides
//! read the same bytes out of BPF maps.
#![no_std]

/// Where LuaJIT keeps what the probes read, in bytes. User space fills it from the
/// target's DWARF or from a built-in layout; the kernel only follows it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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

/// One `cpu-clock` sample of a target thread, Lua-level.
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
