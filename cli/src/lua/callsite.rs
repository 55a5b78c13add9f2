//! Which C function a JIT trace called, from the machine code before a return
//! address into the trace. The interpreter leaves a frame for every C function
//! it calls; a trace calls FFI functions (and LuaJIT's helpers) directly, so the
//! only record of the callee is the call instruction itself. LuaJIT's x64
//! backend emits (`asm_callx`, `emit_call`): `call rel32` when the target is
//! within 2 GB of the trace, `call [rip+disp32]` through a slot in the trace's
//! machine-code area, `call reg` right after `mov reg, imm64` for its own far
//! helpers, and, for an FFI function out of rel32 reach, `call reg` through a
//! callee-saved register loaded once at the trace's head.

use super::mem::Memory;

/// Bytes read before a return address: `mov r64, imm64` (10) + `call r64` (3),
/// with room for register set-up the assembler puts in between.
const WINDOW: usize = 32;

/// How the call that ends just before a return address reached its callee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallSite {
    /// The target is in the code: rel32, a rip-relative slot, or a `mov imm64` just before.
    To(u64),
    /// Through a callee-saved register set elsewhere: an FFI call (`CALLXS`)
    /// whose target the trace's IR holds.
    SavedRegister,
}

/// x86-64 SysV callee-saved registers: rbx, rbp, r12-r15.
fn callee_saved(reg: u8) -> bool {
    matches!(reg, 3 | 5 | 12..=15)
}

/// How the call ending just before `ret` found its callee; None when the
/// bytes there are no call LuaJIT emits.
pub fn call_site<M: Memory>(mem: &M, ret: u64) -> Option<CallSite> {
    let start = ret.checked_sub(WINDOW as u64)?;
    let code = mem.read_bytes(start, WINDOW)?;
    let at = |back: usize| WINDOW.checked_sub(back);
    // call rel32: E8 xx xx xx xx
    if let Some(i) = at(5).filter(|&i| code[i] == 0xe8) {
        let rel = i32::from_le_bytes(code[i + 1..i + 5].try_into().ok()?);
        return ret.checked_add_signed(i64::from(rel)).map(CallSite::To);
    }
    // call [rip+disp32]: FF 15 xx xx xx xx; the slot holds the target.
    if let Some(i) = at(6).filter(|&i| code[i] == 0xff && code[i + 1] == 0x15) {
        let disp = i32::from_le_bytes(code[i + 2..i + 6].try_into().ok()?);
        return mem.read_u64(ret.checked_add_signed(i64::from(disp))?).map(CallSite::To);
    }
    // call r64: [41] FF D0+r (ModRM mod=11, reg=/2).
    let (reg, call_len) = match (code[WINDOW - 3], code[WINDOW - 2], code[WINDOW - 1]) {
        (0x41, 0xff, m) if m & 0xf8 == 0xd0 => (8 + (m & 7), 3),
        (_, 0xff, m) if m & 0xf8 == 0xd0 => (m & 7, 2),
        _ => return None,
    };
    match mov_imm64(&code[..WINDOW - call_len], reg) {
        Some(target) => Some(CallSite::To(target)),
        None => callee_saved(reg).then_some(CallSite::SavedRegister),
    }
}

/// The address the call that ends just before `ret` jumps to, when the bytes
/// there name it; None otherwise.
pub fn call_target<M: Memory>(mem: &M, ret: u64) -> Option<u64> {
    match call_site(mem, ret)? {
        CallSite::To(target) => Some(target),
        CallSite::SavedRegister => None,
    }
}

/// The value of the last `mov r64, imm64` (REX.W B8+r) into `reg` in `code`,
/// which must be its final instruction's bytes or followed only by bytes that
/// do not write `reg`: we accept it only at the very end, the form LuaJIT emits.
fn mov_imm64(code: &[u8], reg: u8) -> Option<u64> {
    let i = code.len().checked_sub(10)?;
    let rex = if reg >= 8 { 0x49 } else { 0x48 };
    if code[i] != rex || code[i + 1] != 0xb8 + (reg & 7) {
        return None;
    }
    Some(u64::from_le_bytes(code[i + 2..i + 10].try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lua::tests::image::FakeMem as Image;

    fn image_with(code_end: u64, tail: &[u8]) -> Image {
        let mut img = Image::default();
        img.put(code_end - tail.len() as u64, tail.to_vec());
        img
    }

    #[test]
    fn decodes_the_three_call_forms() {
        let ret = 0x7000_1000u64;
        // call rel32 to ret - 0x100
        let rel = (-0x100i32).to_le_bytes();
        let img = image_with(ret, &[0x90; 27].iter().copied().chain([0xe8, rel[0], rel[1], rel[2], rel[3]]).collect::<Vec<_>>());
        assert_eq!(call_target(&img, ret), Some(ret - 0x100));
        // call [rip+0x40] holding 0x7f00_0000_1234
        let mut img = image_with(ret, &[0x90u8; 26].iter().copied().chain([0xff, 0x15, 0x40, 0, 0, 0]).collect::<Vec<_>>());
        img.put(ret + 0x40, 0x7f00_0000_1234u64.to_le_bytes().to_vec());
        assert_eq!(call_target(&img, ret), Some(0x7f00_0000_1234));
        // mov r11, imm64; call r11
        let mut tail = vec![0x90u8; 19];
        tail.extend([0x49, 0xbb]);
        tail.extend(0x7f00_dead_beefu64.to_le_bytes());
        tail.extend([0x41, 0xff, 0xd3]);
        assert_eq!(call_target(&image_with(ret, &tail), ret), Some(0x7f00_dead_beef));
        // mov rax, imm64; call rax
        let mut tail = vec![0x90u8; 20];
        tail.extend([0x48, 0xb8]);
        tail.extend(0x1234_5678u64.to_le_bytes());
        tail.extend([0xff, 0xd0]);
        assert_eq!(call_target(&image_with(ret, &tail), ret), Some(0x1234_5678));
    }

    #[test]
    fn a_call_through_a_register_set_elsewhere_is_an_ffi_call_only_if_callee_saved() {
        let ret = 0x7000_1000u64;
        let mut tail = vec![0x90u8; 29];
        tail.extend([0x41, 0xff, 0xd4]); // call r12
        assert_eq!(call_site(&image_with(ret, &tail), ret), Some(CallSite::SavedRegister));
        let mut tail = vec![0x90u8; 30];
        tail.extend([0xff, 0xd5]); // call rbp
        assert_eq!(call_site(&image_with(ret, &tail), ret), Some(CallSite::SavedRegister));
        let mut tail = vec![0x90u8; 30];
        tail.extend([0xff, 0xd1]); // call rcx: caller-saved, not LuaJIT's form
        assert_eq!(call_site(&image_with(ret, &tail), ret), None);
    }

    #[test]
    fn anything_else_is_no_target() {
        let ret = 0x7000_1000u64;
        assert_eq!(call_target(&image_with(ret, &[0x90; 32]), ret), None);
        // call r11 whose value came from somewhere else
        let mut tail = vec![0x90u8; 29];
        tail.extend([0x41, 0xff, 0xd3]);
        assert_eq!(call_target(&image_with(ret, &tail), ret), None);
        // unreadable memory
        assert_eq!(call_target(&Image::default(), ret), None);
        assert_eq!(call_target(&Image::default(), 3), None);
    }
}
