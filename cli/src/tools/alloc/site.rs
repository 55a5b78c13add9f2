//! Where a target's allocator is: the function its VM calls for every byte of
//! the Lua heap (`G->allocf`), read from the live VM rather than found by
//! name, so stripped builds and foreign allocators are covered; and the code
//! of `lj_tab_resize`, when symbols name it, to tell table growth apart.

use std::{os::unix::fs::FileExt, path::PathBuf};

use anyhow::{bail, Context, Result};
use object::{Object, ObjectSymbol};

use super::sampler::Probed;
use crate::{
    bpf::{perf_link::Site, uprobe_entry},
    lua::{GcLayout, ProcMem},
    target::{known_builds, process::Process, LuaJit},
};

/// One target's allocator, as a uprobe site, and its VM for polling.
pub struct Allocator {
    pub site: Site,
    pub g: u64,
    /// Runtime address of the allocator function.
    pub addr: u64,
    /// Where on its entry the probe sits (`uprobe_entry`): how far in, and
    /// whether a hit costs one trap or two.
    pub entry: uprobe_entry::Entry,
    /// The file it lives in, as the target maps it.
    pub file: String,
    /// Where the VM's build keeps its collector's fields.
    pub gc: GcLayout,
    /// `lj_tab_resize`'s code at run time, [start, end), when named.
    pub resize: Option<(u64, u64)>,
    /// The file holding the VM's code, as seen from here.
    pub luajit: Option<PathBuf>,
}

impl Allocator {
    /// `g` is the process's `global_State` (see `Aim::global_state`).
    pub fn find(p: &Process, g: Option<u64>, luajit: Option<&LuaJit>) -> Result<Allocator> {
        let Some(g) = g else {
            bail!(
                "no Lua VM was found in process {} ({}): it may not have started Lua yet; try again once it serves Lua code",
                p.pid,
                p.comm
            )
        };
        let mem = ProcMem::open(p.pid)?;
        let gc = luajit.map_or_else(known_builds::openresty_gc64, |lj| lj.layout.build).gc;
        let addr = gc
            .allocf(&mem, g)
            .with_context(|| format!("cannot read the allocator of the Lua VM in process {}", p.pid))?;
        let maps = p.maps()?;
        let Some(m) = maps.iter().find(|m| m.executable() && addr >= m.start && addr < m.end) else {
            bail!("the Lua VM of process {} allocates through {addr:#x}, which is not code of any mapped file (an allocator made at run time cannot be probed)", p.pid)
        };
        let Some(file) = m.file() else {
            bail!("the Lua VM of process {} allocates through {addr:#x}, in {}, which is not a file a uprobe can be placed in", p.pid, m.path.as_deref().unwrap_or("an anonymous mapping"))
        };
        let file_offset = addr - m.start + m.offset;
        let host_path: PathBuf = p.host_path(file);
        // From the file, not the process: a probe already placed there (another
        // run's window) shows in the process as a breakpoint byte.
        let mut code = [0u8; 16];
        let read = std::fs::File::open(&host_path).and_then(|f| f.read_exact_at(&mut code, file_offset));
        let entry = uprobe_entry::cheap_entry(if read.is_ok() { &code } else { &[] });
        let offset = file_offset + entry.skip;
        let site = Site::new(p.pid, &host_path, offset)?;
        let resize = luajit.and_then(|lj| resize_range(p, lj, &maps));
        let luajit = luajit.map(|lj| lj.host_path.clone());
        Ok(Allocator { site, g, gc, addr, entry, file: file.to_string(), resize, luajit })
    }

    /// What the sampler probes in this process.
    pub fn probed(&self) -> Probed {
        Probed { site: self.site.clone(), luajit: self.luajit.clone(), g: self.g, gc: self.gc, emulated: self.entry.emulated }
    }
}

/// `lj_tab_resize` in LuaJIT's symbol table (or its debug file), relocated to
/// where the target mapped it.
fn resize_range(p: &Process, lj: &LuaJit, maps: &[ljprobe_host::proc::Mapping]) -> Option<(u64, u64)> {
    let sym_file = match &lj.symbols {
        crate::target::luajit::Symbols::Symtab { .. } => lj.host_path.clone(),
        crate::target::luajit::Symbols::DebugFile { path, .. } => path.clone(),
        crate::target::luajit::Symbols::Missing { .. } => return None,
    };
    let data = crate::target::elf::read_file(&sym_file).ok()?;
    let obj = object::File::parse(&*data).ok()?;
    let sym = obj.symbols().find(|s| s.name() == Ok("lj_tab_resize") && s.size() > 0)?;
    // The segment's file offset comes from the mapped file itself: a debug
    // file's segments carry no code.
    let code = crate::target::elf::read_file(&lj.host_path).ok()?;
    let code_obj = object::File::parse(&*code).ok()?;
    let file_off = crate::target::elf::file_offset(&code_obj, sym.address())?;
    let m = maps.iter().find(|m| {
        m.file() == Some(lj.path.as_str()) && m.executable() && file_off >= m.offset && file_off < m.offset + (m.end - m.start)
    })?;
    let start = m.start + (file_off - m.offset);
    log::debug!("pid {}: lj_tab_resize at {start:#x} ({} bytes)", p.pid, sym.size());
    Some((start, start + sym.size()))
}
