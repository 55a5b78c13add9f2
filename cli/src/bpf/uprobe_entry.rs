//! Where on a function's entry a uprobe costs the target least.
//!
//! x86-64 uprobes emulate a few instructions in the kernel (push of a
//! register, jumps, calls, nops) and run every other one out of line under
//! single-step, which is a second trap: measured on this project's VM, a hit
//! costs 0.55 us on a `push`, `jcc` or `jmp` and 18-21 us on a `test`, `mov`,
//! `sub` or `endbr64` (docs/alloc.md#cost-and-how-it-samples). LuaJIT's allocator
//! starts with `test reg, reg; je ...`: probing the `je` instead of the `test`
//! makes every hit about thirty times cheaper. Only instructions that change
//! nothing but the flags (or mark a branch target) are stepped over, so the
//! registers and the stack a probe's program reads are those of the entry.

/// The probe's place, as an offset from the function's first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub skip: u64,
    /// The kernel emulates the probed instruction (one trap a hit, not two).
    pub emulated: bool,
}

/// The first instruction of `code` (a function's first bytes) the kernel
/// emulates, if only flag-setting instructions come before it; else the
/// function's first byte, as before.
pub fn cheap_entry(code: &[u8]) -> Entry {
    let mut at = 0usize;
    // A few at most: compilers put one test or cmp before the first branch.
    for _ in 0..4 {
        let rest = &code[at.min(code.len())..];
        if emulated(rest) {
            return Entry { skip: at as u64, emulated: true };
        }
        match flags_only(rest) {
            Some(len) => at += len,
            None => break,
        }
    }
    Entry { skip: 0, emulated: emulated(code) }
}

/// Instructions `arch/x86/kernel/uprobes.c` emulates: `push r64`, `jmp`,
/// `jcc` (short and near), `call rel32` and nops.
fn emulated(c: &[u8]) -> bool {
    matches!(
        c,
        [0x50..=0x57, ..]
            | [0x41, 0x50..=0x57, ..]
            | [0x70..=0x7f, _, ..]
            | [0xeb, _, ..]
            | [0xe9, _, _, _, _, ..]
            | [0xe8, _, _, _, _, ..]
            | [0x0f, 0x80..=0x8f, _, _, _, _, ..]
            | [0x90, ..]
            | [0x0f, 0x1f, ..]
    )
}

/// Length of an instruction that writes only the flags: `endbr64`, `test`
/// or `cmp` of two registers, `cmp` of a register with an 8-bit constant.
fn flags_only(c: &[u8]) -> Option<usize> {
    if c.starts_with(&[0xf3, 0x0f, 0x1e, 0xfa]) {
        return Some(4);
    }
    let rex = usize::from(matches!(c.first(), Some(0x40..=0x4f)));
    let (op, modrm) = (*c.get(rex)?, *c.get(rex + 1)?);
    let registers = modrm >> 6 == 3;
    match op {
        // test r/m8, r8; test r/m, r; cmp r/m, r (both ways), registers only.
        0x84 | 0x85 | 0x38 | 0x39 | 0x3a | 0x3b if registers => Some(rex + 2),
        // cmp r/m, imm8 (group 1, /7).
        0x83 if registers && (modrm >> 3) & 7 == 7 && c.len() > rex + 2 => Some(rex + 3),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luajits_allocator_is_probed_at_its_first_branch() {
        // Debian's luajit2 (stripped): test rcx,rcx; je; test rsi,rsi; je; mov rdx,rcx
        let stock = [0x48, 0x85, 0xc9, 0x74, 0x1b, 0x48, 0x85, 0xf6, 0x74, 0x0e, 0x48, 0x89, 0xca];
        assert_eq!(cheap_entry(&stock), Entry { skip: 3, emulated: true });
    }

    #[test]
    fn endbr64_is_stepped_over_to_a_push() {
        assert_eq!(cheap_entry(&[0xf3, 0x0f, 0x1e, 0xfa, 0x41, 0x57, 0x41, 0x56]), Entry { skip: 4, emulated: true });
    }

    #[test]
    fn an_emulated_first_instruction_stays() {
        assert_eq!(cheap_entry(&[0x55, 0x48, 0x89, 0xe5]), Entry { skip: 0, emulated: true });
    }

    #[test]
    fn an_instruction_that_writes_a_register_is_never_stepped_over() {
        // mov rdx, rcx; jmp: the program reads rdx at the entry.
        let code = [0x48, 0x89, 0xca, 0xe9, 0, 0, 0, 0];
        assert_eq!(cheap_entry(&code), Entry { skip: 0, emulated: false });
        // test, then sub rsp: nothing emulated follows, so the entry stays.
        assert_eq!(cheap_entry(&[0x48, 0x85, 0xf6, 0x48, 0x83, 0xec, 0x08]), Entry { skip: 0, emulated: false });
    }

    #[test]
    fn a_memory_operand_is_not_flags_only_and_short_code_is_safe() {
        // test [rsi], rsi reads memory through a register: left alone.
        assert_eq!(cheap_entry(&[0x48, 0x85, 0x36, 0x74, 0x00]), Entry { skip: 0, emulated: false });
        assert_eq!(cheap_entry(&[0x48, 0x85]), Entry { skip: 0, emulated: false });
        assert_eq!(cheap_entry(&[]), Entry { skip: 0, emulated: false });
    }

    #[test]
    fn cmp_with_a_constant_is_flags_only() {
        // cmp edi, 5; jg
        assert_eq!(cheap_entry(&[0x83, 0xff, 0x05, 0x7f, 0x10]), Entry { skip: 3, emulated: true });
        // sub edi, 5 (group 1, /5) writes the register.
        assert_eq!(cheap_entry(&[0x83, 0xef, 0x05, 0x7f, 0x10]), Entry { skip: 0, emulated: false });
    }
}
