//! GCproto: the header (for labels) and the colocated bytecode, constants and
//! debug info (for naming call sites), each checked for plausibility.

use super::{
    layout::ObjLayout,
    mem::{buf_i32, buf_u32, buf_u8, Memory},
};

/// Beyond this many instructions the header is garbage (the brief's bound; LuaJIT's parser stops far earlier).
pub const MAX_SIZEBC: u32 = 1 << 24;

/// Largest proto allocation read for naming: bytecode, constants and debug info.
pub const MAX_PROTO_BYTES: u64 = 16 << 20;

/// GC constants per proto: `BCMAX_D + 1`, as operands index them with 16 bits
/// (`fs_fixup_k` refuses more). A larger `sizekgc` is garbage.
pub const MAX_KGC: u32 = 1 << 16;

/// varinfo entries decoded per proto: the parser's variable stack holds at most
/// `LJ_MAX_VSTACK` (65536 - LJ_MAX_UPVAL) of them, so more means garbage.
pub const MAX_VARS: usize = 1 << 16;

/// Names of LuaJIT's internal variables, by `VARNAME_*` code (lj_debug.h); 0 ends the list.
const INTERNAL_VARNAMES: [&str; 6] =
    ["(for index)", "(for limit)", "(for step)", "(for generator)", "(for state)", "(for control)"];

/// The GCproto header fields we use.
#[derive(Debug, Clone)]
pub struct ProtoHeader {
    pub addr: u64,
    pub sizebc: u32,
    pub sizept: u32,
    pub k: u64,
    pub sizekgc: u32,
    pub sizeuv: u8,
    pub chunkname: u64,
    pub firstline: i32,
    pub numline: i32,
    pub lineinfo: u64,
    pub uvinfo: u64,
    pub varinfo: u64,
}

impl ProtoHeader {
    pub fn read<M: Memory>(mem: &M, l: &ObjLayout, addr: u64) -> Option<Self> {
        let hdr = mem.read_bytes(addr, usize::try_from(l.proto_size).ok()?)?;
        if buf_u8(&hdr, l.gct)? != l.gct_proto {
            return None;
        }
        let sizebc = buf_u32(&hdr, l.proto_sizebc)?;
        if sizebc == 0 || sizebc > MAX_SIZEBC {
            return None;
        }
        Some(Self {
            addr,
            sizebc,
            sizept: buf_u32(&hdr, l.proto_sizept)?,
            k: l.buf_ref(&hdr, l.proto_k)?,
            sizekgc: buf_u32(&hdr, l.proto_sizekgc)?,
            sizeuv: buf_u8(&hdr, l.proto_sizeuv)?,
            chunkname: l.buf_ref(&hdr, l.proto_chunkname)?,
            firstline: buf_i32(&hdr, l.proto_firstline)?,
            numline: buf_i32(&hdr, l.proto_numline)?,
            lineinfo: l.buf_ref(&hdr, l.proto_lineinfo)?,
            uvinfo: l.buf_ref(&hdr, l.proto_uvinfo)?,
            varinfo: l.buf_ref(&hdr, l.proto_varinfo)?,
        })
    }

    pub fn bc_start(&self, l: &ObjLayout) -> u64 {
        self.addr.wrapping_add(l.proto_size)
    }

    /// Index of the instruction just before return address `ret_pc`: the call
    /// that made the frame. None unless `ret_pc` lies inside this bytecode.
    /// The interpreter's PC register points past the instruction it executes
    /// in the same way, so this finds that instruction too.
    pub fn call_pos(&self, l: &ObjLayout, ret_pc: u64) -> Option<u32> {
        let off = ret_pc.checked_sub(self.bc_start(l))?;
        if off == 0 || off % l.bcins_size != 0 || off > u64::from(self.sizebc) * l.bcins_size {
            return None;
        }
        u32::try_from(off / l.bcins_size - 1).ok()
    }
}

/// A local variable's name and live range, from varinfo.
#[derive(Debug, Clone)]
pub struct Var {
    pub name: String,
    pub start: u32,
    pub end: u32,
}

/// What naming needs from one proto, copied out of the target in one read.
#[derive(Debug, Clone, Default)]
pub struct ProtoDebug {
    pub bc: Vec<u32>,
    /// `kgc[i]` is the GCRef of constant `~i` (`proto_kgc(pt, ~i)`).
    kgc: Vec<u64>,
    /// Source line of each instruction (`bc[i]` is on `lines[i]`), from
    /// lineinfo as `lj_debug_line` reads it; empty without debug info.
    lines: Vec<u32>,
    /// Empty when the proto has no debug info (stripped bytecode).
    uvnames: Vec<String>,
    vars: Vec<Var>,
}

impl ProtoDebug {
    pub fn read<M: Memory>(mem: &M, l: &ObjLayout, h: &ProtoHeader) -> Option<Self> {
        let size = u64::from(h.sizept);
        let bc_end = l.proto_size + u64::from(h.sizebc) * l.bcins_size;
        if size < bc_end || size > MAX_PROTO_BYTES {
            return None;
        }
        let img = mem.read_bytes(h.addr, usize::try_from(size).ok()?)?;
        let bc_bytes = img.get(usize::try_from(l.proto_size).ok()?..usize::try_from(bc_end).ok()?)?;
        let bc = bc_bytes.chunks_exact(4).filter_map(|c| c.try_into().ok()).map(u32::from_ne_bytes).collect();
        let inside = |ptr: u64| ptr.checked_sub(h.addr).filter(|&off| off < size);
        Some(Self {
            bc,
            kgc: inside(h.k).and_then(|k| read_kgc(&img, l, k, h.sizekgc)).unwrap_or_default(),
            lines: inside(h.lineinfo).and_then(|p| parse_lines(&img, p, h)).unwrap_or_default(),
            uvnames: inside(h.uvinfo).map(|p| parse_uvnames(&img, p, h.sizeuv)).unwrap_or_default(),
            vars: inside(h.varinfo).map(|p| parse_vars(&img, p)).unwrap_or_default(),
        })
    }

    pub fn kgc(&self, idx: u32) -> Option<u64> {
        self.kgc.get(idx as usize).copied()
    }

    /// The source line of instruction `pos` (0 is the function header, on
    /// its first line); None without line info or past the end.
    pub fn line(&self, pos: u32) -> Option<u32> {
        self.lines.get(pos as usize).copied()
    }

    /// `lj_debug_uvname`, except that a missing name is None rather than "".
    pub fn uvname(&self, idx: u32) -> Option<&str> {
        self.uvnames.get(idx as usize).map(String::as_str).filter(|n| !n.is_empty())
    }

    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// Approximate heap bytes, for the cache budget.
    pub fn weight(&self) -> usize {
        self.bc.len() * 4
            + self.lines.len() * 4
            + self.kgc.len() * 8
            + self.uvnames.iter().map(|n| n.len() + 24).sum::<usize>()
            + self.vars.iter().map(|v| v.name.len() + 32).sum::<usize>()
    }
}

/// GC constants sit below `k`, the last one (`~(sizekgc-1)`) lowest.
fn read_kgc(img: &[u8], l: &ObjLayout, k_off: u64, sizekgc: u32) -> Option<Vec<u64>> {
    if sizekgc > MAX_KGC || u64::from(sizekgc).checked_mul(l.gcref_size)? > k_off {
        return None;
    }
    (0..u64::from(sizekgc))
        .map(|i| l.buf_ref(img, k_off.checked_sub((i + 1).checked_mul(l.gcref_size)?)?))
        .collect()
}

/// lineinfo holds, for instructions 1.., the line minus `firstline` in 1, 2
/// or 4 bytes as `numline` needs; instruction 0 (the header) is on `firstline`.
fn parse_lines(img: &[u8], off: u64, h: &ProtoHeader) -> Option<Vec<u32>> {
    let first = u32::try_from(h.firstline).ok()?;
    let width = match h.numline {
        n if n < 0 => return None,
        n if n < 256 => 1,
        n if n < 65536 => 2,
        _ => 4,
    };
    let start = usize::try_from(off).ok()?;
    let n = usize::try_from(h.sizebc).ok()?.checked_sub(1)?;
    let bytes = img.get(start..start.checked_add(n.checked_mul(width)?)?)?;
    let mut lines = Vec::with_capacity(n + 1);
    lines.push(first);
    for c in bytes.chunks_exact(width) {
        let delta = match width {
            1 => u32::from(c[0]),
            2 => u32::from(u16::from_ne_bytes([c[0], c[1]])),
            _ => u32::from_ne_bytes([c[0], c[1], c[2], c[3]]),
        };
        lines.push(first.checked_add(delta)?);
    }
    Some(lines)
}

fn parse_uvnames(img: &[u8], off: u64, sizeuv: u8) -> Vec<String> {
    let Ok(mut p) = usize::try_from(off) else { return Vec::new() };
    let mut names = Vec::new();
    for _ in 0..sizeuv {
        let Some((name, next)) = cstr(img, p) else { break };
        names.push(name);
        p = next;
    }
    names
}

/// Decodes varinfo as `debug_varname` walks it: entries in order of start pc,
/// each a name (or an internal code), then ULEB128 start delta and length.
fn parse_vars(img: &[u8], off: u64) -> Vec<Var> {
    let Ok(mut p) = usize::try_from(off) else { return Vec::new() };
    let mut vars = Vec::new();
    let mut lastpc = 0u32;
    // Each entry takes at least three bytes, so the image length bounds the
    // loop; MAX_VARS bounds what a garbage image full of 3-byte entries costs.
    while let Some(&vn) = img.get(p).filter(|_| vars.len() < MAX_VARS) {
        let name = if (vn as usize) <= INTERNAL_VARNAMES.len() {
            if vn == 0 {
                break;
            }
            p += 1;
            INTERNAL_VARNAMES[vn as usize - 1].to_string()
        } else {
            let Some((name, next)) = cstr(img, p) else { break };
            p = next;
            name
        };
        let (Some(start), Some(len)) = (uleb128(img, &mut p), uleb128(img, &mut p)) else { break };
        let start = lastpc.wrapping_add(start);
        lastpc = start;
        vars.push(Var { name, start, end: start.wrapping_add(len) });
    }
    vars
}

/// NUL-terminated string at `p`, and the offset after its NUL.
fn cstr(img: &[u8], p: usize) -> Option<(String, usize)> {
    let rest = img.get(p..)?;
    let len = rest.iter().position(|&b| b == 0)?;
    Some((String::from_utf8_lossy(&rest[..len]).into_owned(), p.checked_add(len)?.checked_add(1)?))
}

/// `lj_buf_ruleb128`: at most five bytes make a u32.
fn uleb128(img: &[u8], p: &mut usize) -> Option<u32> {
    let mut v = 0u32;
    for shift in (0..35).step_by(7) {
        let b = *img.get(*p)?;
        *p = p.checked_add(1)?;
        v |= u32::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}
