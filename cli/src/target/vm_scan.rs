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

/// The VM of process `pid`: a `G` whose main thread (just before it in
/// `GG_State`) links back to it, whose dispatch table points into LuaJIT's code
/// (`luajit_code`), and whose running coroutine links back to it too.
pub fn find_global_state(pid: u32, maps: &[Mapping], layout: &VmLayout, luajit_code: &[(u64, u64)]) -> Option<u64> {
    let mem = ProcMem::open(pid).ok()?;
    let mut scanned = 0u64;
    let private_data = maps.iter().filter(|m| {
        m.perms.starts_with("rw") && m.perms.ends_with('p') && matches!(m.path.as_deref(), None | Some("[heap]"))
    });
    let mut buf = vec![0u8; CHUNK];
    for m in private_data {
        let mut at = m.start;
        while at < m.end && scanned < MAX_SCAN {
            let len = ((m.end - at) as usize).min(CHUNK);
            if mem.read(at, &mut buf[..len]) {
                for g in candidates(at, &buf[..len], layout) {
                    if verify(&mem, g, layout, luajit_code) {
                        return Some(g);
                    }
                }
            }
            scanned += len as u64;
            at += len as u64;
        }
    }
    None
}

/// Every `G` in `bytes` (read from `base`) for which `mainthread->glref == G`,
/// with `mainthread = G - gg_g`: one comparison per word.
fn candidates<'a>(base: u64, bytes: &'a [u8], layout: &VmLayout) -> impl Iterator<Item = u64> + 'a {
    let shift = layout.gg_g as u64;
    let glref = layout.l_glref as u64;
    bytes.chunks_exact(8).enumerate().filter_map(move |(i, w)| {
        let at = base + 8 * i as u64;
        let value = u64::from_ne_bytes(w.try_into().ok()?);
        let g = at.checked_sub(glref)? + shift;
        (value == g).then_some(g)
    })
}

fn verify(mem: &impl Memory, g: u64, layout: &VmLayout, luajit_code: &[(u64, u64)]) -> bool {
    let in_code = |a: u64| luajit_code.iter().any(|&(s, e)| a >= s && a < e);
    let dispatch_ok = match mem.read_u64(g + layout.g2disp as u64) {
        Some(first) => luajit_code.is_empty() || in_code(first),
        None => false,
    };
    let cur_l = mem.read_u64(g + layout.g_cur_l as u64).unwrap_or(0);
    dispatch_ok && cur_l != 0 && mem.read_u64(cur_l + layout.l_glref as u64) == Some(g)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::layout::OPENRESTY_21_GC64_X86_64 as L;

    #[test]
    fn finds_the_main_thread_back_link() {
        let base = 0x7f00_0000_0000u64;
        let mut bytes = vec![0u8; 4096];
        let main_thread = base + 0x100;
        let g = main_thread + L.gg_g as u64;
        let at = (main_thread + L.l_glref as u64 - base) as usize;
        bytes[at..at + 8].copy_from_slice(&g.to_ne_bytes());
        // A pointer to elsewhere is not a back link.
        bytes[0x800..0x808].copy_from_slice(&(base + 0x900).to_ne_bytes());
        assert_eq!(candidates(base, &bytes, &L).collect::<Vec<_>>(), vec![g]);
    }
}
