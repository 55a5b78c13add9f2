//! Frames inlined by JIT traces: the snapshot walk over synthetic traces (including garbage), and a live LuaJIT
//! blocked in an FFI call made by an inlined function. The live parts need
//! root (/proc/PID/mem) and the builds `cargo xtask setup` installs.

use std::{
    fs,
    path::Path,
    time::{Duration, Instant},
};

use super::{
    debug_prefix,
    image::{FakeMem, Image, L},
    require, require_root, LiveLua,
};
use crate::{
    lua::{trace::inlined_frames, LuaFrame, Memory, ProcMem, RawFrame, Resolver, MAX_INLINED},
    target::{known_builds::openresty_gc64, process::Process, vm_scan::find_global_state},
};

static T: std::sync::LazyLock<crate::lua::TraceLayout> = std::sync::LazyLock::new(|| L.trace);

// ---- Synthetic traces ----

pub(super) const G: u64 = 0x7e00_0000_0000;
pub(super) const MCODE: u64 = 0x7e10_0000_0000;
const SZMCODE: u32 = 0x200;
pub(super) const SNAP1_AT: u16 = 0x80;
// The layout file's values (checked in `synthetic_constants_are_the_layouts`).
const REF_BIAS: u32 = 0x8000;
const KNUM: u8 = 28;
const KGC: u8 = 24;
const IRT_FUNC: u8 = 8;
const IRT_NUM: u8 = 14;

#[test]
fn synthetic_constants_are_the_layouts() {
    assert_eq!((REF_BIAS, KNUM, KGC, IRT_FUNC), (T.ref_bias, T.ir_knum, T.ir_kgc, T.irt_func));
}

fn entry(slot: u32, flags: u32, r: u32) -> u32 {
    (slot << 24) | flags | r
}

/// A trace in an `Image`: `consts` are 64-bit constants (op, type, value) at
/// refs `REF_BIAS - 2*(i+1)`; snapshot 0 starts at mcode offset 0 with no
/// entries, snapshot 1 at `SNAP1_AT` with `entries`.
pub(super) struct Built {
    pub(super) img: Image,
    pub(super) trace: u64,
    pub(super) traceno: u32,
}

fn kref(i: usize) -> u32 {
    REF_BIAS - 2 * (i as u32 + 1)
}

fn build(consts: &[(u8, u8, u64)], entries: &[u32]) -> Built {
    let mut img = Image::default();
    let traceno = 3;
    let nk = kref(consts.len() - 1);
    let nins = REF_BIAS + 1;
    let nir = (nins - nk) as usize;
    let snaps: [(u16, &[u32]); 2] = [(0, &[]), (SNAP1_AT, entries)];
    let nsnapmap: usize = snaps.iter().map(|(_, e)| e.len() + 2).sum();
    let size = T.trace_size as usize + nir * 8 + snaps.len() * T.snap_size as usize + nsnapmap * 4;
    let trace = img.alloc(vec![0; size]);
    let ir = trace + T.trace_size - u64::from(nk) * 8;
    let snap = trace + T.trace_size + nir as u64 * 8;
    let snapmap = snap + snaps.len() as u64 * T.snap_size;
    let buf = img.mem.region_mut(trace).expect("trace region");
    let mut put = |off: u64, bytes: &[u8]| buf[off as usize..off as usize + bytes.len()].copy_from_slice(bytes);
    put(L.gct, &[T.gct_trace]);
    put(T.trace_traceno, &(traceno as u16).to_ne_bytes());
    put(T.trace_nsnap, &(snaps.len() as u16).to_ne_bytes());
    put(T.trace_nins, &nins.to_ne_bytes());
    put(T.trace_nk, &nk.to_ne_bytes());
    put(T.trace_ir, &ir.to_ne_bytes());
    put(T.trace_nsnapmap, &(nsnapmap as u32).to_ne_bytes());
    put(T.trace_snap, &snap.to_ne_bytes());
    put(T.trace_snapmap, &snapmap.to_ne_bytes());
    put(T.trace_mcode, &MCODE.to_ne_bytes());
    put(T.trace_szmcode, &SZMCODE.to_ne_bytes());
    for (i, &(op, t, value)) in consts.iter().enumerate() {
        let at = ir + u64::from(kref(i)) * 8 - trace;
        put(at + T.ir_t, &[t]);
        put(at + T.ir_o, &[op]);
        put(at + 8, &value.to_ne_bytes());
    }
    let mut mapofs = 0u32;
    for (i, (mcofs, entries)) in snaps.iter().enumerate() {
        let at = snap - trace + i as u64 * T.snap_size;
        put(at + T.snap_mapofs, &mapofs.to_ne_bytes());
        put(at + T.snap_mcofs, &mcofs.to_ne_bytes());
        put(at + T.snap_nent, &[entries.len() as u8]);
        for (j, e) in entries.iter().enumerate() {
            put(snapmap - trace + (mapofs as u64 + j as u64) * 4, &e.to_ne_bytes());
        }
        mapofs += entries.len() as u32 + 2;
    }
    let mut traces = vec![0u8; 8 * 8];
    traces[traceno as usize * 8..][..8].copy_from_slice(&trace.to_ne_bytes());
    let traces = img.alloc(traces);
    let mut gbuf = vec![0u8; (T.g2j + T.j_sizetrace + 4) as usize];
    gbuf[(T.g2j + T.j_trace) as usize..][..8].copy_from_slice(&traces.to_ne_bytes());
    gbuf[(T.g2j + T.j_sizetrace) as usize..][..4].copy_from_slice(&8u32.to_ne_bytes());
    img.mem.put(G, gbuf);
    Built { img, trace, traceno }
}

const F_OUTER: u64 = 0x7f00_aaaa_0000;
const F_INNER: u64 = 0x7f00_bbbb_0000;
const LINK_OUTER: u64 = 0x7f00_cccc_0010;
const LINK_INNER: u64 = 0x7f00_dddd_0020;

/// Root slots 0-1, a local in slot 2 (an instruction), then two inlined
/// frames: outer at slots 3-4, inner at 6-7; slot 1 marks a tail call.
pub(super) fn two_frames() -> Built {
    let consts =
        [(KGC, IRT_FUNC, F_OUTER), (KNUM, IRT_NUM, LINK_OUTER), (KGC, IRT_FUNC, F_INNER), (KNUM, IRT_NUM, LINK_INNER)];
    let f = T.snap_frame;
    let entries = [
        entry(1, f | 0x4_0000, REF_BIAS - 1),
        entry(2, 0, REF_BIAS + 1),
        entry(3, 0, kref(0)),
        entry(4, f, kref(1)),
        entry(5, 0, REF_BIAS + 1),
        entry(6, 0, kref(2)),
        entry(7, f, kref(3)),
    ];
    build(&consts, &entries)
}

fn frames_at(b: &Built, mem: &FakeMem, addrs: &[u64]) -> Vec<RawFrame> {
    inlined_frames(mem, &L, G, b.traceno, addrs).map(|i| i.frames).unwrap_or_default()
}

#[test]
fn rebuilds_inlined_frames_innermost_first() {
    let b = two_frames();
    let want = vec![RawFrame { func: F_INNER, link: LINK_INNER }, RawFrame { func: F_OUTER, link: LINK_OUTER }];
    let in_snap1 = MCODE + u64::from(SNAP1_AT) + 5;
    // Addresses outside the trace are passed over; the first inside is used.
    let got =
        inlined_frames(&b.img.mem, &L, G, b.traceno, &[0, 1, MCODE + 0x10_0000, in_snap1, MCODE + 1]).expect("found");
    assert_eq!((got.addr, got.snapno, got.frames), (in_snap1, 1, want.clone()));
    // Through the resolver as well.
    let mut r = Resolver::with_layout(b.img.mem.clone(), *L);
    assert_eq!(r.inlined_frames(G, b.traceno, &[in_snap1]), want);
    // The last byte of the trace belongs to the last snapshot.
    assert_eq!(frames_at(&b, &b.img.mem, &[MCODE + u64::from(SZMCODE)]), want);
}

#[test]
fn return_addresses_are_charged_to_their_call() {
    let b = two_frames();
    // A call ending right where snapshot 1 starts was made under snapshot 0.
    assert_eq!(frames_at(&b, &b.img.mem, &[MCODE + u64::from(SNAP1_AT)]), vec![]);
    let got = frames_at(&b, &b.img.mem, &[MCODE + u64::from(SNAP1_AT) + 1]);
    assert_eq!(got.len(), 2);
}

#[test]
fn nothing_outside_the_trace() {
    let b = two_frames();
    for addr in [0, MCODE, MCODE + u64::from(SZMCODE) + 1, u64::MAX] {
        assert_eq!(frames_at(&b, &b.img.mem, &[addr]), vec![], "{addr:#x}");
    }
    let mut r = Resolver::with_layout(b.img.mem.clone(), *L);
    let inside = MCODE + u64::from(SNAP1_AT) + 1;
    assert_eq!(r.inlined_frames(G, 0, &[inside]), vec![], "trace 0");
    assert_eq!(r.inlined_frames(G, 4, &[inside]), vec![], "a free trace number");
    assert_eq!(r.inlined_frames(G, 8, &[inside]), vec![], "beyond sizetrace");
    assert_eq!(r.inlined_frames(G + 8, b.traceno, &[inside]), vec![], "another G");
}

#[test]
fn skips_a_frame_whose_function_is_not_a_constant() {
    let consts = [(KNUM, IRT_NUM, LINK_OUTER), (KGC, IRT_FUNC, F_INNER), (KNUM, IRT_NUM, LINK_INNER)];
    let f = T.snap_frame;
    // The outer function is an instruction (a closure specialised by prototype).
    let entries = [entry(3, 0, REF_BIAS + 1), entry(4, f, kref(0)), entry(6, 0, kref(1)), entry(7, f, kref(2))];
    let b = build(&consts, &entries);
    let got = frames_at(&b, &b.img.mem, &[MCODE + u64::from(SNAP1_AT) + 1]);
    assert_eq!(got, vec![RawFrame { func: F_INNER, link: LINK_INNER }]);
    // No entry at all for the function slot: the same.
    let b = build(&consts, &[entry(4, f, kref(0)), entry(6, 0, kref(1)), entry(7, f, kref(2))]);
    assert_eq!(frames_at(&b, &b.img.mem, &[MCODE + u64::from(SNAP1_AT) + 1]).len(), 1);
}

#[test]
fn inconsistent_traces_give_nothing() {
    let inside = [MCODE + u64::from(SNAP1_AT) + 1];
    let b = two_frames();
    let field = |b: &Built, off: u64| b.trace + off;
    // One field at a time, each set to something a stale or foreign object could hold.
    let breakages: Vec<(&str, u64, Vec<u8>)> = vec![
        ("gct", field(&b, L.gct), vec![T.gct_trace + 1]),
        ("traceno", field(&b, T.trace_traceno), 4u16.to_ne_bytes().to_vec()),
        ("ir", field(&b, T.trace_ir), (b.trace + 8).to_ne_bytes().to_vec()),
        ("nk", field(&b, T.trace_nk), REF_BIAS.to_ne_bytes().to_vec()),
        ("nins", field(&b, T.trace_nins), (REF_BIAS + 2).to_ne_bytes().to_vec()),
        ("nsnap", field(&b, T.trace_nsnap), 0u16.to_ne_bytes().to_vec()),
        ("snapmap", field(&b, T.trace_snapmap), 0u64.to_ne_bytes().to_vec()),
        ("nsnapmap", field(&b, T.trace_nsnapmap), 3u32.to_ne_bytes().to_vec()),
        ("szmcode", field(&b, T.trace_szmcode), 0u32.to_ne_bytes().to_vec()),
    ];
    for (what, at, bytes) in breakages {
        let mut mem = b.img.mem.clone();
        let buf = mem.region_mut(b.trace).expect("trace");
        let off = (at - b.trace) as usize;
        buf[off..off + bytes.len()].copy_from_slice(&bytes);
        assert_eq!(frames_at(&b, &mem, &inside), vec![], "{what}");
    }

    // A frame link that is not a KNUM, a function constant that is not a function.
    let f = T.snap_frame;
    let consts = [(KGC, IRT_FUNC, F_OUTER), (KGC, IRT_FUNC, LINK_OUTER)];
    let b = build(&consts, &[entry(3, 0, kref(0)), entry(4, f, kref(1))]);
    assert_eq!(frames_at(&b, &b.img.mem, &inside), vec![], "link");
    let consts = [(KNUM, IRT_NUM, F_OUTER), (KNUM, IRT_NUM, LINK_OUTER)];
    let b = build(&consts, &[entry(3, 0, kref(0)), entry(4, f, kref(1))]);
    assert_eq!(frames_at(&b, &b.img.mem, &inside), vec![], "func");
    // Refs outside the constants.
    let consts = [(KGC, IRT_FUNC, F_OUTER), (KNUM, IRT_NUM, LINK_OUTER)];
    let b = build(&consts, &[entry(3, 0, kref(0)), entry(4, f, kref(5))]);
    assert_eq!(frames_at(&b, &b.img.mem, &inside), vec![], "link below nk");
    let b = build(&consts, &[entry(3, 0, kref(0)), entry(4, f, REF_BIAS - 1)]);
    assert_eq!(frames_at(&b, &b.img.mem, &inside), vec![], "link value past the constants");
}

#[test]
fn never_panics_on_any_single_byte() {
    let b = two_frames();
    let inside = [MCODE + u64::from(SNAP1_AT) + 1];
    let len = b.img.mem.clone().region_mut(b.trace).expect("trace").len();
    for off in 0..len {
        for value in [0u8, 0x01, 0x7f, 0x80, 0xff] {
            let mut mem = b.img.mem.clone();
            mem.region_mut(b.trace).expect("trace")[off] = value;
            let got = frames_at(&b, &mem, &inside);
            assert!(got.len() <= 2, "byte {off} = {value:#x}: {got:?}");
        }
    }
}

#[test]
fn caps_the_number_of_frames() {
    let f = T.snap_frame;
    let n = 100;
    let mut consts = Vec::new();
    let mut entries = Vec::new();
    for i in 0..n {
        consts.push((KGC, IRT_FUNC, F_OUTER + i as u64 * 0x100));
        consts.push((KNUM, IRT_NUM, LINK_OUTER + i as u64 * 4));
        entries.push(entry(2 * i as u32 + 2, 0, kref(2 * i)));
        entries.push(entry(2 * i as u32 + 3, f, kref(2 * i + 1)));
    }
    let b = build(&consts, &entries);
    let got = frames_at(&b, &b.img.mem, &[MCODE + u64::from(SNAP1_AT) + 1]);
    assert_eq!(got.len(), MAX_INLINED);
    // The innermost are kept.
    assert_eq!(got[0], RawFrame { func: F_OUTER + (n as u64 - 1) * 0x100, link: LINK_OUTER + (n as u64 - 1) * 4 });
}

// ---- A live LuaJIT, blocked in an FFI call from an inlined function ----

/// The lines of `local function inner_block` and `handle` in SCRIPT.
const INNER_LINE: u32 = 10;
const HANDLE_LINE: u32 = 14;

/// A hot loop calls `handle`, which calls `inner_block`, which sleeps in
/// `usleep`: the loop's trace inlines both. The first 200 sleeps are 0 so the
/// trace is compiled quickly; the rest are 200 ms, long enough to catch.
///
/// Two details make LuaJIT keep snapshots inside `inner_block` on both sides
/// of the call, which is what a snapshot walk needs (see lua/trace.rs): the
/// table store is a side effect, so the guard of the next load (the sleep, a
/// value that differs per iteration) gets a snapshot before the call; the call
/// is a side effect too, so the check of its result gets one after it.
const SCRIPT: &str = r#"local ffi = require("ffi")
ffi.cdef[[int usleep(unsigned int usec);]]
local C = ffi.C
local stats = { calls = 0 }
local sleeps = {}
for i = 1, 1000 do sleeps[i] = i > 200 and 200000 or 0 end
io.write("ready\n")
io.stdout:flush()

local function inner_block(i)
  stats.calls = stats.calls + 1
  if C.usleep(sleeps[i]) ~= 0 then error("usleep failed") end
end
local function handle(i)
  inner_block(i)
end
for i = 1, 1000 do
  handle(i)
end
"#;

/// The same with the store moved into `handle` and no check of the result:
/// `inner_block` makes the call with no snapshot inside it on either side.
/// This is the limit of the method, pinned down so a change in it is noticed.
const SCRIPT_NO_SNAPSHOT: &str = r#"local ffi = require("ffi")
ffi.cdef[[int usleep(unsigned int usec);]]
local C = ffi.C
local stats = { calls = 0 }
local sleeps = {}
for i = 1, 1000 do sleeps[i] = i > 200 and 200000 or 0 end
io.write("ready\n")
io.stdout:flush()

local function inner_block(i)
  C.usleep(sleeps[i])
end
local function handle(i)
  stats.calls = stats.calls + 1
  inner_block(i)
end
for i = 1, 1000 do
  handle(i)
end
"#;

/// The user stack pointer of a thread blocked in a sleep, from
/// /proc/PID/syscall: "nr arg1 .. arg6 sp pc" (or "running").
fn sleeping_sp(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    let fields: Vec<&str> = text.split_whitespace().collect();
    // clock_nanosleep and nanosleep, what glibc's usleep uses.
    if fields.len() != 9 || !matches!(fields[0], "230" | "35") {
        return None;
    }
    u64::from_str_radix(fields[7].trim_start_matches("0x"), 16).ok()
}

/// Runs `text` under `luajit`, catches it asleep inside its trace, and checks
/// the inlined frames plus the root frame name as `want` (name, line) says.
fn check_live(luajit: &Path, tag: &str, text: &str, want: &[(Option<&str>, u32)]) {
    require_root();
    require(luajit);
    let (target, _) = LiveLua::start(luajit, &format!("trace-{tag}"), text);
    let pid = target.child.id();
    let script = target.script.to_str().expect("utf-8 temp path").to_string();
    let exe = fs::canonicalize(luajit).expect("luajit path");
    let exe = exe.to_str().expect("utf-8 luajit path");

    let maps = Process::open(pid).expect("process").maps().expect("maps");
    // Both builds link LuaJIT into the executable: its code is the VM's.
    let code: Vec<(u64, u64)> =
        maps.iter().filter(|m| m.executable() && m.file() == Some(exe)).map(|m| (m.start, m.end)).collect();
    assert!(!code.is_empty(), "no executable mapping of {exe}");
    let g = find_global_state(pid, &maps, &openresty_gc64().vm, &code).expect("global_State found by scanning");
    let mem = ProcMem::open(pid).expect("open /proc/PID/mem");
    let mut r = Resolver::with_layout(mem, *L);

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::from("never saw the thread asleep inside a trace");
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        let Some(sp) = sleeping_sp(pid) else { continue };
        let Some(vmstate) = r.memory().read_i32(g + u64::from(openresty_gc64().vm.g_vmstate)) else { continue };
        if vmstate <= 0 {
            last = format!("asleep with vmstate {vmstate}, not in a trace");
            continue;
        }
        let Some(stack) = r.memory().read_bytes(sp, 64 * 8) else { continue };
        let words: Vec<u64> =
            stack.chunks_exact(8).map(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes"))).collect();
        let traceno = vmstate as u32;
        let Some(found) = r.inlined_at(g, traceno, &words) else {
            last = format!("trace {traceno}: no stack word in its machine code, or it read wrong");
            continue;
        };
        // The root frame, as the kernel walks it from jit_base: [func][link] below the base.
        let jit_base = r.memory().read_u64(g + u64::from(openresty_gc64().vm.g_jit_base)).expect("jit_base");
        let root = RawFrame {
            func: r.memory().read_u64(jit_base - 16).expect("root func") & ((1 << 47) - 1),
            link: r.memory().read_u64(jit_base - 8).expect("root link"),
        };
        let mut frames = found.frames.clone();
        frames.push(root);
        let labels = r.resolve(&frames);
        let word = words.iter().position(|&w| w == found.addr).expect("the address is a stack word");
        println!(
            "{tag}: G {g:#x}, trace {traceno}, stack word {word} = {:#x} -> snapshot {}",
            found.addr, found.snapno
        );
        for (raw, label) in frames.iter().zip(&labels) {
            println!("  func {:#x} link {:#x}  {label:?}", raw.func, raw.link);
        }
        let lua =
            |name: Option<&str>, line| LuaFrame::Lua { name: name.map(str::to_string), file: script.clone(), line, at: None };
        let want: Vec<LuaFrame> = want.iter().map(|&(name, line)| lua(name, line)).collect();
        assert_eq!(labels, want, "frames {frames:x?}");
        return;
    }
    panic!("{tag}: {last}");
}

/// Innermost first: `inner_block` named by its call in `handle`, `handle` by
/// its call in the main chunk (line 0), which is the trace's root frame.
const INLINED: [(Option<&str>, u32); 3] = [(Some("inner_block"), INNER_LINE), (Some("handle"), HANDLE_LINE), (None, 0)];

#[test]
fn live_inlined_frames_debug_build() {
    check_live(&debug_prefix().join("bin/luajit"), "debug", SCRIPT, &INLINED);
}

#[test]
fn live_inlined_frames_stock_build() {
    check_live(Path::new("/usr/bin/luajit"), "stock", SCRIPT, &INLINED);
}

/// Around the bare call, the snapshot before it lies in `handle` and the one
/// after it at the loop's next iteration: they agree on no inlined frame, so
/// the sleep is charged to the trace's root frame rather than to a guess.
#[test]
fn live_call_without_snapshots_around_it_is_charged_to_the_root() {
    let want = [(None, 0)];
    check_live(&debug_prefix().join("bin/luajit"), "nosnap", SCRIPT_NO_SNAPSHOT, &want);
}
