//! Where LuaJIT's atomic phase flips the current white, found in its machine
//! code so that a uprobe can run the kernel's per-cycle accounting there
//! (probes-ebpf/src/gc_cycles.rs) instead of a hardware watchpoint on
//! `gc.currentwhite`. An armed debug register makes every VM exit dearer
//! (+6-7% on a busy worker) and on some hypervisors a watched process has
//! died of a stray SIGTRAP (docs/gc.md#cost); a uprobe costs a trap a cycle.
//!
//! `atomic()` in lj_gc.c does `g->gc.currentwhite = otherwhite(g)`, i.e. the
//! field XOR `LJ_GC_WHITES` (3), stored back. Every x86-64 build ljprobe knows
//! (OpenResty's and upstream, GC64 or not, -O2 or debug) compiles it to
//! `xor $3, %eXX` followed at once by `mov %XXl, CW(%base)`, CW the field's
//! offset in `global_State`; nothing else in LuaJIT stores a byte XORed with 3
//! at that offset. The store is accepted only when the pattern occurs exactly
//! once; anything else leaves the tools on the watchpoint, as before.

use std::path::Path;

use object::{Object, ObjectSection, SectionKind};

/// `LJ_GC_WHITES`: the two white bits the atomic phase swaps.
const WHITES: u8 = 3;

/// The file offset of the flip's store in the ELF object at `path` (the
/// executable or library holding LuaJIT), or why there is none.
pub fn find_in_file(path: &Path, currentwhite: u64) -> Result<u64, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let obj = object::File::parse(&*data).map_err(|e| format!("{} is not an object file: {e}", path.display()))?;
    let mut found = Vec::new();
    for s in obj.sections().filter(|s| s.kind() == SectionKind::Text) {
        let (Some((start, _)), Ok(code)) = (s.file_range(), s.data()) else { continue };
        found.extend(find(code, currentwhite).into_iter().map(|at| start + at as u64));
    }
    match found[..] {
        [one] => Ok(one),
        [] => Err(format!("the atomic phase's flip of the collector's white was not found in {}", path.display())),
        _ => Err(format!("{} places in {} look like the atomic phase's flip of the white", found.len(), path.display())),
    }
}

/// Offsets in `code` of each `mov` storing a register to `[base + currentwhite]`
/// right after an `xor $3` of that register.
pub fn find(code: &[u8], currentwhite: u64) -> Vec<usize> {
    (0..code.len())
        .filter_map(|i| {
            // A REX byte before makes it another register's xor, read from there.
            if i > 0 && rex(&code[i - 1..]).0 != 0 && xor_whites(&code[i - 1..]).is_some() {
                return None;
            }
            let (reg, len) = xor_whites(&code[i..])?;
            let at = i + len;
            (byte_store(code.get(at..)?)? == (reg, currentwhite)).then_some(at)
        })
        .collect()
}

/// `xor $3, r32` (`[REX] 83 /6 ib`, register form): the register and the length.
fn xor_whites(code: &[u8]) -> Option<(u8, usize)> {
    let (rex, rest) = rex(code);
    match rest {
        [0x83, modrm, WHITES, ..] if modrm >> 6 == 3 && (modrm >> 3) & 7 == 6 => {
            Some((((rex & 1) << 3) | (modrm & 7), usize::from(rex != 0) + 3))
        }
        _ => None,
    }
}

/// `mov r8, disp(base)` (`[REX] 88 /r`, a base register plus a displacement):
/// the stored register (numbered as for a 32-bit one: without REX, 4-7 are
/// `ah`-`bh`, not the low bytes of esp-edi, and match nothing) and the
/// displacement.
fn byte_store(code: &[u8]) -> Option<(u8, u64)> {
    let (rex, rest) = rex(code);
    let [0x88, modrm, rest @ ..] = rest else { return None };
    let (md, reg, rm) = (modrm >> 6, (modrm >> 3) & 7, modrm & 7);
    if rex == 0 && reg >= 4 {
        return None;
    }
    // A SIB byte with no index (100b) keeps base + displacement; rsp/r12 need one.
    let rest = if rm == 4 {
        let [sib, rest @ ..] = rest else { return None };
        if (sib >> 3) & 7 != 4 {
            return None;
        }
        rest
    } else {
        rest
    };
    let disp = match md {
        1 => i64::from(*rest.first()? as i8),
        2 => i64::from(i32::from_le_bytes(rest.get(..4)?.try_into().ok()?)),
        _ => return None,
    };
    Some(((((rex >> 2) & 1) << 3) | reg, u64::try_from(disp).ok()?))
}

/// A REX prefix (0x40-0x4f) and what follows it; 0 when there is none.
fn rex(code: &[u8]) -> (u8, &[u8]) {
    match code {
        [r @ 0x40..=0x4f, rest @ ..] => (*r, rest),
        _ => (0, code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian's luajit2 and the debug build, GC64 (currentwhite at 0x20):
    /// `movzbl 0x20(%rbx),%eax; movb $3,0x21(%rbx); ...; xor $3,%eax;
    /// mov %al,0x20(%rbx); mov %al,0x80(%rbx)`.
    const GC64: &[u8] = &[
        0x0f, 0xb6, 0x43, 0x20, 0xc6, 0x43, 0x21, 0x03, 0xc7, 0x43, 0x24, 0, 0, 0, 0, 0x83, 0xf0, 0x03, 0x88, 0x43,
        0x20, 0x88, 0x83, 0x80, 0, 0, 0,
    ];

    #[test]
    fn finds_the_store_after_the_xor() {
        assert_eq!(find(GC64, 0x20), vec![18]);
        // The same code does not flip a field at another offset.
        assert!(find(GC64, 0x18).is_empty());
    }

    #[test]
    fn the_xored_register_must_be_the_one_stored() {
        // xor $3,%edx; mov %al,0x20(%rbx)
        assert!(find(&[0x83, 0xf2, 0x03, 0x88, 0x43, 0x20], 0x20).is_empty());
        // xor $3,%edx; mov %dl,0x20(%rbx)
        assert_eq!(find(&[0x83, 0xf2, 0x03, 0x88, 0x53, 0x20], 0x20), vec![3]);
        // xor $3,%esi; mov %dh,0x20(%rbx): without REX, reg 6 is dh, not sil.
        assert!(find(&[0x83, 0xf6, 0x03, 0x88, 0x73, 0x20], 0x20).is_empty());
        // xor $3,%esi; mov %sil,0x20(%rbx)
        assert_eq!(find(&[0x83, 0xf6, 0x03, 0x40, 0x88, 0x73, 0x20], 0x20), vec![3]);
    }

    #[test]
    fn extended_registers_and_long_displacements() {
        // xor $3,%r8d; mov %r8b,0x120(%r12) (SIB for r12, disp32)
        let code = [0x41, 0x83, 0xf0, 0x03, 0x45, 0x88, 0x84, 0x24, 0x20, 0x01, 0, 0];
        assert_eq!(find(&code, 0x120), vec![4]);
        // xor $3,%r8d; mov %al,0x120(%r12): another register
        let code = [0x41, 0x83, 0xf0, 0x03, 0x41, 0x88, 0x84, 0x24, 0x20, 0x01, 0, 0];
        assert!(find(&code, 0x120).is_empty());
    }

    #[test]
    fn other_xors_and_stores_are_not_taken() {
        // xor $1,%eax; mov %al,0x20(%rbx)
        assert!(find(&[0x83, 0xf0, 0x01, 0x88, 0x43, 0x20], 0x20).is_empty());
        // and $3,%eax (83 /4); mov %al,0x20(%rbx)
        assert!(find(&[0x83, 0xe0, 0x03, 0x88, 0x43, 0x20], 0x20).is_empty());
        // xor $3,%eax; mov %al,(%rip+0x20): not a base register
        assert!(find(&[0x83, 0xf0, 0x03, 0x88, 0x05, 0x20, 0, 0, 0], 0x20).is_empty());
        // Truncated code ends the search quietly.
        assert!(find(&[0x83, 0xf0, 0x03, 0x88], 0x20).is_empty());
    }
}
