//! Every LuaJIT build `cargo xtask setup` makes, each on a real process:
//! upstream 2.1 as Debian ships it (stripped) and with `-g`, both forks built
//! without GC64 (and one of them stripped), LuaJIT linked statically into a
//! stripped C host that exports nothing, upstream's library under another name
//! loaded with dlopen, and Debian's `wrk` embedding the upstream library. For
//! each: `doctor` names its layout, `cpu --stack lua` agrees with LuaJIT's own
//! profiler on the same run, `offcpu` names the blocking call, and the tools
//! that read GC64 only work on upstream and refuse non-GC64 in one sentence.

use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use ljprobe_tests::{
    assert_one_sentence, fidelity::fidelity, gateway, ljprobe, luajit::{self, Luajit}, out_dir, read_folded,
    require_root, stderr, stdout, weight, Background,
};
use serde_json::Value;
use xtask::{gateway::LuaJitBuild, luajit_builds};

/// Each build `setup` makes, the layout ljprobe must pick, and whether it is GC64.
const BUILDS: &[(&str, &str, bool)] = &[
    ("upstream-stock", "upstream-2.1-gc64-x86_64", true),
    ("upstream-debug", "upstream-2.1-gc64-x86_64", true),
    ("openresty-nogc64-debug", "openresty-2.1-nogc64-x86_64", false),
    ("upstream-nogc64-debug", "upstream-2.1-nogc64-x86_64", false),
];

/// A script that runs until killed: a hot loop, and a thin wrapper around an
/// FFI call that blocks 5 ms every so often.
const SPIN_AND_NAP: &str = r#"
local ffi = require("ffi")
ffi.cdef("int usleep(unsigned int usec);")
local function crunch(n)
  local x = 0
  for i = 1, n do x = (x + i * 3) % 1000003 end
  return x
end
local function nap()
  ffi.C.usleep(5000)
end
print("ready")
io.stdout:flush()
local sink = 0
while true do
  sink = sink + crunch(200000)
  nap()
end
"#;

/// `text` running under `lj` (killed when dropped), once it has said `ready`.
fn run(lj: &Luajit, name: &str, text: &str) -> Background {
    let (_, mut cmd) = lj.script(name, text);
    let mut child = cmd.stdout(Stdio::piped()).spawn().expect("luajit runs");
    wait_ready(&mut child);
    Background(child)
}

fn wait_ready(child: &mut Child) {
    use std::io::BufRead;
    let out = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    std::io::BufReader::new(out).read_line(&mut line).expect("the script speaks");
    assert_eq!(line.trim(), "ready", "the script did not start");
}

fn doctor(name: &str, pid: u32) -> Value {
    let json = out_dir().join(format!("builds-doctor-{name}.json"));
    let out = ljprobe(&["doctor", "--pid", &pid.to_string(), "--json", json.to_str().unwrap()]);
    assert!(out.status.success(), "{name}: {}\n{}", stdout(&out), stderr(&out));
    serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap()
}

fn assert_layout(name: &str, report: &Value, layout: &str, gc64: bool) {
    let lj = &report["target"]["processes"][0]["luajit"];
    assert_eq!(lj["layout"]["name"], layout, "{name}: {lj}");
    assert_eq!(lj["layout"]["gc64"], gc64, "{name}: {lj}");
    assert_eq!(report["vms"][0]["found"], true, "{name}: the VM check with that layout: {report}");
}

/// The non-GC64 OpenResty build with its symbols and DWARF stripped: known
/// by its file alone, chosen by its fork and the live VM (32-bit references).
fn stripped_nogc64() -> Luajit {
    let b = luajit_builds::find("openresty-nogc64-debug").expect("a setup build");
    let bin = out_dir().join("luajit-nogc64-stripped");
    fs::copy(b.luajit(), &bin).expect("the luajit binary is copied");
    assert!(Command::new("strip").arg(&bin).status().unwrap().success());
    Luajit { name: "nogc64-stripped", bin: bin.display().to_string(), lua_path: Some(b.lua_path()), embedded: false }
}

#[test]
fn doctor_names_the_layout_of_every_build() {
    require_root();
    let mut all = vec![
        (luajit::debug_build(), "openresty-2.1-gc64-x86_64", true),
        (luajit::stock_build(), "openresty-2.1-gc64-x86_64", true),
        (stripped_nogc64(), "openresty-2.1-nogc64-x86_64", false),
    ];
    all.extend(BUILDS.iter().map(|&(b, layout, gc64)| (luajit::setup_build(b), layout, gc64)));
    for (lj, layout, gc64) in &all {
        let target = run(lj, &format!("builds-doctor-{}", lj.name), SPIN_AND_NAP);
        let report = doctor(lj.name, target.id());
        assert_layout(lj.name, &report, layout, *gc64);
        let source = &report["target"]["processes"][0]["luajit"]["layout"]["source"];
        // A stripped build is known by its file, chosen by its fork and the live VM.
        if lj.name.ends_with("stock") || lj.name.ends_with("stripped") {
            assert_eq!(source["kind"], "builtin", "{}: {source}", lj.name);
        } else {
            assert_eq!(source["kind"], "dwarf", "{}: {source}", lj.name);
            assert_eq!(source["same_as_known"], true, "{}: {source}", lj.name);
        }
    }
}

#[test]
fn cpu_agrees_with_jp_on_upstream_stock() {
    fidelity(luajit::setup_build("upstream-stock"), None);
}

#[test]
fn cpu_agrees_with_jp_on_upstream_debug() {
    fidelity(luajit::setup_build("upstream-debug"), Some("pmain"));
}

#[test]
fn cpu_agrees_with_jp_on_openresty_without_gc64() {
    fidelity(luajit::setup_build("openresty-nogc64-debug"), Some("pmain"));
}

#[test]
fn cpu_agrees_with_jp_on_upstream_without_gc64() {
    fidelity(luajit::setup_build("upstream-nogc64-debug"), Some("pmain"));
}

#[test]
fn cpu_agrees_with_jp_on_a_stripped_build_without_gc64() {
    fidelity(stripped_nogc64(), None);
}

/// Blocked time lands on the FFI call's system call under the script, on
/// every build; where traces are read (GC64), with the C function the trace
/// called (`usleep`) too.
#[test]
fn offcpu_names_the_blocking_call_on_every_build() {
    require_root();
    for &(build, _, gc64) in BUILDS {
        assert_offcpu_names_the_nap(&luajit::setup_build(build), gc64);
    }
}

fn assert_offcpu_names_the_nap(lj: &Luajit, gc64: bool) {
    let name = lj.name;
    let target = run(lj, &format!("builds-offcpu-{name}"), SPIN_AND_NAP);
    let folded = out_dir().join(format!("builds-offcpu-{name}.folded"));
    let svg = out_dir().join(format!("builds-offcpu-{name}.svg"));
    let out = ljprobe(&[
        "offcpu", "--pid", &target.id().to_string(), "--duration", "2s",
        "--folded", folded.to_str().unwrap(), "--svg", svg.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{name}: {}\n{}", stdout(&out), stderr(&out));
    let stacks = read_folded(&folded);
    // Time preempted (another process on the CPU, a CPU quota) is shown apart and is not the nap's.
    let total = weight(&stacks, |s| !s.contains("[runnable: waiting for a CPU]"));
    let script = format!("builds-offcpu-{name}.lua");
    let call = if gc64 { "usleep;clock_nanosleep (syscall)" } else { "clock_nanosleep (syscall)" };
    let napping = weight(&stacks, |s| s.contains(&script) && s.contains(call));
    assert!(total > 0 && napping * 10 >= total * 9, "{name}: {napping} of {total} us in `{call}`:\n{stacks:#?}");
}

/// What reads the heap, the collector or the trace compiler works on
/// upstream GC64 and refuses a non-GC64 build in one sentence.
#[test]
fn the_other_tools_work_on_upstream_and_refuse_without_gc64() {
    require_root();
    let lj = luajit::setup_build("upstream-stock");
    let target = run(&lj, "builds-tools-upstream", SPIN_AND_NAP);
    let pid = target.id().to_string();
    for args in [
        vec!["gc", "--duration", "1s"],
        vec!["alloc", "--duration", "1s"],
        vec!["heap"],
        vec!["jit", "--duration", "1s"],
    ] {
        let json = out_dir().join(format!("builds-{}.json", args[0]));
        let svg = out_dir().join(format!("builds-{}.svg", args[0]));
        let mut all = vec![args[0], "--pid", &pid, "--json", json.to_str().unwrap(), "--svg", svg.to_str().unwrap()];
        all.extend_from_slice(&args[1..]);
        let out = ljprobe(&all);
        assert!(out.status.success(), "{}: {}\n{}", args[0], stdout(&out), stderr(&out));
        let report: Value = serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap();
        assert!(report.is_object(), "{}: {report}", args[0]);
    }
    drop(target);
    let lj = luajit::setup_build("upstream-nogc64-debug");
    let target = run(&lj, "builds-tools-nogc64", SPIN_AND_NAP);
    let pid = target.id().to_string();
    for tool in ["gc", "alloc", "heap", "leak", "jit"] {
        let out = ljprobe(&[tool, "--pid", &pid]);
        assert_one_sentence(&out, "without GC64");
    }
}

/// A C program that runs the Lua script named by its first argument.
const HOST: &str = r#"
#include <stdio.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>
int main(int argc, char **argv) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  lua_newtable(L);
  for (int i = 1; i < argc; i++) { lua_pushstring(L, argv[i]); lua_rawseti(L, -2, i - 1); }
  lua_setglobal(L, "arg");
  if (luaL_dofile(L, argv[1])) { fprintf(stderr, "%s\n", lua_tostring(L, -1)); return 1; }
  lua_close(L);
  return 0;
}
"#;

/// Upstream LuaJIT linked statically into `host`, stripped, exporting nothing:
/// found by its banner and its live VM, not by a file name or a symbol.
fn static_host() -> PathBuf {
    let b = luajit_builds::find("upstream-debug").expect("upstream-debug is a setup build");
    let include = format!("-I{}", b.prefix().join("include/luajit-2.1").display());
    let archive = b.prefix().join("lib/libluajit-5.1.a").display().to_string();
    let bin = compile("static-host", HOST, &[&include, &archive, "-lm", "-ldl"]);
    assert!(Command::new("strip").arg(&bin).status().unwrap().success());
    let nm = Command::new("nm").args(["-D", "--defined-only"]).arg(&bin).output().unwrap();
    assert!(!String::from_utf8_lossy(&nm.stdout).contains("lua_"), "the host exports the Lua API");
    bin
}

#[test]
fn a_stripped_program_with_luajit_linked_in_is_found_and_profiled() {
    require_root();
    let host = static_host();
    let b = luajit_builds::find("upstream-debug").unwrap();
    let lj = Luajit { name: "static-host", bin: host.display().to_string(), lua_path: Some(b.lua_path()), embedded: true };
    let target = run(&lj, "builds-static-doctor", SPIN_AND_NAP);
    assert_upstream_found("static-host", target.id(), "static", |p| p.ends_with("static-host"));
    let (json, svg) = (out_dir().join("builds-static-gc.json"), out_dir().join("builds-static-gc.svg"));
    let gc = ljprobe(&[
        "gc", "--pid", &target.id().to_string(), "--duration", "1s",
        "--json", json.to_str().unwrap(), "--svg", svg.to_str().unwrap(),
    ]);
    assert!(gc.status.success(), "gc: {}", stderr(&gc));
    let heap: Value = serde_json::from_str(&fs::read_to_string(&json).unwrap()).expect("gc's JSON");
    assert!(heap.is_object(), "{heap}");
    drop(target);
    assert_offcpu_names_the_nap(&lj, true);
    fidelity(lj, None);
}

/// `source` compiled with `cc -O2` and `args` into target/test-out/NAME.
fn compile(name: &str, source: &str, args: &[&str]) -> PathBuf {
    let dir = out_dir();
    let (src, bin) = (dir.join(format!("{name}.c")), dir.join(name));
    fs::write(&src, source).unwrap();
    let out = Command::new("cc").arg("-O2").arg("-o").arg(&bin).arg(&src).args(args).output().expect("cc runs (build-essential)");
    assert!(out.status.success(), "building {name}: {}", String::from_utf8_lossy(&out.stderr));
    bin
}

/// `doctor` on `pid` finds upstream's GC64 layout, embedded as `embedding`
/// in an object whose path passes `path`.
fn assert_upstream_found(name: &str, pid: u32, embedding: &str, path: impl Fn(&str) -> bool) {
    let report = doctor(name, pid);
    assert_layout(name, &report, "upstream-2.1-gc64-x86_64", true);
    let luajit = &report["target"]["processes"][0]["luajit"];
    assert_eq!(luajit["embedding"], embedding, "{name}: {luajit}");
    assert!(path(luajit["path"].as_str().unwrap()), "{name}: {luajit}");
}

/// A C program that loads LuaJIT from a library given by path (of any name)
/// and runs the Lua script named by its first argument.
const DLOPEN_HOST: &str = r#"
#include <dlfcn.h>
#include <stdio.h>
#define LUA_GLOBALSINDEX (-10002)
typedef void *S;
int main(int argc, char **argv) {
  void *lib = dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL);
  if (!lib) { fprintf(stderr, "%s\n", dlerror()); return 1; }
  S (*newstate)(void) = dlsym(lib, "luaL_newstate");
  void (*openlibs)(S) = dlsym(lib, "luaL_openlibs");
  void (*createtable)(S, int, int) = dlsym(lib, "lua_createtable");
  void (*pushstring)(S, const char *) = dlsym(lib, "lua_pushstring");
  void (*rawseti)(S, int, int) = dlsym(lib, "lua_rawseti");
  void (*setfield)(S, int, const char *) = dlsym(lib, "lua_setfield");
  int (*loadfile)(S, const char *) = dlsym(lib, "luaL_loadfile");
  int (*pcall)(S, int, int, int) = dlsym(lib, "lua_pcall");
  const char *(*tolstring)(S, int, size_t *) = dlsym(lib, "lua_tolstring");
  S L = newstate();
  openlibs(L);
  createtable(L, argc, 0);
  for (int i = 2; i < argc; i++) { pushstring(L, argv[i]); rawseti(L, -2, i - 2); }
  setfield(L, LUA_GLOBALSINDEX, "arg");
  if (loadfile(L, argv[2]) || pcall(L, 0, 0, 0)) { fprintf(stderr, "%s\n", tolstring(L, -1, 0)); return 1; }
  return 0;
}
"#;

/// Upstream's stripped library under a name that says nothing of LuaJIT,
/// loaded by a program that is neither nginx nor luajit.
#[test]
fn luajit_in_a_library_of_any_name_is_found_and_profiled() {
    require_root();
    let b = luajit_builds::find("upstream-stock").expect("a setup build");
    let dir = out_dir();
    let lib = dir.join("libengine.so.1");
    fs::copy(b.lib(), &lib).expect("the library is copied");
    let bin = compile("dlopen-host", DLOPEN_HOST, &["-ldl"]);
    // The host takes the library first; the script and its arguments follow.
    let wrapper = dir.join("dlopen-host.sh");
    fs::write(&wrapper, format!("#!/bin/sh\nexec {} {} \"$@\"\n", bin.display(), lib.display())).unwrap();
    assert!(Command::new("chmod").arg("+x").arg(&wrapper).status().unwrap().success());
    let lj = Luajit { name: "dlopen-host", bin: wrapper.display().to_string(), lua_path: Some(b.lua_path()), embedded: true };
    let target = run(&lj, "builds-dlopen-doctor", SPIN_AND_NAP);
    assert_upstream_found("dlopen-host", target.id(), "shared-library", |p| p.ends_with("libengine.so.1"));
    drop(target);
    fidelity(lj, None);
}

/// Debian's `wrk` runs its Lua scripts on the LuaJIT library it loads: the
/// upstream one here, through LD_LIBRARY_PATH. Not nginx, several VMs (one
/// per thread and the main one).
#[test]
fn wrk_running_upstream_luajit_is_profiled_at_its_lua_function() {
    require_root();
    let gw = gateway("builds-wrk", LuaJitBuild::Stock);
    let b = luajit_builds::find("upstream-stock").unwrap();
    let script = out_dir().join("builds-wrk.lua");
    fs::write(
        &script,
        r#"
local function crunch(n)
  local x = 0
  for i = 1, n do x = (x + i * 3) % 1000003 end
  return x
end
sink = 0
response = function(status, headers, body)
  sink = sink + crunch(100000)
end
"#,
    )
    .unwrap();
    let wrk = Background(
        Command::new("wrk")
            .args(["-t1", "-c1", "-d120s", "-s"])
            .arg(&script)
            .arg(format!("{}/health", gw.config.url()))
            .env("LD_LIBRARY_PATH", b.lib_dir())
            .stdout(Stdio::null())
            .spawn()
            .expect("wrk runs"),
    );
    thread::sleep(Duration::from_millis(500));
    assert_upstream_found("wrk", wrk.id(), "shared-library", |p| p.contains("upstream-stock"));
    let (folded, svg) = (out_dir().join("builds-wrk.folded"), out_dir().join("builds-wrk.svg"));
    let out = ljprobe(&[
        "cpu", "--pid", &wrk.id().to_string(), "--duration", "2s",
        "--folded", folded.to_str().unwrap(), "--svg", svg.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let stacks = read_folded(&folded);
    // Its script's only work is crunch, which takes far longer than a
    // loopback request: most of wrk's time is in it.
    let total = weight(&stacks, |_| true);
    let crunch = weight(&stacks, |s| s.contains(&format!("crunch {}:2", script.display())));
    assert!(crunch * 10 >= total * 5, "{crunch} of {total} samples in crunch:\n{stacks:#?}");
}

/// The collector's atomic phase is hooked by a uprobe on its flip of the
/// white (`lua::gc_flip`), so that `alloc` and `gc --exact` arm no debug
/// register: the store is found exactly once in every build's code, at the
/// offset of `gc.currentwhite` its layout gives. No root needed.
#[test]
fn the_atomic_phases_flip_is_found_once_in_every_build() {
    use ljprobe::{lua::gc_flip, target::known_builds};
    let debug = xtask::paths::luajit_debug();
    let mut files: Vec<(PathBuf, &str)> = vec![
        (debug.join("lib/libluajit-5.1.so.2"), "openresty-2.1-gc64-x86_64"),
        (debug.join("bin/luajit"), "openresty-2.1-gc64-x86_64"),
        ("/usr/lib/x86_64-linux-gnu/libluajit-5.1.so.2".into(), "openresty-2.1-gc64-x86_64"),
        ("/usr/bin/luajit".into(), "openresty-2.1-gc64-x86_64"),
    ];
    for (name, layout, _) in BUILDS {
        files.push((luajit_builds::find(name).unwrap().lib(), layout));
    }
    for (file, layout) in files {
        let currentwhite = known_builds::named(layout).unwrap().gc.currentwhite;
        let found = gc_flip::find_in_file(&file, currentwhite);
        assert!(found.is_ok(), "{}: {found:?}", file.display());
    }
}
