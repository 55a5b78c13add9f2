//! Finding and checking a LuaJIT VM (`global_State`) from inside the kernel.

use aya_ebpf::helpers::bpf_probe_read_user;
use ljprobe_common::VmLayout;

#[inline(always)]
pub fn read_u64(addr: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_user copies from user memory and fails instead of faulting.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

#[inline(always)]
pub fn read_u32(addr: u64) -> Option<u32> {
    // SAFETY: as above.
    unsafe { bpf_probe_read_user(addr as *const u32) }.ok()
}

#[inline(always)]
pub fn read_i32(addr: u64) -> Option<i32> {
    // SAFETY: as above.
    unsafe { bpf_probe_read_user(addr as *const i32) }.ok()
}

/// A `GCRef` or `MRef`: 64-bit in GC64 builds, else 32-bit (the VM then
/// keeps every object below 4 GB). Real pointers (`cframe`, machine code)
/// are 64-bit in both and read with `read_u64`.
#[inline(always)]
pub fn read_ref(layout: &VmLayout, addr: u64) -> Option<u64> {
    if layout.ref_size == 4 {
        read_u32(addr).map(u64::from)
    } else {
        read_u64(addr)
    }
}

/// A checked VM: the candidate `G` and what it says about the running coroutine.
pub struct Vm {
    pub g: u64,
    pub cur_l: u64,
    pub vmstate: i32,
}

/// Accepts `g` only if the main thread, which `GG_State` places just before it,
/// links back to it. A register that merely looks like a pointer fails this, so
/// the check holds in any VM state, including inside C called from Lua.
#[inline(always)]
pub fn check_g(layout: &VmLayout, g: u64) -> Option<Vm> {
    let gg_g = layout.gg_g as u64;
    if g < gg_g || g & 7 != 0 {
        return None;
    }
    let main_thread = g - gg_g;
    if read_ref(layout, main_thread + layout.l_glref as u64)? != g {
        return None;
    }
    Some(Vm {
        g,
        cur_l: read_ref(layout, g + layout.g_cur_l as u64)?,
        vmstate: read_i32(g + layout.g_vmstate as u64)?,
    })
}

/// `G` from a `lua_State *` passed to a LuaJIT API function.
#[inline(always)]
pub fn g_of_thread(layout: &VmLayout, l: u64) -> Option<u64> {
    if l == 0 {
        return None;
    }
    read_ref(layout, l + layout.l_glref as u64)
}
