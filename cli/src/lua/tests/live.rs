//! Against running LuaJIT processes: the `-g` build made by `cargo xtask setup`
//! and Debian's stripped `/usr/bin/luajit`. Needs root (/proc/PID/mem).

use std::{collections::HashMap, fs, path::Path};

use object::{Object, ObjectSection, ObjectSymbol};

use super::{debug_prefix, image::L, require, require_root, LiveLua};
use crate::lua::{
    bc::{self, AMode, Mm, Op},
    LuaFrame, ProcMem, RawFrame, Resolver, SlotKind, SlotName,
};

const SCRIPT: &str = r#"local function local_fn() return 1 end
function helper() return 2 end
local t = {}
t.field = function() return 3 end
local obj = {}
function obj:meth() return 4 end
local function caller()
  helper()
  t.field()
  obj:meth()
  local_fn()
  local inner = local_fn
  inner()
end
for _, kv in ipairs({
  {"local_fn", local_fn}, {"helper", helper}, {"field", t.field},
  {"meth", obj.meth}, {"caller", caller}, {"cfunc", package.loaders[2]},
}) do
  io.write(kv[1], " ", tostring(kv[2]), "\n")
end
io.write("ready\n")
io.stdout:flush()
-- Wait until the test closes our stdin or kills us.
io.read("*l")
"#;

/// Functions of SCRIPT and the line of their `function` keyword.
const DEFINED: [(&str, u32); 5] = [("local_fn", 1), ("helper", 2), ("field", 4), ("meth", 6), ("caller", 7)];

/// The calls in `caller`, in order: callee, and the name LuaJIT gives it.
const CALLS: [(&str, SlotKind, &str); 5] = [
    ("helper", SlotKind::Global, "helper"),
    ("field", SlotKind::Field, "field"),
    ("meth", SlotKind::Method, "meth"),
    ("local_fn", SlotKind::Upvalue, "local_fn"),
    ("local_fn", SlotKind::Local, "inner"),
];

const C_LINK: u64 = (2 << 3) | 1;


/// The script running under one luajit, and the functions it printed.
struct Target {
    live: LiveLua,
    funcs: HashMap<String, u64>,
}

impl Target {
    fn start(luajit: &Path, tag: &str) -> Self {
        let (live, lines) = LiveLua::start(luajit, tag, SCRIPT);
        let funcs = lines
            .iter()
            .map(|line| {
                // "<label> function: 0x<GCfunc address>"
                let (label, rest) = line.split_once(' ').expect("label and value");
                let hex = rest.strip_prefix("function: 0x").unwrap_or_else(|| panic!("unexpected line {line:?}"));
                (label.to_string(), u64::from_str_radix(hex, 16).expect("hex address"))
            })
            .collect();
        Target { live, funcs }
    }

    fn func(&self, label: &str) -> u64 {
        self.funcs[label]
    }
}

fn check_live(luajit: &Path, tag: &str) {
    require_root();
    require(luajit);
    let target = Target::start(luajit, tag);
    let script = target.live.script.to_str().expect("utf-8 temp path").to_string();
    let mem = ProcMem::open(target.live.child.id()).expect("open /proc/PID/mem");
    let mut r = Resolver::with_layout(mem, *L);

    for (label, line) in DEFINED {
        let got = r.resolve(&[RawFrame { func: target.func(label), link: 0 }]);
        match &got[..] {
            [LuaFrame::Lua { name: None, file, line: l, .. }] => {
                assert!(file.ends_with(&script), "{label}: file {file:?}, want {script:?}");
                assert_eq!(*l, line, "{label}: linedefined");
            }
            other => panic!("{label}: {other:?}"),
        }
    }

    let caller = r.func_proto(target.func("caller")).expect("caller is a Lua function");
    let bcs = r.bytecode(caller).expect("caller's bytecode");
    let calls: Vec<u32> = (0..bcs.len() as u32).filter(|&pos| L.op(bcs[pos as usize]) == Some(Op::Call)).collect();
    assert_eq!(calls.len(), CALLS.len(), "CALL instructions in caller: {bcs:08x?}");
    for (&pos, (callee, kind, name)) in calls.iter().zip(CALLS) {
        let want = SlotName { kind, name: name.to_string() };
        assert_eq!(r.slotname(caller, pos, bc::a(bcs[pos as usize])), Some(want), "call at {pos}");
        // The same through a stack as the kernel would record it.
        let link = caller + L.proto_size + u64::from(pos + 1) * L.bcins_size;
        let frames =
            [RawFrame { func: target.func(callee), link }, RawFrame { func: target.func("caller"), link: C_LINK }];
        let line = DEFINED.iter().find(|d| d.0 == callee).map(|d| d.1).expect("callee line");
        let got = r.resolve(&frames);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], LuaFrame::Lua { name: Some(name.to_string()), file: script.clone(), line, at: None });
        assert_eq!(got[1], LuaFrame::Lua { name: None, file: script.clone(), line: 7, at: None });
    }

    match &r.resolve(&[RawFrame { func: target.func("cfunc"), link: 0 }])[..] {
        [LuaFrame::C { addr, name: None }] => {
            assert!(executable(target.live.child.id(), *addr), "C entry {addr:#x} is not in an executable mapping")
        }
        other => panic!("package.loaders[2]: {other:?}"),
    }
}

fn executable(pid: u32, addr: u64) -> bool {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    maps.lines().any(|line| {
        let mut it = line.split_whitespace();
        let (Some(range), Some(perms)) = (it.next(), it.next()) else { return false };
        let Some((lo, hi)) = range.split_once('-') else { return false };
        let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16)) else { return false };
        perms.contains('x') && (lo..hi).contains(&addr)
    })
}

#[test]
fn live_debug_build() {
    check_live(&debug_prefix().join("bin/luajit"), "debug");
}

#[test]
fn live_stock_build() {
    check_live(Path::new("/usr/bin/luajit"), "stock");
}

/// Opcode numbers and properties against the build itself: names from its
/// jit/vmdef.lua, operand-A modes and metamethods from its `lj_bc_mode`.
#[test]
fn opcode_table_matches_the_debug_build() {
    let prefix = debug_prefix();
    let share = prefix.join("share");
    require(&share);
    let vmdef = fs::read_dir(&share)
        .expect("share dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("jit/vmdef.lua"))
        .find(|p| p.exists())
        .expect("jit/vmdef.lua under share/luajit-*");
    let text = fs::read_to_string(vmdef).expect("vmdef.lua");
    let names = text.split("bcnames = \"").nth(1).and_then(|s| s.split('"').next()).expect("bcnames");
    let names: Vec<String> =
        names.as_bytes().chunks(6).map(|c| String::from_utf8_lossy(c).trim().to_string()).collect();
    let ours: Vec<String> = L.ops.iter().map(|op| format!("{op:?}").to_uppercase()).collect();
    assert_eq!(names, ours);

    let lib = prefix.join("lib/libluajit-5.1.so.2");
    require(&lib);
    let data = fs::read(&lib).expect("read libluajit");
    let file = object::File::parse(&*data).expect("parse libluajit");
    let sym = file.symbols().find(|s| s.name() == Ok("lj_bc_mode")).expect("lj_bc_mode in the debug build");
    let section = file
        .sections()
        .find(|s| (s.address()..s.address() + s.size()).contains(&sym.address()))
        .expect("section of lj_bc_mode");
    let bytes = section.data().expect("section data");
    let start = (sym.address() - section.address()) as usize;
    let modes: Vec<u16> =
        bytes[start..start + 2 * L.ops.len()].chunks(2).map(|c| u16::from_ne_bytes([c[0], c[1]])).collect();
    // BCMode order of lj_bc.h for operand A; MM_call's place in MMDEF (lj_obj.h).
    let a_modes = [AMode::None, AMode::Dst, AMode::Base, AMode::Var, AMode::Rbase, AMode::Uv];
    let mm_call = 9;
    let mm_none = modes.iter().map(|m| m >> 11).max().expect("modes");
    for (op, mode) in L.ops.iter().zip(modes) {
        assert_eq!(a_modes.get(usize::from(mode & 7)), Some(&op.a_mode()), "{op:?} A mode");
        let mm = match mode >> 11 {
            m if m == mm_call => Mm::Call,
            m if m == mm_none => Mm::None,
            _ => Mm::Other,
        };
        assert_eq!(mm, op.mm(), "{op:?} metamethod");
    }
}
