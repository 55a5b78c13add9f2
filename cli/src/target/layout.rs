//! Which struct offsets to use for a target's LuaJIT: read from its DWARF when it
//! has any, otherwise a built-in layout that the probes validate against the live
//! VM before anything trusts it (see `docs/supported-luajit.md`).

use std::path::{Path, PathBuf};

use ljprobe_common::VmLayout;
use serde::Serialize;

use super::layout_dwarf;

/// OpenResty's LuaJIT 2.1 (2.1-20230119 as Debian's `luajit2` ships it) in GC64
/// mode on x86_64. Measured from the DWARF of a `-g` build of the same source;
/// Debian's stripped build has the same layout (checked live).
pub const OPENRESTY_21_GC64_X86_64: VmLayout = VmLayout {
    g2disp: 4008,
    gg_g: 112,
    g_vmstate: 184,
    g_cur_l: 368,
    g_jit_base: 376,
    l_glref: 16,
    l_base: 32,
    l_stack: 56,
    l_maxstack: 48,
    l_cframe: 80,
    g2j: TRACE.g2j as u32,
    j_trace: TRACE.j_trace as u32,
    trace_mcode: TRACE.trace_mcode as u32,
    trace_szmcode: TRACE.trace_szmcode as u32,
    g_gc_total: GC.total as u32,
    g_gc_estimate: GC.estimate as u32,
    g_gc_currentwhite: GC.currentwhite as u32,
    _pad: 0,
};

/// The collector's fields: the same in every 2.1 GC64 build (see `lua::GcLayout`).
const GC: crate::lua::GcLayout = crate::lua::GC_21_GC64_X86_64;

/// The trace offsets the Lua resolver uses too (checked against DWARF in
/// `cli/src/lua/tests/trace.rs`); the same for the debug and the stock build.
const TRACE: crate::lua::TraceLayout = crate::lua::OPENRESTY_21_GC64.trace;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum LayoutSource {
    Dwarf { path: PathBuf },
    Builtin { name: &'static str, note: Option<String> },
}

#[derive(Debug, Clone, Serialize)]
pub struct Layout {
    pub source: LayoutSource,
    /// Known from DWARF; for a built-in layout it holds only if the live VM validates.
    pub gc64: Option<bool>,
    #[serde(serialize_with = "offsets")]
    pub offsets: VmLayout,
}

pub fn choose(dwarf: Option<&Path>) -> Layout {
    let builtin = |note: Option<String>| Layout {
        source: LayoutSource::Builtin { name: "openresty-2.1-gc64-x86_64", note },
        gc64: None,
        offsets: OPENRESTY_21_GC64_X86_64,
    };
    let Some(path) = dwarf else { return builtin(None) };
    match layout_dwarf::read_layout(path) {
        Ok(Some(l)) => Layout {
            source: LayoutSource::Dwarf { path: path.to_path_buf() },
            gc64: Some(l.gc64),
            offsets: VmLayout {
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
                g2j: TRACE.g2j as u32,
                j_trace: TRACE.j_trace as u32,
                trace_mcode: TRACE.trace_mcode as u32,
                trace_szmcode: TRACE.trace_szmcode as u32,
                ..OPENRESTY_21_GC64_X86_64
            },
        },
        Ok(None) => builtin(None),
        Err(e) => builtin(Some(format!("its DWARF was not usable: {e:#}"))),
    }
}

fn offsets<S: serde::Serializer>(l: &VmLayout, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut st = s.serialize_struct("VmLayout", 14)?;
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
    st.end()
}
