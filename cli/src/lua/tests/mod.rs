//! Tests of the Lua frame resolver: synthetic memory images, and live LuaJIT
//! processes (root, and the builds `cargo xtask setup` installs).

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

mod bounds;
pub(crate) mod image;
mod live;
mod prop;
mod heap;
mod jit_state;
mod trace;
mod unit;

pub fn debug_prefix() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/luajit-debug")
}

/// What gdb prints for each expression, read from `lib`'s DWARF: the
/// layouts' offsets are checked against the debug build this way.
pub fn gdb_values(lib: &Path, exprs: &[String]) -> Vec<u64> {
    let mut cmd = std::process::Command::new("gdb");
    cmd.args(["-batch", "-nx"]);
    for expr in exprs {
        cmd.arg("-ex").arg(format!("print {expr}"));
    }
    let out = cmd.arg(lib).output().expect("running gdb (install it: the layout is checked against DWARF with it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let got: Vec<u64> = text.lines().filter_map(|l| l.strip_prefix('$')?.split_once(" = ")?.1.trim().parse().ok()).collect();
    assert_eq!(got.len(), exprs.len(), "gdb output:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    got
}

pub fn require(path: &Path) {
    assert!(path.exists(), "{} is missing: run `cargo xtask setup`", path.display());
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "this test reads /proc/PID/mem of a child: run it as root");
}

/// A script running under one luajit, in a temp dir of its own; killed and
/// cleaned up on drop, even when an assertion fails first.
pub struct LiveLua {
    pub child: Child,
    dir: PathBuf,
    pub script: PathBuf,
}

impl Drop for LiveLua {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl LiveLua {
    /// Starts `text` and waits until it prints `ready`; returns the lines it
    /// printed before. Its stdin stays open, for a script that waits on it.
    /// `tag` names the temp dir: tests running at once need different tags.
    pub fn start(luajit: &Path, tag: &str, text: &str) -> (LiveLua, Vec<String>) {
        let dir = std::env::temp_dir().join(format!("ljprobe-lua-{tag}-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let script = dir.join("script.lua");
        fs::write(&script, text).expect("write script");
        let child = Command::new(luajit)
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", luajit.display()));
        let mut live = LiveLua { child, dir, script };
        let stdout = live.child.stdout.take().expect("piped stdout");
        let mut before = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("reading the script's output");
            if line == "ready" {
                return (live, before);
            }
            before.push(line);
        }
        panic!("{} exited before printing `ready`", luajit.display());
    }
}
