//! Walking a coroutine's Lua frames inside the kernel, as LuaJIT's lj_frame.h
//! lays them out: in GC64 builds two slots per frame, `[func][link] | base`;
//! otherwise one, `[func (low 32 bits) | link (high 32 bits)] | base`.

use ljprobe_common::{
    LuaFrameRaw, VmLayout, MAX_LUA_FRAMES, STACK_BROKEN, STACK_TRUNCATED,
};

use crate::vm::{read_ref, read_u32, read_u64};

/// GC64 object references keep the pointer in the low 47 bits.
const GCVMASK: u64 = (1 << 47) - 1;
const SLOT: u64 = 8;
const FRAME_TYPE: u64 = 3;
const FRAME_TYPEP: u64 = 7;
const FRAME_LUA: u64 = 0;

/// Where the innermost frame's base is. `L->base` is only synced when the VM calls
/// out, so it is stale while Lua runs: a trace's base is `G->jit_base`, and the
/// interpreter keeps BASE in a register (rdx on x64), used when it points into
/// this coroutine's stack.
#[inline(always)]
pub fn current_base(layout: &VmLayout, g: u64, l: u64, vmstate: i32, rdx: u64) -> Option<u64> {
    if vmstate >= 0 {
        let jit_base = read_ref(layout, g + layout.g_jit_base as u64)?;
        if jit_base != 0 {
            return Some(jit_base);
        }
    }
    if vmstate == !0 {
        let stack = read_ref(layout, l + layout.l_stack as u64)?;
        let maxstack = read_ref(layout, l + layout.l_maxstack as u64)?;
        if rdx > stack + SLOT && rdx <= maxstack && (rdx - stack) % SLOT == 0 {
            return Some(rdx);
        }
    }
    read_ref(layout, l + layout.l_base as u64)
}

/// Fills `frames` innermost first from `base`; returns (count, flags).
#[inline(always)]
pub fn walk(layout: &VmLayout, l: u64, base: u64, frames: &mut [LuaFrameRaw; MAX_LUA_FRAMES]) -> (u32, u32) {
    let Some(stack) = read_ref(layout, l + layout.l_stack as u64) else { return (0, STACK_BROKEN) };
    // LJ_FR2: GC64's two-slot frames keep the function one slot below the
    // link; a one-slot frame packs both in one word. Arithmetic, not a branch:
    // a branch per frame would double the paths the verifier walks per frame.
    let fr2 = (layout.ref_size != 4) as u64;
    let func_mask = if fr2 == 1 { GCVMASK } else { 0xffff_ffff };
    let link_shift = 32 * (1 - fr2);
    let bottom = stack + fr2 * SLOT;
    let mut frame = base.wrapping_sub(SLOT);
    let mut n = 0u32;
    for slot in frames.iter_mut() {
        if frame <= bottom {
            return (n, 0);
        }
        let (Some(func), Some(link)) = (read_u64(frame - fr2 * SLOT), read_u64(frame)) else {
            return (n, STACK_BROKEN);
        };
        let (func, link) = (func & func_mask, link >> link_shift);
        *slot = LuaFrameRaw { func, link };
        n += 1;
        let prev = if link & FRAME_TYPE == FRAME_LUA {
            // The caller's CALL instruction holds the callee's base slot in A.
            let Some(ins) = read_u32(link.wrapping_sub(4)) else { return (n, STACK_BROKEN) };
            frame.wrapping_sub((1 + fr2 + ((ins >> 8) & 0xff) as u64) * SLOT)
        } else {
            frame.wrapping_sub(link & !FRAME_TYPEP)
        };
        if prev >= frame {
            return (n, STACK_BROKEN);
        }
        frame = prev;
    }
    if frame <= bottom {
        (n, 0)
    } else {
        (n, STACK_TRUNCATED)
    }
}
