//! A build's layout file (`cli/layouts/*.toml`) written from the DWARF of its
//! `-g` build: every offset, size and enum value ljprobe reads, evaluated by
//! gdb as C expressions, so nested members, unions and enums need no DWARF
//! walker of our own. Macros are not in DWARF; the few ljprobe needs are the
//! same in every LuaJIT 2.1 and written as such (`Fixed`).

use std::{collections::BTreeMap, fmt::Write, path::Path, process::Command};

use anyhow::{bail, Context, Result};

use super::elf;

/// Where a value comes from.
enum Src {
    /// `offsetof(type, member)`; the member may be a path (`gc.total`).
    Off(&'static str, &'static str),
    /// `sizeof(type)`.
    Size(&'static str),
    /// Any C expression gdb evaluates (enum values, sums).
    Expr(&'static str),
    /// A macro of LuaJIT 2.1 (lj_obj.h, lj_jit.h, ...): not in DWARF.
    Fixed(i64, &'static str),
}

use Src::{Expr, Fixed, Off, Size};

/// Section of the file (the struct it fills), field, source.
const SPEC: &[(&str, &str, Src)] = &[
    ("vm", "g2disp", Expr("(long)&((GG_State*)0)->dispatch - (long)&((GG_State*)0)->g")),
    ("vm", "gg_g", Off("GG_State", "g")),
    ("vm", "g_vmstate", Off("global_State", "vmstate")),
    ("vm", "g_cur_l", Off("global_State", "cur_L")),
    ("vm", "g_jit_base", Off("global_State", "jit_base")),
    ("vm", "l_glref", Off("lua_State", "glref")),
    ("vm", "l_base", Off("lua_State", "base")),
    ("vm", "l_stack", Off("lua_State", "stack")),
    ("vm", "l_maxstack", Off("lua_State", "maxstack")),
    ("vm", "l_cframe", Off("lua_State", "cframe")),
    ("obj", "gct", Off("GCstr", "gct")),
    ("obj", "gct_str", Fixed(4, "~LJ_TSTR")),
    ("obj", "gct_proto", Fixed(7, "~LJ_TPROTO")),
    ("obj", "gct_func", Fixed(8, "~LJ_TFUNC")),
    ("obj", "func_ffid", Off("GCfuncL", "ffid")),
    ("obj", "func_nupvalues", Off("GCfuncL", "nupvalues")),
    ("obj", "func_env", Off("GCfuncL", "env")),
    ("obj", "func_pc", Off("GCfuncL", "pc")),
    ("obj", "func_cfunc", Off("GCfuncC", "f")),
    ("obj", "func_read", Off("GCfuncC", "upvalue")),
    ("obj", "ffid_lua", Fixed(0, "FF_LUA")),
    ("obj", "ffid_c", Fixed(1, "FF_C")),
    ("obj", "proto_size", Size("GCproto")),
    ("obj", "proto_sizebc", Off("GCproto", "sizebc")),
    ("obj", "proto_k", Off("GCproto", "k")),
    ("obj", "proto_uv", Off("GCproto", "uv")),
    ("obj", "proto_sizekgc", Off("GCproto", "sizekgc")),
    ("obj", "proto_sizekn", Off("GCproto", "sizekn")),
    ("obj", "proto_sizept", Off("GCproto", "sizept")),
    ("obj", "proto_sizeuv", Off("GCproto", "sizeuv")),
    ("obj", "proto_chunkname", Off("GCproto", "chunkname")),
    ("obj", "proto_firstline", Off("GCproto", "firstline")),
    ("obj", "proto_numline", Off("GCproto", "numline")),
    ("obj", "proto_lineinfo", Off("GCproto", "lineinfo")),
    ("obj", "proto_uvinfo", Off("GCproto", "uvinfo")),
    ("obj", "proto_varinfo", Off("GCproto", "varinfo")),
    ("obj", "str_len", Off("GCstr", "len")),
    ("obj", "str_data", Size("GCstr")),
    ("obj", "func_uvptr", Off("GCfuncL", "uvptr")),
    ("obj", "uv_immutable", Off("GCupval", "immutable")),
    ("obj", "uv_v", Off("GCupval", "v")),
    ("obj", "tab_meta", Off("GCtab", "metatable")),
    ("obj", "tab_node", Off("GCtab", "node")),
    ("obj", "tab_hmask", Off("GCtab", "hmask")),
    ("obj", "node_size", Size("Node")),
    ("obj", "node_val", Off("Node", "val")),
    ("obj", "node_key", Off("Node", "key")),
    ("obj", "udata_udtype", Off("GCudata", "udtype")),
    ("obj", "udata_payload", Size("GCudata")),
    ("obj", "udtype_clib", Expr("(long)UDTYPE_FFI_CLIB")),
    ("obj", "cdata_ptr", Size("GCcdata")),
    ("obj", "proto_numparams", Off("GCproto", "numparams")),
    ("obj", "ffid_pcall", Expr("(long)FF_pcall")),
    ("obj", "ffid_xpcall", Expr("(long)FF_xpcall")),
    ("obj", "gcref_size", Size("GCRef")),
    ("obj", "bcins_size", Size("BCIns")),
    // LJ_FR2 is LJ_GC64 on x86_64 (lj_arch.h): two-slot frames go with 64-bit refs.
    ("obj", "fr2", Expr("(long)(sizeof(GCRef) == 8)")),
    ("trace", "g2j", Expr("(long)&((GG_State*)0)->J - (long)&((GG_State*)0)->g")),
    ("trace", "j_trace", Off("jit_State", "trace")),
    ("trace", "j_sizetrace", Off("jit_State", "sizetrace")),
    ("trace", "gct_trace", Fixed(9, "~LJ_TTRACE")),
    ("trace", "trace_size", Expr("((long)sizeof(GCtrace)+7)&~7")),
    ("trace", "trace_nsnap", Off("GCtrace", "nsnap")),
    ("trace", "trace_nins", Off("GCtrace", "nins")),
    ("trace", "trace_ir", Off("GCtrace", "ir")),
    ("trace", "trace_nk", Off("GCtrace", "nk")),
    ("trace", "trace_nsnapmap", Off("GCtrace", "nsnapmap")),
    ("trace", "trace_snap", Off("GCtrace", "snap")),
    ("trace", "trace_snapmap", Off("GCtrace", "snapmap")),
    ("trace", "trace_szmcode", Off("GCtrace", "szmcode")),
    ("trace", "trace_mcode", Off("GCtrace", "mcode")),
    ("trace", "trace_traceno", Off("GCtrace", "traceno")),
    ("trace", "snap_size", Size("SnapShot")),
    ("trace", "snap_mapofs", Off("SnapShot", "mapofs")),
    ("trace", "snap_ref", Off("SnapShot", "ref")),
    ("trace", "snap_mcofs", Off("SnapShot", "mcofs")),
    ("trace", "snap_nent", Off("SnapShot", "nent")),
    ("trace", "snapentry_size", Size("SnapEntry")),
    ("trace", "snap_frame", Fixed(0x1_0000, "SNAP_FRAME")),
    ("trace", "mcode_unit", Size("MCode")),
    ("trace", "irins_size", Size("IRIns")),
    ("trace", "ir_t", Off("IRIns", "t")),
    ("trace", "ir_o", Off("IRIns", "o")),
    ("trace", "ir_kgc", Expr("(long)IR_KGC")),
    ("trace", "ir_knum", Expr("(long)IR_KNUM")),
    ("trace", "ir_eq", Expr("(long)IR_EQ")),
    ("trace", "ir_loop", Expr("(long)IR_LOOP")),
    ("trace", "ir_kint", Expr("(long)IR_KINT")),
    ("trace", "ir_kptr", Expr("(long)IR_KPTR")),
    ("trace", "ir_kkptr", Expr("(long)IR_KKPTR")),
    ("trace", "ir_kint64", Expr("(long)IR_KINT64")),
    ("trace", "ir_urefo", Expr("(long)IR_UREFO")),
    ("trace", "ir_urefc", Expr("(long)IR_UREFC")),
    ("trace", "ir_callxs", Expr("(long)IR_CALLXS")),
    ("trace", "ir_carg", Expr("(long)IR_CARG")),
    ("trace", "trace_startpc", Off("GCtrace", "startpc")),
    ("trace", "irt_mask", Expr("(long)IRT_TYPE")),
    ("trace", "irt_func", Expr("(long)IRT_FUNC")),
    ("trace", "ref_bias", Expr("(long)REF_BIAS")),
    ("gc", "allocf", Off("global_State", "allocf")),
    ("gc", "allocd", Off("global_State", "allocd")),
    ("gc", "total", Off("global_State", "gc.total")),
    ("gc", "threshold", Off("global_State", "gc.threshold")),
    ("gc", "currentwhite", Off("global_State", "gc.currentwhite")),
    ("gc", "state", Off("global_State", "gc.state")),
    ("gc", "debt", Off("global_State", "gc.debt")),
    ("gc", "estimate", Off("global_State", "gc.estimate")),
    ("gc", "stepmul", Off("global_State", "gc.stepmul")),
    ("gc", "pause", Off("global_State", "gc.pause")),
    ("heap", "g_root", Off("global_State", "gc.root")),
    ("heap", "g_mmudata", Off("global_State", "gc.mmudata")),
    ("heap", "g_strtab", Off("global_State", "str.tab")),
    ("heap", "g_strmask", Off("global_State", "str.mask")),
    ("heap", "g_strnum", Off("global_State", "str.num")),
    ("heap", "g_mainthref", Off("global_State", "mainthref")),
    ("heap", "g_registrytv", Off("global_State", "registrytv")),
    ("heap", "g_uvhead", Off("global_State", "uvhead")),
    ("heap", "g_gcroot", Off("global_State", "gcroot")),
    ("heap", "gcroot_count", Expr("(long)GCROOT_MAX")),
    ("heap", "g_ctype_state", Off("global_State", "ctype_state")),
    ("heap", "gg_size", Size("GG_State")),
    ("heap", "marked", Off("GCtab", "marked")),
    ("heap", "weakkey", Fixed(0x08, "LJ_GC_WEAKKEY")),
    ("heap", "weakval", Fixed(0x10, "LJ_GC_WEAKVAL")),
    ("heap", "gct_tab", Fixed(11, "~LJ_TTAB")),
    ("heap", "gct_udata", Fixed(12, "~LJ_TUDATA")),
    ("heap", "gct_thread", Fixed(6, "~LJ_TTHREAD")),
    ("heap", "gct_upval", Fixed(5, "~LJ_TUPVAL")),
    ("heap", "gct_cdata", Fixed(10, "~LJ_TCDATA")),
    ("heap", "tab_colo", Off("GCtab", "colo")),
    ("heap", "tab_array", Off("GCtab", "array")),
    ("heap", "tab_asize", Off("GCtab", "asize")),
    ("heap", "tab_size", Size("GCtab")),
    ("heap", "tvalue_size", Size("TValue")),
    ("heap", "lfunc_base", Expr("(long)sizeof(GCfuncL)-(long)sizeof(GCRef)")),
    ("heap", "cfunc_base", Expr("(long)sizeof(GCfuncC)-(long)sizeof(TValue)")),
    ("heap", "cfunc_upvalue", Off("GCfuncC", "upvalue")),
    ("heap", "uv_closed", Off("GCupval", "closed")),
    ("heap", "uv_tv", Off("GCupval", "tv")),
    ("heap", "uv_next", Off("GCupval", "next")),
    ("heap", "uv_size", Size("GCupval")),
    ("heap", "th_top", Off("lua_State", "top")),
    ("heap", "th_stack", Off("lua_State", "stack")),
    ("heap", "th_stacksize", Off("lua_State", "stacksize")),
    ("heap", "th_env", Off("lua_State", "env")),
    ("heap", "th_size", Size("lua_State")),
    ("heap", "ud_env", Off("GCudata", "env")),
    ("heap", "ud_len", Off("GCudata", "len")),
    ("heap", "ud_meta", Off("GCudata", "metatable")),
    ("heap", "ud_size", Size("GCudata")),
    ("heap", "cd_ctypeid", Off("GCcdata", "ctypeid")),
    ("heap", "cd_size", Size("GCcdata")),
    ("heap", "cd_var", Fixed(0x80, "LJ_GC_CDATA_VAR")),
    ("heap", "cts_tab", Off("CTState", "tab")),
    ("heap", "ctype_size", Size("CType")),
    ("heap", "ctype_info", Off("CType", "info")),
    ("heap", "ctype_sizefield", Off("CType", "size")),
    ("jit", "j_flags", Off("jit_State", "flags")),
    ("jit", "jit_f_on", Fixed(1, "JIT_F_ON")),
    ("jit", "j_penalty", Off("jit_State", "penalty")),
    ("jit", "penalty_slots", Expr("(long)(sizeof(((jit_State*)0)->penalty) / sizeof(HotPenalty))")),
    ("jit", "penalty_size", Size("HotPenalty")),
    ("jit", "penalty_val", Off("HotPenalty", "val")),
    ("jit", "penalty_reason", Off("HotPenalty", "reason")),
    ("jit", "trace_startpt", Off("GCtrace", "startpt")),
    ("jit", "trace_startpc", Off("GCtrace", "startpc")),
    ("jit", "trace_link", Off("GCtrace", "link")),
    ("jit", "trace_root", Off("GCtrace", "root")),
    ("jit", "trace_linktype", Off("GCtrace", "linktype")),
    ("jit", "proto_flags", Off("GCproto", "flags")),
    ("jit", "proto_nojit", Fixed(0x08, "PROTO_NOJIT")),
    ("jit", "proto_iloop", Fixed(0x10, "PROTO_ILOOP")),
    ("jit.probe", "j_state", Off("jit_State", "state")),
    ("jit.probe", "state_err", Expr("(long)LJ_TRACE_ERR")),
    ("jit.probe", "j_parent", Off("jit_State", "parent")),
    ("jit.probe", "j_exitno", Off("jit_State", "exitno")),
    ("jit.probe", "j_l", Off("jit_State", "L")),
    ("jit.probe", "j_pc", Off("jit_State", "pc")),
    ("jit.probe", "j_pt", Off("jit_State", "pt")),
    ("jit.probe", "j_errinfo", Off("jit_State", "errinfo")),
    ("jit.probe", "cur_traceno", Off("jit_State", "cur.traceno")),
    ("jit.probe", "cur_startpt", Off("jit_State", "cur.startpt")),
    ("jit.probe", "cur_startpc", Off("jit_State", "cur.startpc")),
    ("jit.probe", "l_top", Off("lua_State", "top")),
    ("jit.probe", "vmstate_exit", Expr("(long)(int)~LJ_VMST_EXIT")),
    ("jit.probe", "tvalue", Size("TValue")),
];

/// What the file says about the build itself, beside its offsets.
pub struct BuildFacts<'a> {
    pub name: &'a str,
    pub describe: &'a str,
    /// The `-g` build as the file names it (relative to the workspace for
    /// the built-in ones, which `cargo xtask layouts` regenerates from it).
    pub generated_from: &'a str,
    /// The build's `jit/vmdef.lua`, when it is not installed beside the
    /// library (`PREFIX/share/luajit-*/jit/vmdef.lua`, found by itself).
    pub vmdef: Option<&'a Path>,
}

/// The layout file of the `-g` build `lib` (a LuaJIT library or an executable
/// with LuaJIT inside), as TOML text. Needs gdb.
pub fn generate(lib: &Path, facts: &BuildFacts) -> Result<String> {
    let summary = elf::summarize(lib).with_context(|| format!("reading {}", lib.display()))?;
    if !summary.has_dwarf {
        bail!("{} has no DWARF: a layout file is written from a build made with -g", lib.display());
    }
    let values = gdb_eval(lib)?;
    let value = |section: &str, field: &str| values.get(&(section.to_string(), field.to_string())).copied();
    let gc64 = value("obj", "gcref_size") == Some(8);
    let fork = if summary.lua_api.contains("lua_setexdata") { "openresty" } else { "upstream" };
    let mut out = String::new();
    writeln!(out, "# The layout of one LuaJIT build family, read by ljprobe (cli/src/target/known_builds.rs).")?;
    writeln!(out, "# Written by `ljprobe layout` (`cargo xtask layouts` for the built-in ones) from the")?;
    writeln!(out, "# DWARF of the -g build in `generated_from`: regenerate it rather than edit it.")?;
    writeln!(out, "# Values marked `macro` are LuaJIT 2.1's, not in DWARF.")?;
    writeln!(out, "name = {:?}", facts.name)?;
    writeln!(out, "describe = {:?}", facts.describe)?;
    writeln!(out, "generated_from = {:?}", facts.generated_from)?;
    writeln!(out, "fork = {fork:?}")?;
    writeln!(out, "gc64 = {gc64}")?;
    writeln!(out, "arch = \"x86_64\"")?;
    if let Some(banner) = &summary.luajit_banner {
        writeln!(out, "banner = {banner:?}")?;
    }
    let names = fast_functions(lib, facts.vmdef)?;
    let mut section = "";
    for (sec, field, src) in SPEC {
        if *sec != section {
            writeln!(out, "\n[{sec}]")?;
            section = sec;
        }
        match src {
            Fixed(v, name) => writeln!(out, "{field} = {v} # macro {name}")?,
            _ => {
                let v = value(sec, field)
                    .with_context(|| format!("gdb could not evaluate {} in {}", expr(src), lib.display()))?;
                writeln!(out, "{field} = {v}")?;
            }
        }
    }
    writeln!(out, "\n[names]")?;
    writeln!(out, "# Fast function ids to names: the build's jit/vmdef.lua `ffnames`.")?;
    writeln!(out, "fast_functions = [")?;
    for chunk in names.chunks(6) {
        let line: Vec<String> = chunk.iter().map(|n| format!("{n:?}")).collect();
        writeln!(out, "    {},", line.join(", "))?;
    }
    writeln!(out, "]")?;
    Ok(out)
}

/// `ffnames` of the build's `jit/vmdef.lua`, which `make install` puts
/// under the prefix the library or program was installed in. Not in DWARF
/// under these names (the enum says `FF_io_method___gc`, vmdef `io.method.__gc`).
fn fast_functions(lib: &Path, given: Option<&Path>) -> Result<Vec<String>> {
    let vmdef = match given {
        Some(p) => p.to_path_buf(),
        None => {
            let prefix = lib.parent().and_then(Path::parent).context("the build's install prefix")?;
            let share = prefix.join("share");
            std::fs::read_dir(&share)
                .ok()
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join("jit/vmdef.lua"))
                .find(|p| p.is_file())
                .with_context(|| {
                    format!(
                        "no jit/vmdef.lua under {}: install the -g build with `make install`, or give its src/jit/vmdef.lua with --vmdef",
                        share.display()
                    )
                })?
        }
    };
    let text = std::fs::read_to_string(&vmdef).with_context(|| format!("cannot read {}", vmdef.display()))?;
    let start = text.find("ffnames = {\n").with_context(|| format!("no ffnames in {}", vmdef.display()))?;
    let body = &text[start..];
    let body = &body[..body.find("\n}").unwrap_or(body.len())];
    let names: Vec<String> =
        body.lines().skip(1).filter_map(|l| Some(l.split_once('"')?.1.rsplit_once('"')?.0.to_string())).collect();
    if names.len() < 2 || names[0] != "Lua" || names[1] != "C" {
        bail!("{}'s ffnames does not start with Lua, C", vmdef.display());
    }
    Ok(names)
}

fn expr(src: &Src) -> String {
    match src {
        Off(ty, member) => format!("(long)&(({ty}*)0)->{member}"),
        Size(ty) => format!("(long)sizeof({ty})"),
        Expr(e) => (*e).to_string(),
        Fixed(v, _) => v.to_string(),
    }
}

/// Every non-fixed value of `SPEC`, by (section, field): one gdb run, one
/// `printf` per value, so an expression gdb cannot evaluate is simply missing.
fn gdb_eval(lib: &Path) -> Result<BTreeMap<(String, String), i64>> {
    let mut cmd = Command::new("gdb");
    cmd.args(["-batch", "-nx"]);
    for (sec, field, src) in SPEC {
        if !matches!(src, Fixed(..)) {
            cmd.arg("-ex").arg(format!("printf \"{sec} {field} %ld\\n\", {}", expr(src)));
        }
    }
    let out =
        cmd.arg(lib).output().context("running gdb (a layout file is read from DWARF with it: apt-get install gdb)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut values = BTreeMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if let (Some(sec), Some(field), Some(v), None) = (words.next(), words.next(), words.next(), words.next()) {
            if let Ok(v) = v.parse::<i64>() {
                values.insert((sec.to_string(), field.to_string()), v);
            }
        }
    }
    Ok(values)
}
