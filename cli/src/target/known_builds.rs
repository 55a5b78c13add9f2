//! The LuaJIT builds ljprobe knows without debug info: one file per build
//! family in `cli/layouts/` (written from a `-g` build's DWARF by `cargo xtask
//! layouts`), built into the binary. Which one a process runs is decided in
//! `layout::choose`, and never trusted before the live VM fits it.

use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use ljprobe_common::VmLayout;
use serde::{Deserialize, Serialize};

use crate::lua::jit_state::JitStateLayout;
use crate::lua::{GcLayout, HeapLayout, ObjLayout, TraceLayout};

mod files {
    include!(concat!(env!("OUT_DIR"), "/layouts.rs"));
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fork {
    /// OpenResty's LuaJIT 2.1 (`luajit2`): exports `lua_setexdata`.
    Openresty,
    /// Mike Pall's LuaJIT 2.1.
    Upstream,
}

impl Fork {
    /// As the layout files and the JSON spell it.
    pub fn name(self) -> &'static str {
        match self {
            Fork::Openresty => "openresty",
            Fork::Upstream => "upstream",
        }
    }
}

/// Everything ljprobe reads of one build: the kernel's part (`vm`) and user
/// space's (objects, traces, collector, heap walk, trace compiler).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildLayout {
    pub name: String,
    pub describe: String,
    /// The `-g` build the file was written from (see `layout_gen`).
    pub generated_from: String,
    pub fork: Fork,
    pub gc64: bool,
    pub arch: String,
    /// The version banner the build carries (`LuaJIT 2.1.0-beta3`).
    pub banner: Option<String>,
    /// Complete once loaded: the file gives the VM's own offsets, the rest
    /// comes from the sections below.
    pub vm: VmLayout,
    pub obj: ObjLayout,
    pub trace: TraceLayout,
    pub gc: GcLayout,
    pub heap: HeapLayout,
    pub jit: JitStateLayout,
    /// Read from the file's `[names]`; they live on in `obj.fast_functions`.
    names: Names,
}

/// The build's own names, from its `jit/vmdef.lua`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Names {
    fast_functions: Vec<String>,
}

impl BuildLayout {
    pub fn parse(text: &str) -> Result<BuildLayout> {
        let mut b: BuildLayout = toml::from_str(text)?;
        if b.arch != "x86_64" {
            bail!("layout {} is for {}; ljprobe reads x86_64 only", b.name, b.arch);
        }
        b.obj.trace = b.trace;
        // Parsed once per built-in file, for the life of the process.
        b.obj.fast_functions = Box::leak(std::mem::take(&mut b.names.fast_functions).into_boxed_slice());
        b.vm = b.vm_with(b.vm);
        Ok(b)
    }

    /// `core`'s VM offsets (from this file or from DWARF) with the trace and
    /// collector fields the kernel reads too.
    pub fn vm_with(&self, core: VmLayout) -> VmLayout {
        let u = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        VmLayout {
            g2j: u(self.trace.g2j),
            j_trace: u(self.trace.j_trace),
            trace_mcode: u(self.trace.trace_mcode),
            trace_szmcode: u(self.trace.trace_szmcode),
            g_gc_total: u(self.gc.total),
            g_gc_estimate: u(self.gc.estimate),
            g_gc_currentwhite: u(self.gc.currentwhite),
            ref_size: u(self.obj.gcref_size),
            ..core
        }
    }
}

/// Every built-in layout, in file-name order.
pub fn known() -> &'static [BuildLayout] {
    static KNOWN: OnceLock<Vec<BuildLayout>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        files::FILES
            .iter()
            .map(|(file, text)| {
                // The files are checked by the tests: a bad one is a bug in this build of ljprobe.
                BuildLayout::parse(text)
                    .with_context(|| format!("cli/layouts/{file}"))
                    .expect("a built-in layout parses")
            })
            .collect()
    })
}

pub fn named(name: &str) -> Option<&'static BuildLayout> {
    known().iter().find(|b| b.name == name)
}

/// OpenResty's LuaJIT 2.1 GC64 (Debian's `luajit2`), the build the gateway
/// runs: the layout tests and tools fall back to when nothing else is known.
pub fn openresty_gc64() -> &'static BuildLayout {
    named(OPENRESTY_GC64).expect("cli/layouts/openresty-2.1-gc64-x86_64.toml is built in")
}

pub const OPENRESTY_GC64: &str = "openresty-2.1-gc64-x86_64";

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::target::layout_gen::{self, BuildFacts};

    #[test]
    fn every_file_parses_under_its_own_name() {
        assert!(known().len() >= 2, "the built-in layouts: {:?}", files::FILES.iter().map(|f| f.0).collect::<Vec<_>>());
        for ((file, _), b) in files::FILES.iter().zip(known()) {
            assert_eq!(*file, format!("{}.toml", b.name));
            assert_eq!(b.vm.ref_size as u64, b.obj.gcref_size, "{file}");
            assert_eq!(b.gc64, b.obj.gcref_size == 8, "{file}");
        }
        assert_eq!(openresty_gc64().name, OPENRESTY_GC64);
    }

    /// Each file is what its `-g` build's DWARF says now: a file edited by
    /// hand, or a build that changed, fails here. The builds are made by
    /// `cargo xtask setup`; a missing one fails (CI has them all).
    #[test]
    fn every_file_is_its_debug_builds_dwarf() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for ((file, text), b) in files::FILES.iter().zip(known()) {
            let lib = root.join(&b.generated_from);
            assert!(lib.exists(), "{file}: its debug build {} is missing: run `cargo xtask setup`", lib.display());
            let facts = BuildFacts { name: &b.name, describe: &b.describe, generated_from: &b.generated_from, vmdef: None };
            let now = layout_gen::generate(&lib, &facts).unwrap_or_else(|e| panic!("{file}: {e:#}"));
            assert!(
                now == *text,
                "cli/layouts/{file} is not what {} says now: run `cargo xtask layouts`",
                lib.display()
            );
        }
    }
}
