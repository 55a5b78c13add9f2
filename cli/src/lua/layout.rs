//! Where one LuaJIT build keeps the objects we read. Everything that depends on
//! the build (struct offsets, type tags, opcode numbering) lives in one
//! `ObjLayout` value so another build can be supported by adding a constant.

use super::bc::Op;

/// Byte offsets (from the object's start) and build constants of one LuaJIT build.
#[derive(Debug, Clone, Copy)]
pub struct ObjLayout {
    /// `GCHeader.gct`: the type tag, `~LJ_Txxx`.
    pub gct: u64,
    pub gct_str: u8,
    pub gct_proto: u8,
    pub gct_func: u8,

    pub func_ffid: u64,
    pub func_nupvalues: u64,
    pub func_env: u64,
    /// `GCfuncL.pc`: first instruction of the proto's bytecode.
    pub func_pc: u64,
    /// `GCfuncC.f`.
    pub func_cfunc: u64,
    /// Bytes read per GCfunc: enough for every field above.
    pub func_read: usize,
    /// `ffid` of Lua functions; `ffid_c` for C functions; larger ids are fast functions.
    pub ffid_lua: u8,
    pub ffid_c: u8,

    /// `sizeof(GCproto)`: the bytecode starts right after the header.
    pub proto_size: u64,
    pub proto_sizebc: u64,
    pub proto_k: u64,
    pub proto_uv: u64,
    pub proto_sizekgc: u64,
    pub proto_sizekn: u64,
    /// Total size of the proto allocation; bytecode, constants and debug info are colocated in it.
    pub proto_sizept: u64,
    pub proto_sizeuv: u64,
    pub proto_chunkname: u64,
    pub proto_firstline: u64,
    pub proto_numline: u64,
    pub proto_lineinfo: u64,
    pub proto_uvinfo: u64,
    pub proto_varinfo: u64,

    pub str_len: u64,
    /// The characters follow the GCstr header.
    pub str_data: u64,

    /// `sizeof(GCRef)`: GC constants are an array of these below `proto->k`.
    pub gcref_size: u64,
    /// `sizeof(BCIns)`.
    pub bcins_size: u64,
    /// `LJ_FR2`: GC64 frames take two slots, which moves the self argument of a method call.
    pub fr2: u32,
    /// Opcode number -> opcode, in this build's `BCDEF` order.
    pub ops: &'static [Op],
}

/// OpenResty's LuaJIT 2.1 (luajit2-2.1-20230119 and neighbours), GC64, x86_64.
/// Offsets checked with gdb `ptype /o` against a `-g` build of that source.
pub const OPENRESTY_21_GC64: ObjLayout = ObjLayout {
    gct: 9,
    gct_str: 4,   // ~LJ_TSTR
    gct_proto: 7, // ~LJ_TPROTO
    gct_func: 8,  // ~LJ_TFUNC

    func_ffid: 10,
    func_nupvalues: 11,
    func_env: 16,
    func_pc: 32,
    func_cfunc: 40,
    func_read: 48,
    ffid_lua: 0,
    ffid_c: 1,

    proto_size: 104,
    proto_sizebc: 12,
    proto_k: 32,
    proto_uv: 40,
    proto_sizekgc: 48,
    proto_sizekn: 52,
    proto_sizept: 56,
    proto_sizeuv: 60,
    proto_chunkname: 64,
    proto_firstline: 72,
    proto_numline: 76,
    proto_lineinfo: 80,
    proto_uvinfo: 88,
    proto_varinfo: 96,

    str_len: 20,
    str_data: 24,

    gcref_size: 8,
    bcins_size: 4,
    fr2: 1,
    ops: Op::LUAJIT_21,
};

impl ObjLayout {
    pub fn op(&self, ins: u32) -> Option<Op> {
        self.ops.get(super::bc::op(ins) as usize).copied()
    }

    /// The opcode number of `op` in this build, for building bytecode in tests.
    pub fn opcode(&self, op: Op) -> Option<u8> {
        self.ops.iter().position(|&o| o == op).and_then(|n| u8::try_from(n).ok())
    }
}
