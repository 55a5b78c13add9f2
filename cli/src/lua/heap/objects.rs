//! Every GC object of a VM, found the way the collector's sweep finds them:
//! the `gc.root` list (everything but strings), the string table's chains,
//! the ring of open upvalues and the finalizer ring; each with the bytes the
//! allocator gave it.

use serde::Serialize;

use crate::lua::{
    mem::{buf_u32, buf_u64, buf_u8},
    GcLayout, HeapLayout, Memory, ObjLayout,
};
use crate::target::known_builds::BuildLayout;

/// Types as `ljprobe heap` counts them: a Lua function and a C function apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Table,
    String,
    LuaFunction,
    CFunction,
    Upvalue,
    Prototype,
    Thread,
    Userdata,
    Cdata,
    Trace,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::Table,
        Kind::String,
        Kind::LuaFunction,
        Kind::CFunction,
        Kind::Upvalue,
        Kind::Prototype,
        Kind::Thread,
        Kind::Userdata,
        Kind::Cdata,
        Kind::Trace,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Table => "table",
            Kind::String => "string",
            Kind::LuaFunction => "Lua function",
            Kind::CFunction => "C function",
            Kind::Upvalue => "upvalue",
            Kind::Prototype => "prototype",
            Kind::Thread => "thread",
            Kind::Userdata => "userdata",
            Kind::Cdata => "cdata",
            Kind::Trace => "trace",
        }
    }
}

/// One object: 16 bytes, so ten million fit in 160 MB.
#[derive(Debug, Clone, Copy)]
pub struct Obj {
    pub addr: u64,
    pub size: u32,
    pub kind: Kind,
}

/// Strings by length: class `i` holds lengths in `[2^i, 2^(i+1))`, class 0 also 0.
pub const LEN_CLASSES: usize = 32;

pub fn len_class(len: u32) -> usize {
    (32 - len.leading_zeros()).saturating_sub(1) as usize
}

/// What the lists held, sorted by address for lookups.
#[derive(Debug, Default)]
pub struct Objects {
    pub objs: Vec<Obj>,
    pub str_count: [u64; LEN_CLASSES],
    pub str_bytes: [u64; LEN_CLASSES],
    /// Bytes of the string table itself (`(mask+1) * sizeof(GCRef)`).
    pub strtab_bytes: u64,
    /// Strings the VM says it has (`str.num`), to compare with what was found.
    pub strnum: u32,
    /// Lists that ended on something that is not an object (a copy taken
    /// while the target ran, or a layout that does not fit).
    pub broken_lists: u32,
    pub mainthread: u64,
}

impl Objects {
    pub fn index(&self, addr: u64) -> Option<usize> {
        self.objs.binary_search_by_key(&addr, |o| o.addr).ok()
    }
}

/// Layouts and the memory the walk reads.
pub struct Vm<'a, M: Memory> {
    pub mem: &'a M,
    pub l: &'a ObjLayout,
    pub h: &'a HeapLayout,
    pub gc: &'a GcLayout,
    pub g: u64,
}

/// No list is longer than the heap could hold at 16 bytes an object; a list
/// that is (a cycle read from a moving heap) stops there.
fn max_objects(total: u64) -> u64 {
    total / 16 + 1_000_000
}

impl<'a, M: Memory> Vm<'a, M> {
    /// The VM at `g` read through `mem`, as `build` lays it out.
    pub fn new(mem: &'a M, build: &'a BuildLayout, g: u64) -> Self {
        Vm { mem, l: &build.obj, h: &build.heap, gc: &build.gc, g }
    }
}

impl<M: Memory> Vm<'_, M> {
    pub fn gcref(&self, addr: u64) -> Option<u64> {
        self.mem.read_u64(addr)
    }

    /// Every object, with `total` (`gc.total`) bounding how many there can be.
    pub fn objects(&self, total: u64) -> Objects {
        let mut out = Objects { mainthread: self.gcref(self.g + self.h.g_mainthref).unwrap_or(0), ..Default::default() };
        let limit = max_objects(total);
        // The root list.
        let mut at = self.gcref(self.g + self.h.g_root).unwrap_or(0);
        let mut n = 0;
        while at != 0 && n < limit {
            match self.object(at, &mut out) {
                Some(next) => at = next,
                None => {
                    out.broken_lists += 1;
                    break;
                }
            }
            n += 1;
        }
        self.strings(&mut out, limit);
        self.open_upvalues(&mut out, limit);
        self.finalizer_ring(&mut out, limit);
        out.objs.sort_unstable_by_key(|o| o.addr);
        out.objs.dedup_by_key(|o| o.addr);
        out
    }

    fn strings(&self, out: &mut Objects, limit: u64) {
        let h = self.h;
        let (Some(tab), Some(mask), Some(num)) = (
            self.gcref(self.g + h.g_strtab),
            self.mem.read_u32(self.g + h.g_strmask),
            self.mem.read_u32(self.g + h.g_strnum),
        ) else {
            out.broken_lists += 1;
            return;
        };
        out.strnum = num;
        let slots = u64::from(mask) + 1;
        out.strtab_bytes = slots * 8;
        let Some(table) = self.mem.read_bytes(tab, (slots * 8) as usize) else {
            out.broken_lists += 1;
            return;
        };
        let mut n = 0u64;
        for slot in table.chunks_exact(8) {
            let mut at = u64::from_ne_bytes(slot.try_into().expect("8 bytes")) & !1;
            while at != 0 && n < limit {
                n += 1;
                let Some(hdr) = self.mem.read_bytes(at, self.l.str_data as usize) else {
                    out.broken_lists += 1;
                    break;
                };
                if buf_u8(&hdr, self.l.gct) != Some(self.l.gct_str) {
                    out.broken_lists += 1;
                    break;
                }
                let len = buf_u32(&hdr, self.l.str_len).unwrap_or(0);
                let size = str_size(self.l, len);
                let class = len_class(len).min(LEN_CLASSES - 1);
                out.str_count[class] += 1;
                out.str_bytes[class] += size;
                out.objs.push(Obj { addr: at, size: clamp(size), kind: Kind::String });
                at = buf_u64(&hdr, 0).unwrap_or(0);
            }
        }
    }

    /// Open upvalues are on no GC list: they live in the ring at `g.uvhead`.
    fn open_upvalues(&self, out: &mut Objects, limit: u64) {
        let head = self.g + self.h.g_uvhead;
        let mut at = self.gcref(head + self.h.uv_next).unwrap_or(head);
        let mut n = 0;
        while at != head && at != 0 && n < limit {
            if self.mem.read_u8(at + self.l.gct) != Some(self.h.gct_upval) {
                out.broken_lists += 1;
                return;
            }
            out.objs.push(Obj { addr: at, size: clamp(self.h.uv_size), kind: Kind::Upvalue });
            at = self.gcref(at + self.h.uv_next).unwrap_or(0);
            n += 1;
        }
    }

    /// Userdata and cdata whose finalizer is due: moved off `gc.root` to a ring.
    fn finalizer_ring(&self, out: &mut Objects, limit: u64) {
        let Some(last) = self.gcref(self.g + self.h.g_mmudata).filter(|&a| a != 0) else { return };
        let mut at = self.gcref(last).unwrap_or(0);
        let mut n = 0;
        while at != 0 && n < limit {
            if self.object(at, out).is_none() {
                out.broken_lists += 1;
                return;
            }
            if at == last {
                return;
            }
            at = self.gcref(at).unwrap_or(0);
            n += 1;
        }
    }

    /// Records the object at `addr` and returns its `nextgc` (0 at the end).
    fn object(&self, addr: u64, out: &mut Objects) -> Option<u64> {
        let (kind, size) = self.kind_and_size(addr, out.mainthread)?;
        out.objs.push(Obj { addr, size: clamp(size), kind });
        self.gcref(addr)
    }

    /// The object's type and the bytes `lj_*_free` would hand back for it.
    pub fn kind_and_size(&self, addr: u64, mainthread: u64) -> Option<(Kind, u64)> {
        let (l, h, mem) = (self.l, self.h, self.mem);
        let gct = mem.read_u8(addr + l.gct)?;
        let u32_at = |off: u64| mem.read_u32(addr + off);
        let u8_at = |off: u64| mem.read_u8(addr + off);
        Some(if gct == h.gct_tab {
            let colo = u8_at(h.tab_colo)? as i8;
            let asize = u64::from(u32_at(h.tab_asize)?);
            let hmask = u64::from(u32_at(l.tab_hmask)?);
            let mut size = if colo != 0 { h.tab_size + u64::from(colo as u8 & 0x7f) * h.tvalue_size } else { h.tab_size };
            if asize > 0 && colo <= 0 {
                size += asize * h.tvalue_size;
            }
            if hmask > 0 {
                size += (hmask + 1) * l.node_size;
            }
            (Kind::Table, size)
        } else if gct == l.gct_func {
            let n = u64::from(u8_at(l.func_nupvalues)?);
            if u8_at(l.func_ffid)? == l.ffid_lua {
                (Kind::LuaFunction, h.lfunc_base + 8 * n)
            } else {
                (Kind::CFunction, h.cfunc_base + 8 * n)
            }
        } else if gct == l.gct_str {
            (Kind::String, str_size(l, u32_at(l.str_len)?))
        } else if gct == h.gct_upval {
            (Kind::Upvalue, h.uv_size)
        } else if gct == l.gct_proto {
            (Kind::Prototype, u64::from(u32_at(l.proto_sizept)?))
        } else if gct == h.gct_thread {
            let stack = u64::from(u32_at(h.th_stacksize)?) * h.tvalue_size;
            // The main thread lives inside GG_State, counted on its own.
            (Kind::Thread, if addr == mainthread { stack } else { h.th_size + stack })
        } else if gct == h.gct_udata {
            (Kind::Userdata, h.ud_size + u64::from(u32_at(h.ud_len)?))
        } else if gct == h.gct_cdata {
            (Kind::Cdata, self.cdata_size(addr)?)
        } else if gct == l.trace.gct_trace {
            let t = &l.trace;
            let nins = u64::from(u32_at(t.trace_nins)?);
            let nk = u64::from(u32_at(t.trace_nk)?);
            let nsnap = u64::from(mem.read_array::<2>(addr + t.trace_nsnap).map(u16::from_ne_bytes)?);
            let nsnapmap = u64::from(u32_at(t.trace_nsnapmap)?);
            let ir = nins.checked_sub(nk)? * t.irins_size;
            (Kind::Trace, t.trace_size + ir + nsnap * t.snap_size + nsnapmap * t.snapentry_size)
        } else {
            return None;
        })
    }

    /// `lj_cdata_free`'s size: a variable-length one says it in the
    /// `GCcdataVar` before it; a fixed one is its C type's size.
    fn cdata_size(&self, addr: u64) -> Option<u64> {
        let (h, mem) = (self.h, self.mem);
        if mem.read_u8(addr + h.marked)? & h.cd_var != 0 {
            let var = mem.read_array::<8>(addr.checked_sub(8)?)?;
            let extra = u64::from(u16::from_ne_bytes([var[2], var[3]]));
            let len = u64::from(u32::from_ne_bytes([var[4], var[5], var[6], var[7]]));
            return Some(len + extra);
        }
        let id = u64::from(mem.read_array::<2>(addr + h.cd_ctypeid).map(u16::from_ne_bytes)?);
        let cts = self.gcref(self.g + h.g_ctype_state)?;
        let tab = self.gcref(cts + h.cts_tab)?;
        let mut ct = tab + id * h.ctype_size;
        // ctype_raw: attributes wrap the type they qualify.
        for _ in 0..8 {
            let info = mem.read_u32(ct + h.ctype_info)?;
            let ty = info >> 28;
            if ty == 8 {
                ct = tab + u64::from(info & 0xffff) * h.ctype_size;
                continue;
            }
            // Types up to CT_ENUM (5) have a size; functions and externs are pointers.
            let size = if ty <= 5 { u64::from(mem.read_u32(ct + h.ctype_sizefield)?) } else { 8 };
            return Some(h.cd_size + size);
        }
        None
    }
}

/// `lj_str_size`: the header, the characters and a NUL, padded to 4 bytes
/// (the hash reads the data a word at a time).
fn str_size(l: &ObjLayout, len: u32) -> u64 {
    l.str_data + ((u64::from(len) + 4) & !3)
}

fn clamp(size: u64) -> u32 {
    u32::try_from(size).unwrap_or(u32::MAX)
}
