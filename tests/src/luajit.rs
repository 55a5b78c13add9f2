//! LuaJIT builds to run test scripts with, and LuaJIT's own sampling profiler
//! (`-jp`) as ground truth: the same script runs under it while ljprobe
//! samples the process.

use std::{
    collections::HashMap,
    path::Path,
    process::{Child, Command, Stdio},
};

use xtask::paths;

/// A LuaJIT build to run scripts with: its binary and the `LUA_PATH` that
/// finds its `jit.*` modules (the debug build keeps them under its prefix).
pub struct Luajit {
    pub name: &'static str,
    pub bin: String,
    pub lua_path: Option<String>,
    /// A program that embeds LuaJIT and runs the script named by its first
    /// argument, without `luajit`'s `-jp` option: profiled through `jit.p`.
    pub embedded: bool,
}

pub fn debug_build() -> Luajit {
    let prefix = paths::luajit_debug();
    Luajit {
        name: "debug",
        bin: prefix.join("bin/luajit").display().to_string(),
        lua_path: Some(format!("{}/share/luajit-2.1.0-beta3/?.lua;;", prefix.display())),
        embedded: false,
    }
}

/// Debian's stripped `luajit2`: the VM nginx runs.
pub fn stock_build() -> Luajit {
    Luajit { name: "stock", bin: "/usr/bin/luajit".into(), lua_path: None, embedded: false }
}

/// One of the builds `cargo xtask setup` makes under target/luajit-builds
/// (`xtask::luajit_builds::BUILDS`), with its own `jit.*` modules.
pub fn setup_build(name: &'static str) -> Luajit {
    let b = xtask::luajit_builds::find(name).unwrap_or_else(|| panic!("no build {name} in xtask::luajit_builds"));
    assert!(b.luajit().exists(), "{} is missing: run `cargo xtask setup`", b.luajit().display());
    Luajit { name, bin: b.luajit().display().to_string(), lua_path: Some(b.lua_path()), embedded: false }
}

/// Runs `jit.p` around a script for a program without `-jp`: arguments
/// MODE SCRIPT ARGS..., the script sees `arg` as `luajit` would give it.
const PROFILED: &str = r#"
local mode, script = arg[1], arg[2]
arg = { [0] = script, select(3, unpack(arg)) }
local p = require("jit.p")
p.start(mode)
dofile(script)
p.stop()
"#;

impl Luajit {
    /// Writes `text` to `target/test-out/NAME.lua` and returns it with a
    /// command that runs it (output discarded; add arguments as needed).
    pub fn script(&self, name: &str, text: &str) -> (std::path::PathBuf, Command) {
        let path = crate::out_dir().join(format!("{name}.lua"));
        std::fs::write(&path, text).expect("the script is written");
        let mut cmd = Command::new(&self.bin);
        cmd.arg(&path).stdout(Stdio::null());
        if let Some(p) = &self.lua_path {
            cmd.env("LUA_PATH", p);
        }
        (path, cmd)
    }

    /// Starts `script` with `args` under `-jp=<mode>` (its report on stdout at exit).
    pub fn spawn_profiled(&self, mode: &str, script: &Path, args: &[&str]) -> Child {
        let mut cmd = Command::new(&self.bin);
        if self.embedded {
            let wrapper = crate::out_dir().join("jit-p-wrapper.lua");
            std::fs::write(&wrapper, PROFILED).expect("the wrapper is written");
            cmd.arg(wrapper).arg(mode);
        } else {
            cmd.arg(format!("-jp={mode}"));
        }
        cmd.arg(script).args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        if let Some(p) = &self.lua_path {
            cmd.env("LUA_PATH", p);
        }
        cmd.spawn().expect("luajit runs")
    }
}

/// The `NN%  name` lines of a `-jp` report: share in percent by name (a
/// function with `f`, `file:line` with `l`).
pub fn shares(report: &str) -> HashMap<String, f64> {
    report
        .lines()
        .filter_map(|l| {
            let (pct, name) = l.trim().split_once('%')?;
            Some((name.trim().to_string(), pct.trim().parse::<f64>().ok()?))
        })
        .collect()
}
