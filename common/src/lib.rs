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
    pub l_glref: u32,
    pub _pad: u32,
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
}
