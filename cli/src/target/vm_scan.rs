//! Finding a process's `global_State` from user space by scanning its memory,
//! so kernel programs know the VM before the dispatch register ever shows it.
//! Off-CPU moments need this: a thread that blocks inside C called from Lua no
//! longer holds DISPATCH in r14, and may never be seen running Lua at all.

use ljprobe_common::VmLayout;

use crate::{
    lua::{Memory, ProcMem},
    target::process::Mapping,
};

/// Bytes scanned per read, and at most in all: GG_State is allocated when the
/// VM starts, among the process's first anonymous mappings.
const CHUNK: usize = 4 << 20;
const MAX_SCAN: u64 = 1 << 30;
/// Candidates verified per scan: each costs three reads of the target, and a
/// hostile heap full of self-referencing words could otherwise make a
/// million of them per chunk. A real VM has a handful of look-alikes at most.
const MAX_CANDIDATES: usize = 1 << 12;

/// The VM of process `pid`: a `G` whose main thread (just before it in
/// `GG_State`) links back to it, whose dispatch table points into LuaJIT's code
/// (`luajit_code`), and whose running coroutine links back to it too.
pub fn find_global_state(pid: u32, maps: &[Mapping], layout: &VmLayout, luajit_code: &[(u64, u64)]) -> Option<u64> {
    let mem = ProcMem::open(pid).ok()?;
    let mut scanned = 0u64;
    let mut private_data: Vec<&Mapping> = maps
        .iter()
        .filter(|m| m.perms.starts_with("rw") && m.perms.ends_with('p') && matches!(m.path.as_deref(), None | Some("[heap]")))
        .collect();
    // Smallest first: GG_State is among the VM's first allocations, in a
    // small early mapping, while a big heap grows in ever larger ones that
    // would use up the scan's budget first.
    private_data.sort_by_key(|m| (m.end - m.start, std::cmp::Reverse(m.start)));
    let mut buf = vec![0u8; CHUNK];
    let mut verified = 0;
    for m in private_data {
        let mut at = m.start;
        while at < m.end && scanned < MAX_SCAN && verified < MAX_CANDIDATES {
            let len = usize::try_from(m.end - at).unwrap_or(CHUNK).min(CHUNK);
            if mem.read(at, &mut buf[..len]) {
                for g in candidates(at, &buf[..len], layout).take(MAX_CANDIDATES - verified) {
                    verified += 1;
                    if verify(&mem, g, layout, luajit_code) {
                        return Some(g);
                    }
                }
            }
            scanned += len as u64;
            at = at.saturating_add(len as u64);
        }
    }
    None
}

/// Every `G` in `bytes` (read from `base`) for which `mainthread->glref == G`,
/// with `mainthread = G - gg_g`: one comparison per reference-sized word
/// (8 bytes in GC64, else 4, with every reference below 4 GB).
fn candidates<'a>(base: u64, bytes: &'a [u8], layout: &VmLayout) -> impl Iterator<Item = u64> + 'a {
    let shift = layout.gg_g as u64;
    let glref = layout.l_glref as u64;
    let size = if layout.ref_size == 4 { 4 } else { 8 };
    bytes.chunks_exact(size).enumerate().filter_map(move |(i, w)| {
        let at = base.checked_add((size as u64).checked_mul(i as u64)?)?;
        let value = match size {
            4 => u64::from(u32::from_ne_bytes(w.try_into().ok()?)),
            _ => u64::from_ne_bytes(w.try_into().ok()?),
        };
        let g = at.checked_sub(glref)?.checked_add(shift)?;
        (value == g).then_some(g)
    })
}

/// A `GCRef`/`MRef` of the layout's width.
fn read_ref(mem: &impl Memory, layout: &VmLayout, at: u64) -> Option<u64> {
    match layout.ref_size {
        4 => mem.read_u32(at).map(u64::from),
        _ => mem.read_u64(at),
    }
}

/// `cur_L` is read from the target: any value, so every sum is checked.
fn verify(mem: &impl Memory, g: u64, layout: &VmLayout, luajit_code: &[(u64, u64)]) -> bool {
    let in_code = |a: u64| luajit_code.iter().any(|&(s, e)| a >= s && a < e);
    let ref_at = |base: u64, off: u32| read_ref(mem, layout, base.checked_add(u64::from(off))?);
    // The dispatch table holds code pointers, 64-bit in every build.
    let dispatch_ok = match g.checked_add(u64::from(layout.g2disp)).and_then(|a| mem.read_u64(a)) {
        Some(first) => luajit_code.is_empty() || in_code(first),
        None => false,
    };
    let cur_l = ref_at(g, layout.g_cur_l).unwrap_or(0);
    dispatch_ok && cur_l != 0 && ref_at(cur_l, layout.l_glref) == Some(g)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::known_builds::openresty_gc64;

    #[test]
    fn finds_the_main_thread_back_link() {
        let base = 0x7f00_0000_0000u64;
        let mut bytes = vec![0u8; 4096];
        let main_thread = base + 0x100;
        let g = main_thread + openresty_gc64().vm.gg_g as u64;
        let at = (main_thread + openresty_gc64().vm.l_glref as u64 - base) as usize;
        bytes[at..at + 8].copy_from_slice(&g.to_ne_bytes());
        // A pointer to elsewhere is not a back link.
        bytes[0x800..0x808].copy_from_slice(&(base + 0x900).to_ne_bytes());
        assert_eq!(candidates(base, &bytes, &openresty_gc64().vm).collect::<Vec<_>>(), vec![g]);
    }

    use std::collections::HashMap;

    use proptest::{collection::vec, prelude::*, sample::Index};

    /// Addresses near the ends of the address space, where sums overflow.
    fn edge() -> impl Strategy<Value = u64> {
        prop_oneof![any::<u64>(), Just(0u64), (0u64..4096).prop_map(|d| u64::MAX - d)]
    }

    /// Memory holding only the given 8-byte words.
    struct Words(HashMap<u64, u64>);

    impl Memory for Words {
        fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
            match (self.0.get(&addr), buf.len()) {
                (Some(w), 8) => {
                    buf.copy_from_slice(&w.to_ne_bytes());
                    true
                }
                _ => false,
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn candidates_are_exactly_the_back_links(
            base in prop_oneof![edge(), (0u64..1 << 47).prop_map(|a| a & !7)],
            words in vec(any::<u64>(), 0..128),
            plant in any::<Option<Index>>(),
        ) {
            let mut words = words;
            let link = |i: usize| {
                base.checked_add(8 * i as u64)?.checked_sub(openresty_gc64().vm.l_glref as u64)?.checked_add(openresty_gc64().vm.gg_g as u64)
            };
            if let Some(at) = plant.filter(|_| !words.is_empty()) {
                let i = at.index(words.len());
                if let Some(g) = link(i) {
                    words[i] = g;
                }
            }
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
            let got: Vec<u64> = candidates(base, &bytes, &openresty_gc64().vm).collect();
            let want: Vec<u64> = (0..words.len()).filter_map(|i| link(i).filter(|&g| g == words[i])).collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn verify_checks_every_sum_on_any_memory(
            g in edge(),
            dispatch in edge(),
            cur_l in edge(),
            back in prop_oneof![edge(), Just(u64::MAX - 1)],
            back_is_g in any::<bool>(),
            code in vec((edge(), edge()), 0..3),
        ) {
            let back = if back_is_g { g } else { back };
            let mut mem = HashMap::new();
            let at = |base: u64, off: u32| base.checked_add(u64::from(off));
            if let Some(a) = at(g, openresty_gc64().vm.g2disp) {
                mem.insert(a, dispatch);
            }
            if let Some(a) = at(g, openresty_gc64().vm.g_cur_l) {
                mem.insert(a, cur_l);
            }
            if let Some(a) = at(cur_l, openresty_gc64().vm.l_glref) {
                mem.entry(a).or_insert(back);
            }
            let mem = Words(mem);
            let got = verify(&mem, g, &openresty_gc64().vm, &code);
            let in_code = code.is_empty() || code.iter().any(|&(s, e)| dispatch >= s && dispatch < e);
            let read = |a: Option<u64>| a.and_then(|a| mem.read_u64(a));
            let want = read(at(g, openresty_gc64().vm.g2disp)).is_some()
                && in_code
                && read(at(g, openresty_gc64().vm.g_cur_l)).is_some_and(|l| l != 0 && read(at(l, openresty_gc64().vm.l_glref)) == Some(g));
            prop_assert_eq!(got, want);
        }
    }
}
