//! Which struct offsets to use for a target's LuaJIT: one of the known builds
//! (`known_builds`, the files in `cli/layouts/`), chosen by what the object
//! says about itself (fork, version banner, DWARF) and by the live VM fitting
//! it; a build with DWARF of its own gets the VM's offsets from it. See
//! `docs/supported-luajit.md`.

use std::path::{Path, PathBuf};

use ljprobe_common::VmLayout;
use serde::Serialize;

use super::{
    known_builds::{self, BuildLayout, Fork},
    layout_dwarf,
};

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum LayoutSource {
    /// The VM's offsets from the object's DWARF; the rest from the known
    /// build of the same fork and word size (`build`, when they all agree).
    Dwarf { path: PathBuf, same_as_known: bool },
    /// A known build's file, and how it was picked.
    Builtin { how: String, note: Option<String> },
}

#[derive(Debug, Clone, Serialize)]
pub struct Layout {
    /// The known build the offsets come from (all of them, or all but the VM's).
    pub name: &'static str,
    pub source: LayoutSource,
    pub gc64: bool,
    /// True when the live VM was found with these offsets while choosing.
    pub checked_live: bool,
    #[serde(serialize_with = "offsets")]
    pub offsets: VmLayout,
    #[serde(skip)]
    pub build: &'static BuildLayout,
}

/// What the object says about its build before any of its memory is read.
#[derive(Debug, Clone, Default)]
pub struct Hints {
    /// None when the object exports no Lua API to tell by.
    pub fork: Option<Fork>,
    /// `LuaJIT 2.1.0-beta3`, as found in its read-only data.
    pub banner: Option<String>,
}

/// The known builds `hints` allow, GC64 first (what 2.1 builds on x86_64 by
/// default); all of them when none does.
fn candidates(hints: &Hints) -> (Vec<&'static BuildLayout>, Option<String>) {
    let fits = |b: &BuildLayout| {
        hints.fork.is_none_or(|f| f == b.fork)
            && match (&hints.banner, &b.banner) {
                (Some(h), Some(k)) => h == k,
                _ => true,
            }
    };
    let mut c: Vec<&'static BuildLayout> = known_builds::known().iter().filter(|b| fits(b)).collect();
    let mut note = None;
    if c.is_empty() {
        note = Some(format!(
            "no known build is {}{}: every known layout was tried",
            hints.fork.map_or("of this fork", Fork::name),
            hints.banner.as_deref().map(|b| format!(" with banner {b}")).unwrap_or_default()
        ));
        c = known_builds::known().iter().collect();
    }
    c.sort_by_key(|b| !b.gc64);
    (c, note)
}

/// The layout of one LuaJIT object. `fits_live` tells whether the process's
/// VM is found with a layout's VM offsets; it is asked only when the object
/// itself leaves more than one candidate.
pub fn choose(dwarf: Option<&Path>, hints: &Hints, fits_live: impl Fn(&VmLayout) -> bool) -> Layout {
    let (cands, mut note) = candidates(hints);
    if let Some(path) = dwarf {
        match layout_dwarf::read_layout(path) {
            Ok(Some(l)) => {
                let core = VmLayout {
                    g2disp: l.gg_dispatch - l.gg_g,
                    gg_g: l.gg_g,
                    g_vmstate: l.g_vmstate,
                    g_cur_l: l.g_cur_l,
                    g_jit_base: l.g_jit_base,
                    l_glref: l.l_glref,
                    l_base: l.l_base,
                    l_stack: l.l_stack,
                    l_maxstack: l.l_maxstack,
                    l_cframe: l.l_cframe,
                    ..VmLayout::default()
                };
                let same_size: Vec<_> = cands.iter().copied().filter(|b| b.gc64 == l.gc64).collect();
                let same = same_size.iter().copied().find(|b| b.vm == b.vm_with(core));
                let build = same.or(same_size.first().copied()).unwrap_or(cands[0]);
                return Layout {
                    name: &build.name,
                    source: LayoutSource::Dwarf { path: path.to_path_buf(), same_as_known: same.is_some() },
                    gc64: l.gc64,
                    checked_live: false,
                    offsets: build.vm_with(core),
                    build,
                };
            }
            Ok(None) => {}
            Err(e) => note = Some(format!("its DWARF was not usable: {e:#}")),
        }
    }
    let told = match (hints.fork, &hints.banner) {
        (Some(f), _) => format!("{} fork (its exported API)", f.name()),
        (None, Some(b)) => format!("{b} (its banner)"),
        (None, None) => "nothing it says about itself".to_string(),
    };
    let builtin = |build: &'static BuildLayout, how: String, checked_live: bool, note: Option<String>| Layout {
        name: &build.name,
        source: LayoutSource::Builtin { how, note },
        gc64: build.gc64,
        checked_live,
        offsets: build.vm,
        build,
    };
    if cands.len() == 1 {
        return builtin(cands[0], format!("the only known build of the {told}"), false, note);
    }
    match cands.iter().find(|b| fits_live(&b.vm)) {
        Some(b) => builtin(b, format!("{told}, and its live VM found with it (GC64 tried first)"), true, note),
        None => builtin(
            cands[0],
            format!("{told}; no candidate fit the live VM (not running Lua yet?), so the first was taken"),
            false,
            note,
        ),
    }
}

fn offsets<S: serde::Serializer>(l: &VmLayout, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut st = s.serialize_struct("VmLayout", 15)?;
    st.serialize_field("g2disp", &l.g2disp)?;
    st.serialize_field("gg_g", &l.gg_g)?;
    st.serialize_field("g_vmstate", &l.g_vmstate)?;
    st.serialize_field("g_cur_l", &l.g_cur_l)?;
    st.serialize_field("g_jit_base", &l.g_jit_base)?;
    st.serialize_field("l_glref", &l.l_glref)?;
    st.serialize_field("l_base", &l.l_base)?;
    st.serialize_field("l_stack", &l.l_stack)?;
    st.serialize_field("l_maxstack", &l.l_maxstack)?;
    st.serialize_field("l_cframe", &l.l_cframe)?;
    st.serialize_field("g2j", &l.g2j)?;
    st.serialize_field("j_trace", &l.j_trace)?;
    st.serialize_field("trace_mcode", &l.trace_mcode)?;
    st.serialize_field("trace_szmcode", &l.trace_szmcode)?;
    st.serialize_field("ref_size", &l.ref_size)?;
    st.end()
}
