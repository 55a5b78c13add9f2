//! Running the kernel's per-cycle accounting (probes-ebpf/src/gc_cycles.rs)
//! in a target: from a uprobe on the atomic phase's flip of the white where
//! LuaJIT's code has it (`lua::gc_flip`), else from a hardware watchpoint on
//! `gc.currentwhite` unless the user declined debug registers.

use std::{
    collections::HashMap,
    os::fd::RawFd,
    path::{Path, PathBuf},
    sync::Mutex,
};

use anyhow::{anyhow, Result};
use serde::Serialize;

use super::perf_link::{uprobe_pmu, Link, Site};
use crate::lua::gc_flip;

/// The two ways in, loaded; `watch` None when no watchpoint may be set.
#[derive(Debug, Clone, Copy)]
pub struct CyclePrograms {
    pub flip: RawFd,
    pub watch: Option<RawFd>,
}

/// What runs the accounting in one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hook {
    /// A uprobe on the flip's store: a trap a cycle, no debug register.
    Uprobe,
    /// A hardware watchpoint on `gc.currentwhite`.
    Watchpoint,
}

pub struct Hooked {
    pub hook: Hook,
    _link: Link,
}

/// Hooks the atomic phase of the VM at `g` in process `pid`; `luajit` is the
/// file holding its code as seen from here, `currentwhite_ofs` the field's
/// offset in `global_State`. The error says why neither way could be taken.
pub fn hook(pid: u32, luajit: Option<&Path>, g: u64, currentwhite_ofs: u64, progs: CyclePrograms) -> Result<Hooked> {
    let flip = match luajit {
        Some(path) => flip_offset(path, currentwhite_ofs).and_then(|ofs| {
            let site = Site::new(pid, path, ofs).map_err(|e| format!("{e:#}"))?;
            let pmu = uprobe_pmu().map_err(|e| format!("{e:#}"))?;
            Link::uprobe(pmu, &site, progs.flip).map_err(|e| format!("{e:#}"))
        }),
        None => Err("no LuaJIT object was found to look for the flip of the white in".into()),
    };
    let why = match flip {
        Ok(link) => {
            log::info!("pid {pid}: the collector's atomic phase hooked by a uprobe in {}", luajit.unwrap_or(Path::new("?")).display());
            return Ok(Hooked { hook: Hook::Uprobe, _link: link });
        }
        Err(why) => why,
    };
    log::info!("pid {pid}: {why}");
    let Some(watch) = progs.watch else {
        return Err(anyhow!("{why}, and no watchpoint was allowed (--no-watchpoint)"));
    };
    Link::write_watch(pid, g + currentwhite_ofs, watch)
        .map(|link| Hooked { hook: Hook::Watchpoint, _link: link })
        .map_err(|e| anyhow!("{why}; {e:#}"))
}

/// What hooks the VMs of one run (`ljprobe gc --exact`): the programs and
/// the LuaJIT object all its processes map.
#[derive(Debug, Clone)]
pub struct CycleHook {
    pub progs: CyclePrograms,
    pub luajit: Option<PathBuf>,
}

impl CycleHook {
    /// `hook` for the VM at `g` in process `pid`.
    pub fn hook(&self, pid: u32, g: u64, currentwhite_ofs: u64) -> Result<Hooked> {
        hook(pid, self.luajit.as_deref(), g, currentwhite_ofs, self.progs)
    }
}

/// `gc_flip::find_in_file`, once per file and layout: every worker of a
/// gateway maps the same library.
fn flip_offset(path: &Path, currentwhite_ofs: u64) -> Result<u64, String> {
    type Found = HashMap<(PathBuf, u64), Result<u64, String>>;
    static FOUND: Mutex<Option<Found>> = Mutex::new(None);
    let key = (path.to_path_buf(), currentwhite_ofs);
    if let Some(found) = FOUND.lock().ok().and_then(|m| m.as_ref().and_then(|m| m.get(&key).cloned())) {
        return found;
    }
    let found = gc_flip::find_in_file(path, currentwhite_ofs);
    if let Ok(mut m) = FOUND.lock() {
        m.get_or_insert_with(HashMap::new).insert(key, found.clone());
    }
    found
}
