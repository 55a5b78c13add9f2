//! The references an object holds, as the collector's traversal follows them
//! (`gc_traverse_tab`, `_func`, `_proto`, `_thread`, upvalues, userdata), with
//! what each is called, so a path from a root can be written out.

use super::objects::{Kind, Obj, Vm};
use crate::lua::Memory;

/// How a parent holds a child.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Edge {
    /// Slot `i` of a table's array part.
    Index(u32),
    /// The value under this key (the key's raw `TValue`) in the hash part.
    Key(u64),
    /// A key object itself.
    KeyOf,
    Metatable,
    Env,
    Prototype,
    /// A Lua function's upvalue `i` (named by its prototype's debug info).
    Upvalue(u32),
    /// A C function's upvalue `i`.
    CUpvalue(u32),
    /// What a closed upvalue holds.
    Value,
    /// A slot of a coroutine's stack.
    Stack(u32),
    /// A prototype's constant (a string, a template table, a nested function).
    Constant,
}

/// `TValue` in GC64: the type in the top 17 bits, a GC pointer in the low 47.
pub fn tv_gc(v: u64) -> Option<u64> {
    let itype = ((v as i64) >> 47) as u32;
    // LJ_TUDATA (~12) ..= LJ_TSTR (~4): the collectable types.
    (0xFFFF_FFF3..=0xFFFF_FFFB).contains(&itype).then_some(v & ((1 << 47) - 1))
}

pub fn tv_itype(v: u64) -> u32 {
    ((v as i64) >> 47) as u32
}

pub const TV_NIL: u64 = u64::MAX;

/// Largest array read at once: a table's parts can be bigger than one read allows.
const CHUNK_ITEMS: u64 = 1 << 16;

/// Calls `f(i, item)` for `count` items of `size` bytes from `addr`, read a
/// chunk at a time; stops at the first chunk that cannot be read.
fn chunked<M: Memory>(mem: &M, addr: u64, count: u64, size: u64, mut f: impl FnMut(u64, &[u8])) {
    let mut done = 0;
    while done < count {
        let n = (count - done).min(CHUNK_ITEMS);
        let Some(at) = (done * size).checked_add(addr) else { return };
        let Some(bytes) = mem.read_bytes(at, (n * size) as usize) else { return };
        for (i, item) in bytes.chunks_exact(size as usize).enumerate() {
            f(done + i as u64, item);
        }
        done += n;
    }
}

impl<M: Memory> Vm<'_, M> {
    /// Calls `f(child, edge)` for each reference `o` holds that keeps its
    /// child alive (a weak table's weak side is left out).
    pub fn edges(&self, o: &Obj, f: &mut impl FnMut(u64, Edge)) {
        let (l, h, mem) = (self.l, self.h, self.mem);
        let a = o.addr;
        match o.kind {
            Kind::Table => {
                let Some(hdr) = mem.read_bytes(a, h.tab_size as usize) else { return };
                let u64_at = |off: u64| u64::from_ne_bytes(hdr[off as usize..off as usize + 8].try_into().expect("8"));
                let u32_at = |off: u64| u32::from_ne_bytes(hdr[off as usize..off as usize + 4].try_into().expect("4"));
                let marked = hdr[h.marked as usize];
                let meta = u64_at(l.tab_meta);
                if meta != 0 {
                    f(meta, Edge::Metatable);
                }
                let asize = u64::from(u32_at(h.tab_asize));
                if asize > 0 && marked & h.weakval == 0 {
                    chunked(mem, u64_at(h.tab_array), asize, 8, |i, v| {
                        if let Some(c) = tv_gc(u64::from_ne_bytes(v.try_into().expect("8"))) {
                            f(c, Edge::Index(i as u32));
                        }
                    });
                }
                let hmask = u64::from(u32_at(l.tab_hmask));
                if hmask > 0 {
                    chunked(mem, u64_at(l.tab_node), hmask + 1, l.node_size, |_, n| {
                        let val = u64::from_ne_bytes(n[l.node_val as usize..][..8].try_into().expect("8"));
                        let key = u64::from_ne_bytes(n[l.node_key as usize..][..8].try_into().expect("8"));
                        if val == TV_NIL {
                            return;
                        }
                        if marked & h.weakkey == 0 {
                            if let Some(c) = tv_gc(key) {
                                f(c, Edge::KeyOf);
                            }
                        }
                        if marked & h.weakval == 0 {
                            if let Some(c) = tv_gc(val) {
                                f(c, Edge::Key(key));
                            }
                        }
                    });
                }
            }
            Kind::LuaFunction => {
                let Some(hdr) = mem.read_bytes(a, o.size as usize) else { return };
                let at = |off: u64| hdr.get(off as usize..off as usize + 8).map(|b| u64::from_ne_bytes(b.try_into().expect("8")));
                if let Some(env) = at(l.func_env).filter(|&e| e != 0) {
                    f(env, Edge::Env);
                }
                if let Some(pc) = at(l.func_pc) {
                    f(pc.wrapping_sub(l.proto_size), Edge::Prototype);
                }
                let n = u64::from(hdr[l.func_nupvalues as usize]);
                for i in 0..n {
                    if let Some(uv) = at(l.func_uvptr + 8 * i).filter(|&u| u != 0) {
                        f(uv, Edge::Upvalue(i as u32));
                    }
                }
            }
            Kind::CFunction => {
                let Some(hdr) = mem.read_bytes(a, o.size as usize) else { return };
                let at = |off: u64| hdr.get(off as usize..off as usize + 8).map(|b| u64::from_ne_bytes(b.try_into().expect("8")));
                if let Some(env) = at(l.func_env).filter(|&e| e != 0) {
                    f(env, Edge::Env);
                }
                let n = u64::from(hdr[l.func_nupvalues as usize]);
                for i in 0..n {
                    if let Some(c) = at(h.cfunc_upvalue + 8 * i).and_then(tv_gc) {
                        f(c, Edge::CUpvalue(i as u32));
                    }
                }
            }
            Kind::Upvalue => {
                // An open upvalue's value is a stack slot, reached from its thread.
                if mem.read_u8(a + h.uv_closed).unwrap_or(0) != 0 {
                    if let Some(c) = mem.read_u64(a + h.uv_tv).and_then(tv_gc) {
                        f(c, Edge::Value);
                    }
                }
            }
            Kind::Prototype => {
                if let Some(name) = mem.read_u64(a + l.proto_chunkname).filter(|&n| n != 0) {
                    f(name, Edge::Constant);
                }
                let (Some(k), Some(n)) = (mem.read_u64(a + l.proto_k), mem.read_u32(a + l.proto_sizekgc)) else { return };
                let n = u64::from(n).min(1 << 16);
                let Some(kgc) = k.checked_sub(n * 8).and_then(|lo| mem.read_bytes(lo, (n * 8) as usize)) else { return };
                for c in kgc.chunks_exact(8) {
                    let c = u64::from_ne_bytes(c.try_into().expect("8"));
                    if c != 0 {
                        f(c, Edge::Constant);
                    }
                }
            }
            Kind::Thread => {
                if let Some(env) = mem.read_u64(a + h.th_env).filter(|&e| e != 0) {
                    f(env, Edge::Env);
                }
                let (Some(stack), Some(top)) = (mem.read_u64(a + h.th_stack), mem.read_u64(a + h.th_top)) else { return };
                let first = stack + 8 * (1 + u64::from(l.fr2));
                let Some(len) = top.checked_sub(first) else { return };
                chunked(mem, first, len / 8, 8, |i, v| {
                    if let Some(c) = tv_gc(u64::from_ne_bytes(v.try_into().expect("8"))) {
                        f(c, Edge::Stack(i as u32));
                    }
                });
            }
            Kind::Userdata => {
                for (off, edge) in [(h.ud_meta, Edge::Metatable), (h.ud_env, Edge::Env)] {
                    if let Some(c) = mem.read_u64(a + off).filter(|&c| c != 0) {
                        f(c, edge);
                    }
                }
            }
            Kind::String | Kind::Cdata | Kind::Trace => {}
        }
    }
}
