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
}

pub fn debug_build() -> Luajit {
    let prefix = paths::luajit_debug();
    Luajit {
        name: "debug",
        bin: prefix.join("bin/luajit").display().to_string(),
        lua_path: Some(format!("{}/share/luajit-2.1.0-beta3/?.lua;;", prefix.display())),
    }
}

/// Debian's stripped `luajit2`: the VM nginx runs.
pub fn stock_build() -> Luajit {
    Luajit { name: "stock", bin: "/usr/bin/luajit".into(), lua_path: None }
}

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
        cmd.arg(format!("-jp={mode}")).arg(script).args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
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
