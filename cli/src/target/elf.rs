//! What an ELF file on disk can tell a profiler: symbols, debug info, unwind info,
//! and where its separate debug file would be.

use std::{borrow::Cow, collections::BTreeSet, fs::File, io::Read, path::Path};

use anyhow::{bail, Context, Result};
use object::{CompressionFormat, Object, ObjectSection, ObjectSegment, ObjectSymbol};

/// Largest object file read whole. nginx, LuaJIT and their debug files are a
/// few MB to a few hundred; anything bigger is not worth holding in memory.
pub const MAX_ELF_BYTES: u64 = 1 << 30;

/// Largest section decompressed: a compressed section states its own size,
/// which a hostile file sets to anything.
pub const MAX_SECTION_BYTES: u64 = 256 << 20;

/// The whole file, refused past `MAX_ELF_BYTES`. Reads through a bound rather
/// than trusting the file's size: /proc files (map_files) may report none.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut data = Vec::new();
    file.take(MAX_ELF_BYTES + 1)
        .read_to_end(&mut data)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if data.len() as u64 > MAX_ELF_BYTES {
        bail!("{} is larger than {MAX_ELF_BYTES} bytes: not read", path.display());
    }
    Ok(data)
}

/// A section's bytes, decompressed if needed, within `MAX_SECTION_BYTES`.
/// zlib output stops at the stated size, so checking it suffices; object's zstd
/// decoder reads to the end whatever the header says, so zstd is refused.
pub fn section_bytes<'d>(section: &impl ObjectSection<'d>) -> Result<Cow<'d, [u8]>> {
    let compressed = section.compressed_data()?;
    match compressed.format {
        CompressionFormat::None => {}
        CompressionFormat::Zlib if compressed.uncompressed_size <= MAX_SECTION_BYTES => {}
        CompressionFormat::Zlib => {
            bail!("compressed section of {} bytes: over the bound", compressed.uncompressed_size)
        }
        _ => bail!("section compressed with {:?}: its decompression cannot be bounded", compressed.format),
    }
    Ok(compressed.decompress()?)
}

/// Where the byte at link-time address `addr` lies in the file, if the file
/// holds it (not `.bss`).
pub fn file_offset(file: &object::File, addr: u64) -> Option<u64> {
    file.segments().find_map(|seg| {
        let (off, size) = seg.file_range();
        (addr >= seg.address() && addr - seg.address() < size).then(|| addr - seg.address() + off)
    })
}

/// Where the function `name` that the object exports (`.dynsym`) starts in
/// the file: what a uprobe on it is opened with.
pub fn exported_offset(file: &object::File, name: &str) -> Option<u64> {
    let sym = file.dynamic_symbols().find(|s| s.is_definition() && s.name() == Ok(name))?;
    file_offset(file, sym.address())
}

/// `exported_offset`, moved on to the function's cheapest probe point
/// (`bpf::uprobe_entry`); `data` is the file `file` was parsed from.
pub fn exported_probe_offset(data: &[u8], file: &object::File, name: &str) -> Option<u64> {
    let off = exported_offset(file, name)?;
    let code = data.get(off as usize..).unwrap_or(&[]);
    Some(off + crate::bpf::uprobe_entry::cheap_entry(&code[..code.len().min(16)]).skip)
}

/// How far from its link-time addresses the object at `path` is loaded in a
/// process whose mappings are `maps`: where its first loadable segment is
/// mapped, less that segment's page-aligned address (0 for a non-PIE
/// executable). A link-time address plus this is the address in the process,
/// for every segment, `.bss` included.
pub fn load_bias(file: &object::File, maps: &[ljprobe_host::proc::Mapping], path: &str) -> Option<u64> {
    let first = file.segments().next()?;
    let (offset, _) = first.file_range();
    let page = |a: u64| a & !0xfff;
    let m = maps.iter().find(|m| m.file() == Some(path) && m.offset == page(offset))?;
    m.start.checked_sub(page(first.address()))
}

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
    let data = read_file(path)?;
    summarize_bytes(&data).with_context(|| format!("{} is not an ELF file ljprobe can read", path.display()))
}

/// `summarize` of a file already read: any bytes give a summary or an error.
pub fn summarize_bytes(data: &[u8]) -> Result<ElfSummary> {
    let file = object::File::parse(data)?;
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
    fn a_probe_offset_steps_over_a_leading_test_only() {
        // The debug build `cargo xtask setup` makes: luaL_unref starts with
        // `test edx, edx; js`, lua_pushnil does not start with a flags-only one.
        let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/luajit-debug/lib/libluajit-5.1.so.2");
        let data = std::fs::read(&lib).expect("the debug LuaJIT (cargo xtask setup)");
        let file = object::File::parse(&*data).unwrap();
        let at = |f: &str| (exported_offset(&file, f).unwrap(), exported_probe_offset(&data, &file, f).unwrap());
        let (entry, probe) = at("luaL_unref");
        assert_eq!(probe, entry + 2, "test edx, edx is two bytes");
        let (entry, probe) = at("lua_pushnil");
        assert_eq!(probe, entry);
    }

    #[test]
    fn build_id_path_splits_after_two_hex_digits() {
        let s = ElfSummary { build_id: Some("0a6563c5".into()), ..Default::default() };
        let c = debug_file_candidates(Path::new("/usr/lib/libx.so"), &s);
        assert_eq!(c[0], Path::new("/usr/lib/debug/.build-id/0a/6563c5.debug"));
    }

    use proptest::{collection::vec, prelude::*, sample::Index, test_runner::TestRunner};

    fn config(cases: u32) -> ProptestConfig {
        ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
    }

    /// A small real ELF, with bytes or whole words (lengths, offsets, counts
    /// at the edges of u64) overwritten anywhere and sometimes cut short,
    /// gives a summary or an error, and never a longer banner than kept.
    #[test]
    fn mutated_elf_gives_a_summary_or_an_error() {
        let original = std::fs::read("/bin/true").expect("a small ELF");
        let want = summarize_bytes(&original).expect("unmutated");
        assert!(want.has_eh_frame && want.build_id.is_some());
        let value = prop_oneof![any::<u64>(), Just(0u64), Just(u64::MAX), (0u64..4096).prop_map(|d| u64::MAX - d)];
        // Half the writes in the first KB: the ELF, program and (for /bin/true) nearby headers.
        let write = (any::<bool>(), any::<Index>(), value, 1usize..=8);
        let mut runner = TestRunner::new(config(256));
        runner
            .run(&(vec(write, 1..16), any::<Option<Index>>()), |(writes, cut)| {
                let mut data = original.clone();
                for (head, at, value, n) in writes {
                    let i = at.index(if head { 1024 } else { data.len() });
                    let end = (i + n).min(data.len());
                    data[i..end].copy_from_slice(&value.to_le_bytes()[..end - i]);
                }
                if let Some(cut) = cut {
                    data.truncate(cut.index(data.len()));
                }
                if let Ok(s) = summarize_bytes(&data) {
                    prop_assert!(s.luajit_banner.is_none_or(|b| b.len() <= 64 * 3));
                }
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
    }

    proptest! {
        #![proptest_config(config(256))]

        #[test]
        fn banner_is_found_and_bounded_in_any_bytes(
            before in vec(any::<u8>(), 0..256),
            version in "[0-9a-z.-]{0,100}",
            after in vec(any::<u8>(), 0..256),
        ) {
            let mut rodata = before.clone();
            rodata.extend_from_slice(b"LuaJIT 2.");
            rodata.extend_from_slice(version.as_bytes());
            rodata.push(0);
            rodata.extend_from_slice(&after);
            let banner = find_banner(&rodata).expect("a banner");
            // Lossy decoding may triple a byte; at most 64 bytes are kept.
            prop_assert!(banner.len() <= 64 * 3);
            let first = before.windows(9).all(|w| w != b"LuaJIT 2.");
            if first && !version.contains(" --") && 9 + version.len() <= 64 {
                prop_assert_eq!(banner, format!("LuaJIT 2.{version}").trim().to_string());
            }
        }
    }

    #[test]
    fn summarizes_our_own_executable() {
        let me = std::env::current_exe().unwrap();
        let s = summarize(&me).unwrap();
        assert!(s.has_eh_frame);
        assert!(s.lua_api.is_empty());
    }
}
