//! Where one LuaJIT build keeps what a walk of its whole heap reads: the
//! lists every GC object is on (`global_State.gc.root`, the string table, the
//! open upvalues), each object's fields that hold references, and what each
//! object cost the allocator (the sizes `lj_gc.c`'s sweep hands back, from
//! `lj_tab_free`, `lj_func_free`, `lj_str_free`, `lj_cdata_free`, ...).

/// Byte offsets and sizes of one build, beside `ObjLayout` (type tags,
/// functions, prototypes, strings), which the walk uses too.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeapLayout {
    /// `global_State.gc.root`: head of the list of every object but strings.
    pub g_root: u64,
    /// `global_State.gc.mmudata`: a ring (this points at its last) of
    /// userdata and cdata waiting for their finalizer.
    pub g_mmudata: u64,
    /// `global_State.str.tab` (`GCRef *`), `.mask`, `.num`: the string table,
    /// chains through `nextgc`, the low bit of a slot marks a second hash.
    pub g_strtab: u64,
    pub g_strmask: u64,
    pub g_strnum: u64,
    pub g_mainthref: u64,
    pub g_registrytv: u64,
    /// `global_State.uvhead`: the ring of open upvalues (`next` at `uv_next`).
    pub g_uvhead: u64,
    /// `global_State.gcroot[]`: metamethod names, base metatables, io handles.
    pub g_gcroot: u64,
    pub gcroot_count: u64,
    /// `global_State.ctype_state`: the FFI's type table, for a cdata's size.
    pub g_ctype_state: u64,
    /// `sizeof(GG_State)`: allocated with the VM and counted in `gc.total`.
    pub gg_size: u64,

    /// `GCHeader.marked`, the weak bits the collector leaves on tables.
    pub marked: u64,
    pub weakkey: u8,
    pub weakval: u8,

    pub gct_tab: u8,
    pub gct_udata: u8,
    pub gct_thread: u8,
    pub gct_upval: u8,
    pub gct_cdata: u8,

    /// `GCtab`: `colo` (i8), `array`, `asize` (`metatable`, `node`, `hmask` are in `ObjLayout`).
    pub tab_colo: u64,
    pub tab_array: u64,
    pub tab_asize: u64,
    pub tab_size: u64,
    pub tvalue_size: u64,

    /// `sizeLfunc(n) = lfunc_base + n * 8`, `sizeCfunc(n) = cfunc_base + n * 8`;
    /// a C function's upvalues are `TValue`s from `cfunc_upvalue`.
    pub lfunc_base: u64,
    pub cfunc_base: u64,
    pub cfunc_upvalue: u64,

    /// `GCupval`: `closed` (u8), its value when closed (`tv`), the ring links.
    pub uv_closed: u64,
    pub uv_tv: u64,
    pub uv_next: u64,
    pub uv_size: u64,

    /// `lua_State`: its stack (`stack`, `top`, `stacksize` in slots), `env`.
    pub th_top: u64,
    pub th_stack: u64,
    pub th_stacksize: u64,
    pub th_env: u64,
    pub th_size: u64,

    /// `GCudata`: `env`, `len` (payload bytes after the header), `metatable`.
    pub ud_env: u64,
    pub ud_len: u64,
    pub ud_meta: u64,
    pub ud_size: u64,

    /// `GCcdata.ctypeid` (u16); a variable one (`marked & 0x80`) has a
    /// `GCcdataVar` {offset u16, extra u16, len u32} just before it.
    pub cd_ctypeid: u64,
    pub cd_size: u64,
    pub cd_var: u8,
    /// `CTState.tab`, `sizeof(CType)`, `CType.info`, `CType.size`.
    pub cts_tab: u64,
    pub ctype_size: u64,
    pub ctype_info: u64,
    pub ctype_sizefield: u64,
}
