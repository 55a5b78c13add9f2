//! The heap walk's layout against the `-g` build's DWARF (gdb), as
//! `trace.rs` checks the trace layout: every offset, size and constant of
//! `HeapLayout`, so a wrong number fails here and not as a wrong report.


use super::{debug_prefix, gdb_values, require};
use crate::lua::{HEAP_OPENRESTY_21_GC64 as H, OPENRESTY_21_GC64 as L};

#[test]
fn heap_layout_matches_the_debug_build() {
    let lib = debug_prefix().join("lib/libluajit-5.1.so.2");
    require(&lib);
    let off = |ty: &str, field: &str| format!("(long)&(({ty}*)0)->{field}");
    let want: Vec<(String, u64)> = vec![
        (off("global_State", "gc.root"), H.g_root),
        (off("global_State", "gc.mmudata"), H.g_mmudata),
        (off("global_State", "str.tab"), H.g_strtab),
        (off("global_State", "str.mask"), H.g_strmask),
        (off("global_State", "str.num"), H.g_strnum),
        (off("global_State", "mainthref"), H.g_mainthref),
        (off("global_State", "registrytv"), H.g_registrytv),
        (off("global_State", "uvhead"), H.g_uvhead),
        (off("global_State", "gcroot"), H.g_gcroot),
        ("(long)GCROOT_MAX".into(), H.gcroot_count),
        (off("global_State", "ctype_state"), H.g_ctype_state),
        ("(long)sizeof(GG_State)".into(), H.gg_size),
        (off("GCtab", "marked"), H.marked),
        (off("GCtab", "colo"), H.tab_colo),
        (off("GCtab", "array"), H.tab_array),
        (off("GCtab", "asize"), H.tab_asize),
        (off("GCtab", "metatable"), L.tab_meta),
        (off("GCtab", "node"), L.tab_node),
        (off("GCtab", "hmask"), L.tab_hmask),
        ("(long)sizeof(GCtab)".into(), H.tab_size),
        ("(long)sizeof(TValue)".into(), H.tvalue_size),
        ("(long)sizeof(Node)".into(), L.node_size),
        (off("Node", "val"), L.node_val),
        (off("Node", "key"), L.node_key),
        ("(long)sizeof(GCfuncL)-(long)sizeof(GCRef)".into(), H.lfunc_base),
        ("(long)sizeof(GCfuncC)-(long)sizeof(TValue)".into(), H.cfunc_base),
        (off("GCfuncC", "upvalue"), H.cfunc_upvalue),
        (off("GCfuncL", "uvptr"), L.func_uvptr),
        (off("GCupval", "closed"), H.uv_closed),
        (off("GCupval", "tv"), H.uv_tv),
        (off("GCupval", "next"), H.uv_next),
        ("(long)sizeof(GCupval)".into(), H.uv_size),
        (off("lua_State", "top"), H.th_top),
        (off("lua_State", "stack"), H.th_stack),
        (off("lua_State", "stacksize"), H.th_stacksize),
        (off("lua_State", "env"), H.th_env),
        ("(long)sizeof(lua_State)".into(), H.th_size),
        (off("GCudata", "env"), H.ud_env),
        (off("GCudata", "len"), H.ud_len),
        (off("GCudata", "metatable"), H.ud_meta),
        ("(long)sizeof(GCudata)".into(), H.ud_size),
        (off("GCcdata", "ctypeid"), H.cd_ctypeid),
        ("(long)sizeof(GCcdata)".into(), H.cd_size),
        (off("CTState", "tab"), H.cts_tab),
        ("(long)sizeof(CType)".into(), H.ctype_size),
        (off("CType", "info"), H.ctype_info),
        (off("CType", "size"), H.ctype_sizefield),
        ("(long)sizeof(GCstr)".into(), L.str_data),
        (off("GCproto", "sizept"), L.proto_sizept),
    ];
    let exprs: Vec<String> = want.iter().map(|(e, _)| e.clone()).collect();
    let got = gdb_values(&lib, &exprs);
    for ((expr, value), got) in want.iter().zip(got) {
        assert_eq!(got, *value, "{expr}");
    }
}

/// Type tags and the collector's flags are macros, not in DWARF: read from
/// the source the debug build was made from.
#[test]
fn heap_constants_match_the_source() {
    let src = debug_prefix().join("../luajit-src");
    require(&src);
    let dir = std::fs::read_dir(&src).unwrap().flatten().map(|e| e.path().join("src")).find(|p| p.join("lj_obj.h").exists());
    let dir = dir.expect("the luajit2 source unpacked under target/luajit-src");
    let text = std::fs::read_to_string(dir.join("lj_obj.h")).unwrap() + &std::fs::read_to_string(dir.join("lj_gc.h")).unwrap();
    let define = |name: &str| -> u64 {
        let line = text.lines().find(|l| l.split_whitespace().take(2).eq(["#define", name])).unwrap_or_else(|| panic!("{name} not defined"));
        let value = line.split_whitespace().nth(2).unwrap();
        if let Some(n) = value.strip_prefix("(~").and_then(|v| v.strip_suffix("u)")) {
            n.parse().unwrap()
        } else {
            u64::from_str_radix(value.trim_start_matches("0x"), 16).unwrap()
        }
    };
    let want: [(&str, u64); 14] = [
        ("LJ_GC_WEAKKEY", u64::from(H.weakkey)),
        ("LJ_GC_WEAKVAL", u64::from(H.weakval)),
        ("LJ_TTAB", u64::from(H.gct_tab)),
        ("LJ_TUDATA", u64::from(H.gct_udata)),
        ("LJ_TTHREAD", u64::from(H.gct_thread)),
        ("LJ_TUPVAL", u64::from(H.gct_upval)),
        ("LJ_TCDATA", u64::from(H.gct_cdata)),
        ("LJ_TSTR", u64::from(L.gct_str)),
        ("LJ_TFUNC", u64::from(L.gct_func)),
        ("LJ_TPROTO", u64::from(L.gct_proto)),
        ("LJ_TTRACE", u64::from(L.trace.gct_trace)),
        ("LJ_TNIL", 0),
        ("LJ_TLIGHTUD", 3),
        ("LJ_TNUMX", 13),
    ];
    for (name, value) in want {
        assert_eq!(define(name), value, "{name}");
    }
}
