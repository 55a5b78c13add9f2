//! Where one LuaJIT build keeps the objects we read. Everything that depends on
//! the build (struct offsets, type tags, opcode numbering) lives in one
//! `ObjLayout` value so another build can be supported by adding a constant.

use super::bc::Op;

/// Byte offsets (from the object's start) and build constants of one LuaJIT build.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(deny_unknown_fields)]
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

    /// What the walk between snapshots (`trace_call`) reads to find the
    /// function a call instruction calls: `GCfuncL.uvptr[]`, `GCupval`'s
    /// `immutable` flag and value pointer, `GCtab`'s metatable and hash part
    /// (`node`, `hmask`; a `Node` is a value then a key), `GCudata.udtype` and
    /// its payload (a clib's `{handle, cache}`), the function pointer of a
    /// `GCcdata`, and `GCproto.numparams`.
    pub func_uvptr: u64,
    pub uv_immutable: u64,
    pub uv_v: u64,
    pub tab_meta: u64,
    pub tab_node: u64,
    pub tab_hmask: u64,
    pub node_size: u64,
    pub node_val: u64,
    pub node_key: u64,
    pub udata_udtype: u64,
    pub udata_payload: u64,
    /// `UDTYPE_FFI_CLIB`: the userdata behind `ffi.C` and `ffi.load`.
    pub udtype_clib: u8,
    pub cdata_ptr: u64,
    pub proto_numparams: u64,
    /// `FF_pcall`, `FF_xpcall`: fast functions that make a frame of their own.
    pub ffid_pcall: u8,
    pub ffid_xpcall: u8,

    /// `sizeof(GCRef)`: GC constants are an array of these below `proto->k`.
    pub gcref_size: u64,
    /// `sizeof(BCIns)`.
    pub bcins_size: u64,
    /// `LJ_FR2`: GC64 frames take two slots, which moves the self argument of a method call.
    pub fr2: u32,
    /// Opcode number -> opcode, in this build's `BCDEF` order (the same
    /// in every 2.1 build: not in the layout files).
    #[serde(skip, default = "luajit_21_ops")]
    pub ops: &'static [Op],

    /// Fast function ids (`ffid`) to the build's names (its `jit/vmdef.lua`
    /// `ffnames`: OpenResty's fork has more than upstream): the `[names]`
    /// section of the layout files.
    #[serde(skip)]
    pub fast_functions: &'static [String],
    /// JIT traces, for the frames they inline (a section of its own in the layout files).
    #[serde(skip)]
    pub trace: TraceLayout,
}

/// Where one build keeps the JIT state, its traces and their snapshots
/// (lj_dispatch.h, lj_jit.h, lj_ir.h), and the snapshot format constants: what
/// `Resolver::inlined_frames` reads to rebuild the frames a trace has inlined.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceLayout {
    /// `GG_OFS(J) - GG_OFS(g)`: the `jit_State` lives in `GG_State` after `G`.
    pub g2j: u64,
    /// `jit_State.trace`: pointer to the `GCRef` array indexed by trace number.
    pub j_trace: u64,
    /// `jit_State.sizetrace`: entries of that array (u32).
    pub j_sizetrace: u64,

    /// `~LJ_TTRACE`, in `GCHeader.gct` (the offset is `ObjLayout::gct`).
    pub gct_trace: u8,
    /// `(sizeof(GCtrace)+7)&~7`: `trace_save` puts the IR, then the snapshots,
    /// then the snapshot map right after the header, in one allocation.
    pub trace_size: u64,
    /// u16.
    pub trace_nsnap: u64,
    /// u32, biased by `ref_bias`: one past the last instruction.
    pub trace_nins: u64,
    /// `IRIns *`, biased so that `ir[ref]` is instruction `ref`.
    pub trace_ir: u64,
    /// u32, biased: the lowest constant.
    pub trace_nk: u64,
    /// u32: `SnapEntry`s in the snapshot map.
    pub trace_nsnapmap: u64,
    pub trace_snap: u64,
    pub trace_snapmap: u64,
    /// u32, in bytes.
    pub trace_szmcode: u64,
    pub trace_mcode: u64,
    /// u16: a saved trace knows its own number.
    pub trace_traceno: u64,

    /// `sizeof(SnapShot)` and its fields `mapofs` (u32), `mcofs` (u16, in
    /// `MCode` units from `T->mcode`), `nent` (u8).
    pub snap_size: u64,
    pub snap_mapofs: u64,
    /// u16: the first IR instruction the snapshot applies to.
    pub snap_ref: u64,
    pub snap_mcofs: u64,
    pub snap_nent: u64,
    /// `sizeof(SnapEntry)`: slot << 24 | flags | ref.
    pub snapentry_size: u64,
    /// `SNAP_FRAME`: the entry is a frame link.
    pub snap_frame: u32,
    /// `sizeof(MCode)`: `mcofs` counts these.
    pub mcode_unit: u64,

    /// `sizeof(IRIns)` and the bytes of its type (`t`) and opcode (`o`).
    pub irins_size: u64,
    pub ir_t: u64,
    pub ir_o: u64,
    /// `IR_KGC` and `IR_KNUM` in `IRDEF` order. Both are 64-bit constants in
    /// GC64: the value is the whole `IRIns` after the one at `ref`.
    pub ir_kgc: u8,
    pub ir_knum: u8,
    /// More `IRDEF` numbers: the guard and loop markers, the other 64-bit
    /// and pointer constants, upvalue references, and the FFI call and its
    /// argument chain.
    pub ir_eq: u8,
    pub ir_loop: u8,
    pub ir_kint: u8,
    pub ir_kptr: u8,
    pub ir_kkptr: u8,
    pub ir_kint64: u8,
    pub ir_urefo: u8,
    pub ir_urefc: u8,
    pub ir_callxs: u8,
    pub ir_carg: u8,
    /// `GCtrace.startpc`: the bytecode the trace starts at (a looping trace returns there).
    pub trace_startpc: u64,
    /// `IRT_TYPE` mask and `IRT_FUNC`: a `KGC` holding a function.
    pub irt_mask: u8,
    pub irt_func: u8,
    /// `REF_BIAS`: refs below it are constants, at or above it instructions.
    pub ref_bias: u32,
}

fn luajit_21_ops() -> &'static [Op] {
    Op::LUAJIT_21
}

impl ObjLayout {
    /// A `GCRef` or `MRef` at `off` in a copied object: 64-bit in GC64
    /// builds, else 32-bit (the VM keeps every object below 4 GB then).
    pub fn buf_ref(&self, buf: &[u8], off: u64) -> Option<u64> {
        match self.gcref_size {
            4 => super::mem::buf_u32(buf, off).map(u64::from),
            _ => super::mem::buf_u64(buf, off),
        }
    }

    pub fn fast_function(&self, ffid: u8) -> Option<&'static str> {
        self.fast_functions.get(usize::from(ffid)).map(String::as_str)
    }

    pub fn op(&self, ins: u32) -> Option<Op> {
        self.ops.get(super::bc::op(ins) as usize).copied()
    }

    /// The opcode number of `op` in this build, for building bytecode in tests.
    pub fn opcode(&self, op: Op) -> Option<u8> {
        self.ops.iter().position(|&o| o == op).and_then(|n| u8::try_from(n).ok())
    }
}
