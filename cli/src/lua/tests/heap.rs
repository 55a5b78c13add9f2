//! The heap walk's constants (macros, not in DWARF: the layout file's other
//! values are checked against DWARF in `target::known_builds`) against the
//! source the debug build was made from.

use super::{debug_prefix, require};
use crate::target::known_builds::openresty_gc64;

/// Type tags and the collector's flags are macros, not in DWARF: read from
/// the source the debug build was made from.
#[test]
fn heap_constants_match_the_source() {
    #[allow(non_snake_case)]
    let (H, L) = (&openresty_gc64().heap, &openresty_gc64().obj);
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
