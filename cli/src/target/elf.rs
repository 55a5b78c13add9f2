//! What an ELF file on disk can tell a profiler: symbols, debug info, unwind info,
//! and where its separate debug file would be.

use std::{collections::BTreeSet, fs, path::Path};

use anyhow::{Context, Result};
use object::{Object, ObjectSection, ObjectSymbol};

#[derive(Debug, Default, Clone)]
pub struct ElfSummary {
    pub build_id: Option<String>,
    pub debuglink: Option<String>,
    /// Defined dynamic symbols of the Lua C API (`lua_*`, `luaL_*`, `luaJIT_*`).
    pub lua_api: BTreeSet<String>,
    /// LuaJIT internals (`lj_*`) in `.symtab`: present in debug builds only.
    pub lj_symbols: usize,
    pub has_dwarf: bool,
    pub has_eh_frame: bool,
    /// The `LuaJIT x.y.z` banner compiled into the library, if any.
    pub luajit_banner: Option<String>,
}

pub fn summarize(path: &Path) -> Result<ElfSummary> {
    let data = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file = object::File::parse(&*data)
        .with_context(|| format!("{} is not an ELF file ljprobe can read", path.display()))?;
    let mut s = ElfSummary {
        build_id: file.build_id().ok().flatten().map(hex),
        debuglink: file
            .gnu_debuglink()
            .ok()
            .flatten()
            .map(|(name, _crc)| String::from_utf8_lossy(name).into_owned()),
        has_dwarf: file.section_by_name(".debug_info").is_some_and(|s| s.size() > 0),
        has_eh_frame: file.section_by_name(".eh_frame").is_some_and(|s| s.size() > 0),
        ..Default::default()
    };
    for sym in file.dynamic_symbols() {
        if let Ok(name) = sym.name() {
            if sym.is_definition() && (name.starts_with("lua_") || name.starts_with("luaL_") || name.starts_with("luaJIT_")) {
                s.lua_api.insert(name.to_string());
            }
        }
    }
    s.lj_symbols = file.symbols().filter(|sym| sym.name().is_ok_and(|n| n.starts_with("lj_"))).count();
    if let Some(rodata) = file.section_by_name(".rodata").and_then(|sec| sec.data().ok()) {
        s.luajit_banner = find_banner(rodata);
    }
    Ok(s)
}

fn find_banner(rodata: &[u8]) -> Option<String> {
    const NEEDLE: &[u8] = b"LuaJIT 2.";
    let at = rodata.windows(NEEDLE.len()).position(|w| w == NEEDLE)?;
    let tail = &rodata[at..];
    let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len()).min(64);
    let banner = String::from_utf8_lossy(&tail[..end]).into_owned();
    // Stock builds append " -- Copyright ..." to the version.
    Some(banner.split(" --").next().unwrap_or_default().trim().to_string())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where GDB and blazesym look for a separate debug file, in that order: by build
/// id, then by `.gnu_debuglink` beside the file and under /usr/lib/debug.
pub fn debug_file_candidates(file: &Path, s: &ElfSummary) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Some(id) = s.build_id.as_deref().filter(|id| id.len() > 2) {
        out.push(format!("/usr/lib/debug/.build-id/{}/{}.debug", &id[..2], &id[2..]).into());
    }
    if let (Some(link), Some(dir)) = (&s.debuglink, file.parent()) {
        out.push(dir.join(link));
        out.push(dir.join(".debug").join(link));
        let rel = dir.strip_prefix("/").unwrap_or(dir);
        out.push(Path::new("/usr/lib/debug").join(rel).join(link));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_banner_and_stops_at_nul() {
        let data = b"xx\0LuaJIT 2.1.0-beta3\0more";
        assert_eq!(find_banner(data).as_deref(), Some("LuaJIT 2.1.0-beta3"));
        let stock = b"LuaJIT 2.1.0-beta3 -- Copyright (C) 2005-2022 Mike Pall.\0";
        assert_eq!(find_banner(stock).as_deref(), Some("LuaJIT 2.1.0-beta3"));
        assert_eq!(find_banner(b"nothing here"), None);
    }

    #[test]
    fn build_id_path_splits_after_two_hex_digits() {
        let s = ElfSummary { build_id: Some("0a6563c5".into()), ..Default::default() };
        let c = debug_file_candidates(Path::new("/usr/lib/libx.so"), &s);
        assert_eq!(c[0], Path::new("/usr/lib/debug/.build-id/0a/6563c5.debug"));
    }

    #[test]
    fn summarizes_our_own_executable() {
        let me = std::env::current_exe().unwrap();
        let s = summarize(&me).unwrap();
        assert!(s.has_eh_frame);
        assert!(s.lua_api.is_empty());
    }
}
