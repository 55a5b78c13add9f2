//! Property tests of native unwinding: CFI parsed from corrupted ELF files,
//! unwind steps under any rule, registers and stack bytes, and /proc maps
//! text of any shape. Each must end within its bounds and never panic.

use std::cell::RefCell;

use object::{Object, ObjectSection};
use proptest::{collection::vec, prelude::*, sample::Index, test_runner::TestRunner};

use super::cfi::{ObjectCfi, Rule, Saved, RSP};
use super::maps::{self, find, parse_exec_maps};
use super::unwind::{step, Regs};
use super::{StackCopy, Unwinder};

/// Bounded so each test runs in about a second of a debug build; no
/// regression files are written into the source tree.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

const SMALL_ELF: &str = "/bin/true";
const STACK_AT: u64 = 0x7ffd_0000_1000;
/// The ELF header and program headers of a small executable fit in this.
const HEADERS: usize = 1024;

fn saved() -> impl Strategy<Value = Saved> {
    prop_oneof![
        Just(Saved::Same),
        Just(Saved::Undefined),
        Just(Saved::Unknown),
        (-64i64..64).prop_map(Saved::AtCfa),
        any::<i64>().prop_map(Saved::AtCfa),
        any::<i64>().prop_map(Saved::ValCfa),
        (0u16..20).prop_map(Saved::InReg),
    ]
}

fn rule() -> impl Strategy<Value = Rule> {
    let off = prop_oneof![-64i64..128, any::<i64>()];
    (0u16..20, off, saved(), [saved(), saved(), saved(), saved(), saved(), saved()])
        .prop_map(|(cfa_reg, cfa_off, ra, callee)| Rule { cfa_reg, cfa_off, ra, callee })
}

/// A stack word: anything, or a pointer back into the copy (frame chains
/// that point at themselves or loop).
fn stack_word() -> impl Strategy<Value = u64> {
    prop_oneof![any::<u64>(), Just(0u64), (0u64..64).prop_map(|i| STACK_AT + 8 * i)]
}

/// Field values at the edges of u64, where sums overflow.
fn extreme() -> impl Strategy<Value = u64> {
    prop_oneof![any::<u64>(), Just(0u64), Just(u64::MAX), (0u64..4096).prop_map(|d| u64::MAX - d)]
}

fn bytes_of(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn every_step_moves_the_cfa_up_or_stops(
        rules in vec(rule(), 1..32),
        words in vec(stack_word(), 0..64),
        rip in any::<u64>(),
        rsp in prop_oneof![Just(STACK_AT), any::<u64>()],
        rbp in stack_word(),
    ) {
        let stack = bytes_of(&words);
        let s = StackCopy { rip, rsp, rbp, stack: &stack };
        let mut regs = Regs::from_copy(&s);
        for r in &rules {
            let before = regs.get(RSP).expect("rsp is always known");
            let Some(ra) = step(r, &mut regs, &s) else { break };
            let after = regs.get(RSP).expect("a step sets rsp to the CFA");
            prop_assert!(after > before, "CFA {after:#x} not above {before:#x}");
            prop_assert_eq!(regs.get(16), Some(ra));
        }
    }

    #[test]
    fn maps_text_of_any_shape_parses_without_panics(
        lines in vec(prop_oneof![
            ".{0,80}",
            "[0-9a-f]{1,16}-[0-9a-f]{1,16} [r-][w-][x-][ps] [0-9a-f]{1,16} [0-9:]{3,5} [0-9]{1,20}( .{0,40})?",
            (extreme(), extreme(), extreme()).prop_map(|(a, b, off)| format!("{a:x}-{b:x} r-xp {off:x} 08:01 1 /x")),
        ], 0..16),
        probes in vec(any::<u64>(), 0..8),
    ) {
        let text = lines.join("\n");
        let m = parse_exec_maps(&text);
        prop_assert!(m.windows(2).all(|w| w[0].start <= w[1].start));
        for map in &m {
            prop_assert!(map.start < map.end && (map.path.starts_with('/') || map.path == "[vdso]"));
        }
        let ends = m.iter().flat_map(|m| [m.start, m.end - 1]).collect::<Vec<_>>();
        for &a in probes.iter().chain(&ends) {
            if let Some(hit) = find(&m, a) {
                prop_assert!(hit.start <= a && a < hit.end);
                let _ = (hit.file_offset(a), hit.object_name(), hit.candidates(1));
            }
        }
    }

    #[test]
    fn well_formed_maps_lines_round_trip(
        start in 0u64..(1 << 47),
        len in 1u64..(1 << 32),
        offset in any::<u64>(),
        inode in any::<u64>(),
        path in "/[a-z0-9_./ -]{0,40}[a-z]",
    ) {
        let end = start + len;
        let line = format!("{start:x}-{end:x} r-xp {offset:08x} 08:01 {inode} {path}");
        let m = parse_exec_maps(&line);
        let want = maps::Mapping { start, end, offset, dev: "08:01".into(), inode, path: path.clone() };
        prop_assert_eq!(m, vec![want]);
    }
}

fn section_range(data: &[u8], name: &str) -> (usize, usize) {
    let file = object::File::parse(data).expect("a readable ELF");
    let (off, size) = file.section_by_name(name).and_then(|s| s.file_range()).expect("section in file");
    (off as usize, size as usize)
}

/// File offsets of every program header's p_offset, p_vaddr, p_filesz and
/// p_memsz (ELF64, little-endian).
fn program_header_fields(elf: &[u8]) -> Vec<usize> {
    let u16_at = |i: usize| usize::from(u16::from_le_bytes([elf[i], elf[i + 1]]));
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).flat_map(|k| [8, 16, 32, 40].map(|f| phoff + k * size + f)).collect()
}

#[test]
fn cfi_of_mutated_elf_never_panics() {
    let original = std::fs::read(SMALL_ELF).expect("a small ELF to mutate");
    let (eh_off, eh_len) = section_range(&original, ".eh_frame");
    let text = {
        let file = object::File::parse(&*original).expect("ELF");
        let s = file.section_by_name(".text").expect(".text");
        (s.address(), s.size())
    };
    // Writes land in .eh_frame (CIEs, FDEs and their instructions), in the
    // ELF and program headers (segment addresses and sizes), or anywhere.
    let headers = HEADERS.min(original.len());
    let write = (0u8..3, any::<Index>(), extreme(), 1usize..=8);
    let probe = prop_oneof![any::<u64>(), 0..original.len() as u64];
    // And whole fields of program headers set to values where sums overflow.
    let phdrs = program_header_fields(&original);
    let field = (any::<Index>(), extreme());
    let strategy = (vec(write, 1..24), vec(field, 0..4), any::<Index>(), any::<bool>(), vec(probe, 0..8));
    let mut runner = TestRunner::new(config(256));
    runner
        .run(&strategy, |(writes, fields, cut, truncate, probes)| {
            let mut data = original.clone();
            for (at, value) in fields {
                let i = *at.get(&phdrs);
                data[i..i + 8].copy_from_slice(&value.to_le_bytes());
            }
            for (place, at, word, n) in writes {
                let i = match place {
                    0 => eh_off + at.index(eh_len),
                    1 => at.index(headers),
                    _ => at.index(data.len()),
                };
                let end = (i + n).min(data.len());
                data[i..end].copy_from_slice(&word.to_le_bytes()[..end - i]);
            }
            if truncate {
                data.truncate(cut.index(data.len()));
            }
            let Ok(mut cfi) = ObjectCfi::parse(&data) else { return Ok(()) };
            // An FDE takes at least 8 bytes of the file: the index cannot outgrow it.
            prop_assert!(cfi.fde_count() <= data.len() / 8);
            for i in 0..64 {
                let _ = cfi.rule_for(text.0 + i * text.1.max(1) / 64);
            }
            for &p in &probes {
                let _ = cfi.rule_for(p);
                let _ = cfi.vaddr_for_offset(p);
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn unwinding_random_stacks_ends_within_max_frames() {
    let pid = std::process::id();
    let u = RefCell::new(Unwinder::new(pid).expect("own maps"));
    let code: Vec<(u64, u64)> = maps::read_exec_maps(pid).expect("own maps").iter().map(|m| (m.start, m.end)).collect();
    assert!(!code.is_empty());
    // Return addresses anywhere in our own code, so steps find real CFI.
    let code_addr = (any::<Index>(), any::<Index>()).prop_map(move |(m, at)| {
        let (start, end) = *m.get(&code);
        start + at.index((end - start) as usize) as u64
    });
    let word = prop_oneof![stack_word(), code_addr.clone()];
    let strategy = (code_addr, vec(word, 0..256), stack_word(), 0usize..48);
    let mut runner = TestRunner::new(config(256));
    runner
        .run(&strategy, |(rip, words, rbp, max_frames)| {
            let stack = bytes_of(&words);
            let s = StackCopy { rip, rsp: STACK_AT, rbp, stack: &stack };
            let out = u.borrow_mut().unwind(&s, max_frames);
            prop_assert!(out.len() <= max_frames);
            prop_assert!(max_frames == 0 || out.first() == Some(&rip));
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}
