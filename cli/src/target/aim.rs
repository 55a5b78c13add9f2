//! What a stack-recording tool aims its kernel program at: the processes with a
//! Lua VM (or, for native stacks, whatever the PID is), where LuaJIT keeps its
//! state, and which object is LuaJIT.

use anyhow::{bail, Context, Result};
use ljprobe_common::VmLayout;

use super::{
    known_builds::{self, BuildLayout},
    LuaJit, Process, Target,
};

pub struct Aim {
    pub processes: Vec<Process>,
    pub pids: Vec<u32>,
    pub layout: VmLayout,
    /// Everything user space reads of that build (objects, traces, collector).
    pub build: &'static BuildLayout,
    /// The LuaJIT object the targets map (the first's: one nginx binary, one
    /// LuaJIT); None without a VM.
    pub luajit: Option<LuaJit>,
    /// The process asked for (an nginx master, a worker, any process).
    pub root: Process,
    /// `global_State`s already found while choosing the layout, by PID.
    found: Vec<(u32, u64)>,
}

impl Aim {
    /// `lua_only`: refuse a process without LuaJIT (the error ends with
    /// `native_hint`) instead of going on with whatever it is, with a note that
    /// ends with `no_lua_note`.
    pub fn open(pid: u32, lua_only: bool, native_hint: &str, no_lua_note: &str) -> Result<Aim> {
        let target = Target::open(pid)?;
        let lua = target.lua_processes();
        let root = target.processes[0].process.clone();
        let (processes, luajit): (Vec<Process>, Option<LuaJit>) = match lua.first() {
            Some(first) => {
                let lj = first.luajit.as_ref().context("no LuaJIT")?;
                (lua.iter().map(|p| p.process.clone()).collect(), Some(lj.clone()))
            }
            None if lua_only => bail!(
                "process {} ({}) has no LuaJIT mapped, so it has no Lua VM to look at: check the PID{native_hint}",
                root.pid,
                root.comm
            ),
            None => {
                eprintln!("ljprobe: note: process {} ({}) has no Lua VM{no_lua_note}", root.pid, root.comm);
                (target.processes.iter().map(|p| p.process.clone()).collect(), None)
            }
        };
        // An nginx master's workers are forks of one image: one layout serves them all.
        let (layout, build) = match &luajit {
            Some(lj) => (lj.layout.offsets, lj.layout.build),
            None => (known_builds::openresty_gc64().vm, known_builds::openresty_gc64()),
        };
        let found: Vec<(u32, u64)> =
            lua.iter().filter_map(|p| Some((p.process.pid, p.luajit.as_ref()?.vm_found?))).collect();
        let pids = processes.iter().map(|p| p.pid).collect();
        Ok(Aim { processes, pids, layout, build, luajit, root, found })
    }

    /// Refuses a target whose LuaJIT is not GC64 for `tool`, which reads the
    /// VM's heap, collector or trace compiler as GC64 builds lay them out
    /// (stacks, the other tools' matter, read both).
    pub fn needs_gc64(&self, tool: &str) -> Result<()> {
        match &self.luajit {
            Some(lj) if !lj.layout.gc64 => bail!(
                "process {} ({}) runs a LuaJIT built without GC64 ({}): `ljprobe {tool}` reads GC64 builds only for now; cpu, offcpu and epoll-loop work (see docs/supported-luajit.md)",
                self.root.pid,
                self.root.comm,
                lj.layout.build.describe
            ),
            _ => Ok(()),
        }
    }

    /// The LuaJIT object's path as the targets map it.
    pub fn luajit_path(&self) -> Option<&str> {
        self.luajit.as_ref().map(|lj| lj.path.as_str())
    }

    /// Process `p`'s `global_State`, found by a scan of its memory (see
    /// `vm_scan`); None without LuaJIT or when no candidate checks out.
    pub fn global_state(&self, p: &Process) -> Option<u64> {
        let luajit = self.luajit_path()?;
        if let Some(&(_, g)) = self.found.iter().find(|(pid, _)| *pid == p.pid) {
            return Some(g);
        }
        let started = std::time::Instant::now();
        let maps = p.maps().ok()?;
        let code: Vec<(u64, u64)> =
            maps.iter().filter(|m| m.executable() && m.file() == Some(luajit)).map(|m| (m.start, m.end)).collect();
        let g = super::vm_scan::find_global_state(p.pid, &maps, &self.layout, &code);
        match g {
            Some(g) => log::debug!("pid {}: global_State {g:#x} found in {:?}", p.pid, started.elapsed()),
            None => log::debug!("pid {}: no global_State found by scanning ({:?})", p.pid, started.elapsed()),
        }
        g
    }
}
