//! `jit`'s layout against the `-g` build's DWARF (gdb), as `heap.rs` checks
//! the heap walk's: every offset and constant of `JitStateLayout`, and the
//! names table against the build's own `jit/vmdef.lua`.

use super::{debug_prefix, gdb_values, require};
use crate::lua::jit_state::JIT_OPENRESTY_21_GC64 as J;

#[test]
fn jit_state_layout_matches_the_debug_build() {
    let lib = debug_prefix().join("lib/libluajit-5.1.so.2");
    require(&lib);
    let off = |ty: &str, field: &str| format!("(long)&(({ty}*)0)->{field}");
    let p = &J.probe;
    let want: Vec<(String, u64)> = vec![
        (off("jit_State", "state"), p.j_state.into()),
        ("(long)LJ_TRACE_ERR".into(), p.state_err.into()),
        (off("jit_State", "parent"), p.j_parent.into()),
        (off("jit_State", "exitno"), p.j_exitno.into()),
        (off("jit_State", "L"), p.j_l.into()),
        (off("jit_State", "pc"), p.j_pc.into()),
        (off("jit_State", "pt"), p.j_pt.into()),
        (off("jit_State", "errinfo"), p.j_errinfo.into()),
        (off("jit_State", "cur.traceno"), p.cur_traceno.into()),
        (off("jit_State", "cur.startpt"), p.cur_startpt.into()),
        (off("jit_State", "cur.startpc"), p.cur_startpc.into()),
        (off("lua_State", "top"), p.l_top.into()),
        ("(long)~LJ_VMST_EXIT & 0xffffffff".into(), u64::from(p.vmstate_exit as u32)),
        ("(long)sizeof(TValue)".into(), p.tvalue.into()),
        (off("jit_State", "flags"), J.j_flags),
        (off("jit_State", "penalty"), J.j_penalty),
        ("(long)(sizeof(((jit_State*)0)->penalty) / sizeof(HotPenalty))".into(), J.penalty_slots),
        ("(long)sizeof(HotPenalty)".into(), J.penalty_size),
        (off("HotPenalty", "val"), J.penalty_val),
        (off("HotPenalty", "reason"), J.penalty_reason),
        (off("GCtrace", "startpt"), J.trace_startpt),
        (off("GCtrace", "startpc"), J.trace_startpc),
        (off("GCtrace", "link"), J.trace_link),
        (off("GCtrace", "root"), J.trace_root),
        (off("GCtrace", "linktype"), J.trace_linktype),
        (off("GCproto", "flags"), J.proto_flags),
    ];
    let exprs: Vec<String> = want.iter().map(|(e, _)| e.clone()).collect();
    for ((expr, value), got) in want.iter().zip(gdb_values(&lib, &exprs)) {
        assert_eq!(got, *value, "{expr}");
    }
}

/// Flag macros are not in DWARF: read from the source the debug build was made from.
#[test]
fn jit_flags_match_the_source() {
    let src = debug_prefix().join("../luajit-src/luajit2-2.1-20230119/src");
    let text = |f: &str| std::fs::read_to_string(src.join(f)).unwrap_or_else(|e| panic!("{f}: {e} (run `cargo xtask setup`)"));
    let define = |text: &str, name: &str| -> u64 {
        let line = text.lines().find(|l| l.starts_with(&format!("#define {name}"))).unwrap_or_else(|| panic!("{name}"));
        let v = line.split_whitespace().nth(2).unwrap();
        u64::from_str_radix(v.trim_start_matches("0x"), if v.starts_with("0x") { 16 } else { 10 }).unwrap()
    };
    assert_eq!(define(&text("lj_jit.h"), "JIT_F_ON"), u64::from(J.jit_f_on));
    assert_eq!(define(&text("lj_obj.h"), "PROTO_NOJIT"), u64::from(J.proto_nojit));
    assert_eq!(define(&text("lj_obj.h"), "PROTO_ILOOP"), u64::from(J.proto_iloop));
}

/// The names the report uses are the build's own (`jit/vmdef.lua`).
#[test]
fn jit_names_match_the_builds_vmdef() {
    use crate::lua::jit_names::{BYTECODES, FAST_FUNCTIONS, TRACE_ERRORS};
    let vmdef = debug_prefix().join("share/luajit-2.1.0-beta3/jit/vmdef.lua");
    require(&vmdef);
    let text = std::fs::read_to_string(vmdef).unwrap();
    let bc = text.lines().find_map(|l| l.strip_prefix("bcnames = \"")).unwrap();
    let names: Vec<&str> = bc.as_bytes().chunks(6).map(|c| std::str::from_utf8(c).unwrap().trim()).filter(|n| !n.starts_with('"')).collect();
    assert_eq!(names, BYTECODES);
    let table = |name: &str| -> Vec<String> {
        let start = text.find(&format!("{name} = {{\n")).unwrap();
        let body = &text[start..start + text[start..].find("\n},").unwrap()];
        body.lines().skip(1).filter_map(|l| Some(l.split_once('"')?.1.rsplit_once('"')?.0.to_string())).collect()
    };
    assert_eq!(table("traceerr"), TRACE_ERRORS);
    assert_eq!(table("ffnames"), FAST_FUNCTIONS);
}
