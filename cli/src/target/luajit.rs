//! Where LuaJIT lives in a process and what we know about that build.

use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;

use super::{
    elf::{self, ElfSummary},
    known_builds::Fork,
    layout::{self, Hints, Layout},
    process::Process,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Embedding {
    SharedLibrary,
    /// Linked into the executable (or another object) statically.
    Static,
}

/// Where LuaJIT's internal (`lj_*`) symbols come from, if anywhere.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Symbols {
    Symtab { count: usize },
    DebugFile { path: PathBuf, count: usize },
    /// Stripped, and no debug file found: `debuglink` names the one that was looked for.
    Missing { debuglink: Option<String> },
}

impl Symbols {
    pub fn available(&self) -> bool {
        !matches!(self, Symbols::Missing { .. })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LuaJit {
    /// The object's path as the target maps it.
    pub path: String,
    /// The same file reached from here (through /proc/PID/root).
    pub host_path: PathBuf,
    pub embedding: Embedding,
    pub version: Option<String>,
    pub openresty_fork: bool,
    pub symbols: Symbols,
    /// CFI for unwinding native stacks without frame pointers.
    pub has_eh_frame: bool,
    pub build_id: Option<String>,
    pub layout: Layout,
    /// The `global_State` found while the live VM chose the layout (the
    /// tools' own scan is then skipped for this process).
    #[serde(skip)]
    pub vm_found: Option<u64>,
    /// API functions a uprobe can hook (defined in `.dynsym`).
    #[serde(skip)]
    pub api: Vec<String>,
}

/// A symbol every LuaJIT build exports and plain Lua 5.1 does not.
const LUAJIT_MARKER: &str = "luaJIT_setmode";

/// Is LuaJIT in this object: exported (a library, or a program linked with
/// `-E`), or linked in without exports, which leaves its version banner in
/// the object's read-only data.
fn has_luajit(s: &ElfSummary) -> bool {
    s.lua_api.contains(LUAJIT_MARKER) || s.luajit_banner.is_some()
}

impl LuaJit {
    /// Ok(None) when the process has no LuaJIT mapped.
    pub fn find(process: &Process) -> Result<Option<LuaJit>> {
        let maps = process.maps()?;
        let mut paths: Vec<&str> = Vec::new();
        for m in maps.iter().filter(|m| m.executable()) {
            if let Some(p) = m.file() {
                if !paths.contains(&p) {
                    paths.push(p);
                }
            }
        }
        // Named libraries first: cheap, and the usual case (OpenResty, Debian).
        paths.sort_by_key(|p| !file_name(p).contains("luajit"));
        for path in paths {
            let host_path = process.host_path(path);
            let Ok(summary) = elf::summarize(&host_path) else { continue };
            if has_luajit(&summary) {
                return Ok(Some(Self::from_summary(process, path, host_path, summary)));
            }
        }
        Ok(None)
    }

    fn from_summary(process: &Process, path: &str, host_path: PathBuf, s: ElfSummary) -> LuaJit {
        // A library (of any name) that exports the Lua API is LuaJIT shared;
        // inside the program itself, or a library that keeps it to itself, it
        // was linked in.
        let embedding = if path != process.exe && s.lua_api.contains(LUAJIT_MARKER) {
            Embedding::SharedLibrary
        } else {
            Embedding::Static
        };
        let debug_file = (s.lj_symbols == 0 || !s.has_dwarf)
            .then(|| {
                elf::debug_file_candidates(std::path::Path::new(path), &s)
                    .into_iter()
                    .flat_map(|c| [process.host_path(&c.to_string_lossy()), c])
                    .find(|c| c.is_file())
            })
            .flatten();
        let debug_summary = debug_file.as_ref().and_then(|f| elf::summarize(f).ok());
        let symbols = match (&debug_file, &debug_summary) {
            _ if s.lj_symbols > 0 => Symbols::Symtab { count: s.lj_symbols },
            (Some(f), Some(d)) if d.lj_symbols > 0 => Symbols::DebugFile { path: f.clone(), count: d.lj_symbols },
            _ => Symbols::Missing { debuglink: s.debuglink.clone() },
        };
        let dwarf_source = if s.has_dwarf {
            Some(host_path.clone())
        } else {
            debug_file.filter(|_| debug_summary.as_ref().is_some_and(|d| d.has_dwarf))
        };
        let hints = Hints {
            fork: match (s.lua_api.contains(LUAJIT_MARKER), s.lua_api.contains("lua_setexdata")) {
                (false, _) => None,
                (true, true) => Some(Fork::Openresty),
                (true, false) => Some(Fork::Upstream),
            },
            banner: s.luajit_banner.clone(),
        };
        let found = std::cell::Cell::new(None);
        let fits_live = |l: &ljprobe_common::VmLayout| {
            let g = live_vm(process, path, l);
            found.set(g);
            g.is_some()
        };
        let layout = layout::choose(dwarf_source.as_deref(), &hints, fits_live);
        LuaJit {
            vm_found: if layout.checked_live { found.get() } else { None },
            path: path.to_string(),
            embedding,
            version: s.luajit_banner.as_deref().map(|b| b.trim_start_matches("LuaJIT ").to_string()),
            // OpenResty's fork adds per-thread "exdata" to the C API.
            openresty_fork: s.lua_api.contains("lua_setexdata"),
            symbols,
            has_eh_frame: s.has_eh_frame,
            build_id: s.build_id.clone(),
            layout,
            api: s.lua_api.into_iter().collect(),
            host_path,
        }
    }
}

/// The process's `global_State` as `layout` finds it, in the code of the object at `path`.
fn live_vm(process: &Process, path: &str, layout: &ljprobe_common::VmLayout) -> Option<u64> {
    let maps = process.maps().ok()?;
    let code: Vec<(u64, u64)> =
        maps.iter().filter(|m| m.executable() && m.file() == Some(path)).map(|m| (m.start, m.end)).collect();
    super::vm_scan::find_global_state(process.pid, &maps, layout, &code)
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}
