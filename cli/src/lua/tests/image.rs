//! A fake address space and a builder of synthetic LuaJIT objects in it, laid
//! out as OpenResty's GC64 build (`cli/layouts/openresty-2.1-gc64-x86_64.toml`) says, so the resolver can be tested without a target.

use std::collections::BTreeMap;

use crate::lua::{bc::Op, layout::ObjLayout, mem::Memory};

pub static L: std::sync::LazyLock<ObjLayout> =
    std::sync::LazyLock::new(|| crate::target::known_builds::openresty_gc64().obj);

/// Mapped regions; a read must fall inside one.
#[derive(Default, Clone, Debug)]
pub struct FakeMem {
    regions: BTreeMap<u64, Vec<u8>>,
}

impl FakeMem {
    pub fn put(&mut self, addr: u64, bytes: Vec<u8>) {
        self.regions.insert(addr, bytes);
    }

    pub fn addrs(&self) -> Vec<u64> {
        self.regions.keys().copied().collect()
    }

    pub fn region_mut(&mut self, addr: u64) -> Option<&mut Vec<u8>> {
        self.regions.get_mut(&addr)
    }
}

impl Memory for FakeMem {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let Some((&start, data)) = self.regions.range(..=addr).next_back() else {
            return false;
        };
        let Some(range) = usize::try_from(addr - start).ok().and_then(|off| Some(off..off.checked_add(buf.len())?))
        else {
            return false;
        };
        match data.get(range) {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    }
}

pub fn ins_ad(op: Op, a: u32, d: u32) -> u32 {
    u32::from(L.opcode(op).expect("opcode in table")) | (a << 8) | (d << 16)
}

pub fn ins_abc(op: Op, a: u32, b: u32, c: u32) -> u32 {
    u32::from(L.opcode(op).expect("opcode in table")) | (a << 8) | (c << 16) | (b << 24)
}

/// A local variable for varinfo: `name` (or an internal `VARNAME_*` code
/// given as "\u{1}".."\u{6}") live on [start, end).
pub struct VarSpec<'a> {
    pub name: &'a str,
    pub start: u32,
    pub end: u32,
}

#[derive(Default)]
pub struct ProtoSpec<'a> {
    pub chunkname: &'a str,
    pub firstline: i32,
    /// Without the header instruction: `bc[0]` is FUNCF, added by the builder.
    pub bc: Vec<u32>,
    /// String constants; `kstr[i]` is constant `~i`, as GGET/TGETS name it.
    pub kstr: Vec<&'a str>,
    pub uvnames: Vec<&'a str>,
    pub vars: Vec<VarSpec<'a>>,
}

/// Objects are bump-allocated apart from each other, so a read past an
/// object's end fails like a read of unmapped memory would.
pub struct Image {
    pub mem: FakeMem,
    next: u64,
}

impl Default for Image {
    fn default() -> Self {
        Self { mem: FakeMem::default(), next: 0x7f00_0000_1000 }
    }
}

fn put_u8(buf: &mut [u8], off: u64, v: u8) {
    buf[off as usize] = v;
}
fn put_u32(buf: &mut [u8], off: u64, v: u32) {
    buf[off as usize..off as usize + 4].copy_from_slice(&v.to_ne_bytes());
}
fn put_u64(buf: &mut [u8], off: u64, v: u64) {
    buf[off as usize..off as usize + 8].copy_from_slice(&v.to_ne_bytes());
}

fn uleb(out: &mut Vec<u8>, mut v: u32) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

impl Image {
    pub fn alloc(&mut self, bytes: Vec<u8>) -> u64 {
        let addr = self.next;
        self.next += (bytes.len() as u64 + 0x40 + 0xf) & !0xf;
        self.mem.put(addr, bytes);
        addr
    }

    pub fn string(&mut self, s: &str) -> u64 {
        let mut buf = vec![0; L.str_data as usize];
        put_u8(&mut buf, L.gct, L.gct_str);
        put_u32(&mut buf, L.str_len, s.len() as u32);
        buf.extend_from_slice(s.as_bytes());
        buf.push(0);
        self.alloc(buf)
    }

    /// A proto laid out as `fs_finish` does: header, bytecode, GC constants
    /// below `k`, then upvalue names and varinfo.
    pub fn proto(&mut self, spec: &ProtoSpec) -> u64 {
        let chunkname = self.string(spec.chunkname);
        let kgc: Vec<u64> = spec.kstr.iter().map(|s| self.string(s)).collect();

        let mut bc = vec![ins_ad(Op::Funcf, 0, 0)];
        bc.extend(&spec.bc);
        let mut buf = vec![0u8; L.proto_size as usize];
        for ins in &bc {
            buf.extend_from_slice(&ins.to_ne_bytes());
        }
        // As in fs_finish, alignment padding goes between bytecode and constants.
        while !(buf.len() + kgc.len() * 8).is_multiple_of(8) {
            buf.push(0);
        }
        for gcref in kgc.iter().rev() {
            buf.extend_from_slice(&gcref.to_ne_bytes());
        }
        let k_off = buf.len() as u64;
        let uvinfo_off = buf.len() as u64;
        for name in &spec.uvnames {
            buf.extend_from_slice(name.as_bytes());
            buf.push(0);
        }
        let varinfo_off = buf.len() as u64;
        let mut lastpc = 0;
        for v in &spec.vars {
            buf.extend_from_slice(v.name.as_bytes());
            if v.name.len() > 1 || v.name.as_bytes()[0] > 6 {
                buf.push(0);
            }
            uleb(&mut buf, v.start - lastpc);
            uleb(&mut buf, v.end - v.start);
            lastpc = v.start;
        }
        buf.push(0);

        let addr = self.next;
        let sizept = buf.len() as u32;
        put_u8(&mut buf, L.gct, L.gct_proto);
        put_u32(&mut buf, L.proto_sizebc, bc.len() as u32);
        put_u64(&mut buf, L.proto_k, addr + k_off);
        put_u32(&mut buf, L.proto_sizekgc, kgc.len() as u32);
        put_u32(&mut buf, L.proto_sizept, sizept);
        put_u8(&mut buf, L.proto_sizeuv, spec.uvnames.len() as u8);
        put_u64(&mut buf, L.proto_chunkname, chunkname);
        put_u32(&mut buf, L.proto_firstline, spec.firstline as u32);
        if !spec.uvnames.is_empty() {
            put_u64(&mut buf, L.proto_uvinfo, addr + uvinfo_off);
        }
        if !spec.vars.is_empty() {
            put_u64(&mut buf, L.proto_varinfo, addr + varinfo_off);
        }
        let got = self.alloc(buf);
        assert_eq!(got, addr);
        addr
    }

    fn func(&mut self, ffid: u8, word32: u64, word40: u64) -> u64 {
        let mut buf = vec![0u8; L.func_read];
        put_u8(&mut buf, L.gct, L.gct_func);
        put_u8(&mut buf, L.func_ffid, ffid);
        put_u64(&mut buf, L.func_pc, word32);
        put_u64(&mut buf, L.func_cfunc, word40);
        self.alloc(buf)
    }

    pub fn lua_func(&mut self, proto: u64) -> u64 {
        self.func(L.ffid_lua, proto + L.proto_size, 0)
    }

    pub fn c_func(&mut self, f: u64) -> u64 {
        self.func(L.ffid_c, 0, f)
    }

    pub fn builtin(&mut self, ffid: u8) -> u64 {
        self.func(ffid, 0, 0)
    }
}

/// Frame link of a call returning to instruction `pos + 1` of `proto` (i.e.
/// the call is at `pos`, counting FUNCF as 0).
pub fn ret_link(proto: u64, pos: u32) -> u64 {
    proto + L.proto_size + u64::from(pos + 1) * L.bcins_size
}
