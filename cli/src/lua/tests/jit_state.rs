//! `jit`'s constants (macros, not in DWARF) and names table against the
//! build's own source and `jit/vmdef.lua`.

use super::{debug_prefix, require};
use crate::target::known_builds::openresty_gc64;

/// Flag macros are not in DWARF: read from the source the debug build was made from.
#[test]
fn jit_flags_match_the_source() {
    #[allow(non_snake_case)]
    let J = &openresty_gc64().jit;
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

/// The names the report uses are the builds' own (`jit/vmdef.lua`), the same
/// in OpenResty's fork and upstream 2.1, GC64 or not.
#[test]
fn jit_names_match_the_builds_vmdef() {
    use crate::lua::jit_names::{BYTECODES, TRACE_ERRORS};
    let builds = debug_prefix().join("../luajit-builds");
    for prefix in [debug_prefix(), builds.join("upstream-debug"), builds.join("upstream-nogc64-debug")] {
        let vmdef = prefix.join("share/luajit-2.1.0-beta3/jit/vmdef.lua");
        require(&vmdef);
        let text = std::fs::read_to_string(&vmdef).unwrap();
        let bc = text.lines().find_map(|l| l.strip_prefix("bcnames = \"")).unwrap();
        let names: Vec<&str> = bc.as_bytes().chunks(6).map(|c| std::str::from_utf8(c).unwrap().trim()).filter(|n| !n.starts_with('"')).collect();
        assert_eq!(names, BYTECODES, "{}", vmdef.display());
        let start = text.find("traceerr = {\n").unwrap();
        let body = &text[start..start + text[start..].find("\n},").unwrap()];
        let errors: Vec<String> = body.lines().skip(1).filter_map(|l| Some(l.split_once('"')?.1.rsplit_once('"')?.0.to_string())).collect();
        assert_eq!(errors, TRACE_ERRORS, "{}", vmdef.display());
    }
}
