//! LuaJIT struct offsets read from DWARF debug info (a `-g` build of the library or
//! its separate debug file), so ljprobe need not guess the layout of a build it has
//! never seen.

use std::borrow::Cow;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use gimli::{AttributeValue, EndianSlice, RunTimeEndian, UnitOffset, UnitSectionOffset};
use object::{Object, ObjectSection};

/// Offsets of the LuaJIT internals ljprobe reads, all in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LuaJitLayout {
    pub gc64: bool,          // GCRef has member `gcptr64` (GC64) rather than `gcptr32`
    pub gg_g: u32,           // offsetof(GG_State, g)
    pub gg_dispatch: u32,    // offsetof(GG_State, dispatch)
    pub g_vmstate: u32,      // offsetof(global_State, vmstate)
    pub g_cur_l: u32,        // offsetof(global_State, cur_L)
    pub g_jit_base: u32,     // offsetof(global_State, jit_base)
    pub l_glref: u32,        // offsetof(lua_State, glref)
    pub l_base: u32,         // offsetof(lua_State, base)
    pub l_stack: u32,        // offsetof(lua_State, stack)
    pub l_maxstack: u32,     // offsetof(lua_State, maxstack)
    pub l_cframe: u32,       // offsetof(lua_State, cframe)
    pub lua_state_size: u32, // sizeof(lua_State)
}

type Reader<'a> = EndianSlice<'a, RunTimeEndian>;
type Unit<'a> = gimli::Unit<Reader<'a>>;

const STRUCTS: [&str; 4] = ["GG_State", "global_State", "lua_State", "GCRef"];

/// Typedefs followed to a struct: covers `typedef T1 T2;` chains, and a
/// typedef cycle in bad DWARF ends here instead of looping.
const MAX_TYPEDEF_HOPS: usize = 8;

/// A complete struct definition: its size and its direct members' byte offsets.
struct Struct {
    name: &'static str,
    size: u64,
    members: Vec<(String, u64)>,
}

impl Struct {
    fn member(&self, name: &str) -> Option<u64> {
        self.members.iter().find(|(n, _)| n == name).map(|&(_, off)| off)
    }
}

/// `Ok(None)` when `path` has no DWARF (a stripped file); an error when it has DWARF
/// that lacks one of the structs or members ljprobe needs.
pub fn read_layout(path: &Path) -> Result<Option<LuaJitLayout>> {
    let data = super::elf::read_file(path)?;
    layout_from_bytes(&data, path)
}

/// `read_layout` of a file already read (`path` only names it in errors): any
/// bytes give a layout, None or an error.
pub fn layout_from_bytes(data: &[u8], path: &Path) -> Result<Option<LuaJitLayout>> {
    let file = object::File::parse(data)
        .with_context(|| format!("{} is not an object file ljprobe can parse", path.display()))?;
    // `data()` is the raw (possibly compressed) bytes: enough to tell "present" from
    // "absent or NOBITS" without decompressing anything.
    let has_info = file.section_by_name(".debug_info").is_some_and(|s| s.data().is_ok_and(|d| !d.is_empty()));
    if !has_info {
        return Ok(None);
    }
    let sections = gimli::DwarfSections::load(|id| -> Result<Cow<[u8]>> {
        match file.section_by_name(id.name()) {
            Some(section) => super::elf::section_bytes(&section)
                .with_context(|| format!("cannot decompress {} in {}", id.name(), path.display())),
            None => Ok(Cow::Borrowed(&[])),
        }
    })?;
    let endian = if file.is_little_endian() { RunTimeEndian::Little } else { RunTimeEndian::Big };
    let dwarf = sections.borrow(|s| EndianSlice::new(s, endian));

    let found = find_structs(&dwarf).with_context(|| format!("malformed DWARF in {}", path.display()))?;
    let [gg, g, l, gcref] = found;
    let need = |s: Option<Struct>, i: usize| {
        s.ok_or_else(|| {
            anyhow!("{} has DWARF but no complete definition of struct {}", path.display(), STRUCTS[i])
        })
    };
    let (gg, g, l, gcref) = (need(gg, 0)?, need(g, 1)?, need(l, 2)?, need(gcref, 3)?);
    let gc64 = match (gcref.member("gcptr64"), gcref.member("gcptr32")) {
        (Some(_), _) => true,
        (None, Some(_)) => false,
        _ => bail!("struct GCRef in the DWARF of {} has neither `gcptr64` nor `gcptr32`", path.display()),
    };
    let offset = |s: &Struct, member: &str| {
        let off = s.member(member).ok_or_else(|| {
            anyhow!("struct {} in the DWARF of {} has no member `{member}`", s.name, path.display())
        })?;
        u32::try_from(off).map_err(|_| {
            anyhow!("offsetof({}, {member}) = {off} in {} is implausible", s.name, path.display())
        })
    };
    Ok(Some(LuaJitLayout {
        gc64,
        gg_g: offset(&gg, "g")?,
        gg_dispatch: offset(&gg, "dispatch")?,
        g_vmstate: offset(&g, "vmstate")?,
        g_cur_l: offset(&g, "cur_L")?,
        g_jit_base: offset(&g, "jit_base")?,
        l_glref: offset(&l, "glref")?,
        l_base: offset(&l, "base")?,
        l_stack: offset(&l, "stack")?,
        l_maxstack: offset(&l, "maxstack")?,
        l_cframe: offset(&l, "cframe")?,
        lua_state_size: u32::try_from(l.size)
            .map_err(|_| anyhow!("sizeof(lua_State) = {} in {} is implausible", l.size, path.display()))?,
    }))
}

/// Scans the top level of every unit (C types live there) and stops as soon as all
/// of `STRUCTS` have a complete definition: nearly every LuaJIT unit includes
/// lj_obj.h, so this usually ends in the first few units. Every unit and entry
/// consumes bytes of .debug_info, so its size bounds the walk.
fn find_structs(dwarf: &gimli::Dwarf<Reader>) -> Result<[Option<Struct>; 4]> {
    let mut found: [Option<Struct>; 4] = Default::default();
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        let unit = dwarf.unit(header)?;
        let mut tree = unit.entries_tree(None)?;
        let mut children = tree.root()?.children();
        while let Some(child) = children.next()? {
            let entry = child.entry();
            if !matches!(entry.tag(), gimli::DW_TAG_structure_type | gimli::DW_TAG_typedef) {
                continue;
            }
            let Some(name) = entry.attr_value(gimli::DW_AT_name)? else { continue };
            let name = dwarf.attr_string(&unit, name)?;
            let Some(i) = STRUCTS.iter().position(|s| s.as_bytes() == name.slice()) else { continue };
            if found[i].is_some() {
                continue;
            }
            found[i] = read_struct(dwarf, &unit, entry.offset(), STRUCTS[i])?;
            if found.iter().all(Option::is_some) {
                return Ok(found);
            }
        }
    }
    Ok(found)
}

/// Follows typedefs to a struct; `None` unless it ends at a complete definition
/// (a unit that only saw `typedef struct lua_State lua_State;` has a declaration).
fn read_struct(
    dwarf: &gimli::Dwarf<Reader>,
    unit: &Unit,
    mut offset: UnitOffset,
    name: &'static str,
) -> Result<Option<Struct>> {
    for _ in 0..MAX_TYPEDEF_HOPS {
        let entry = unit.entry(offset)?;
        match entry.tag() {
            gimli::DW_TAG_typedef => {
                offset = match entry.attr_value(gimli::DW_AT_type)? {
                    Some(AttributeValue::UnitRef(o)) => o,
                    Some(AttributeValue::DebugInfoRef(o)) => {
                        match UnitSectionOffset::from(o).to_unit_offset(unit) {
                            Some(o) => o,
                            None => return Ok(None),
                        }
                    }
                    _ => return Ok(None),
                };
            }
            gimli::DW_TAG_structure_type => {
                if entry.attr(gimli::DW_AT_declaration)?.is_some() {
                    return Ok(None);
                }
                let Some(size) = entry.attr_value(gimli::DW_AT_byte_size)?.and_then(|v| v.udata_value())
                else {
                    return Ok(None);
                };
                return Ok(Some(Struct { name, size, members: read_members(dwarf, unit, offset)? }));
            }
            _ => return Ok(None),
        }
    }
    Ok(None)
}

fn read_members(dwarf: &gimli::Dwarf<Reader>, unit: &Unit, offset: UnitOffset) -> Result<Vec<(String, u64)>> {
    let mut members = Vec::new();
    let mut tree = unit.entries_tree(Some(offset))?;
    let mut children = tree.root()?.children();
    while let Some(child) = children.next()? {
        let entry = child.entry();
        if entry.tag() != gimli::DW_TAG_member {
            continue;
        }
        let Some(name) = entry.attr_value(gimli::DW_AT_name)? else { continue };
        let name = dwarf.attr_string(unit, name)?.to_string_lossy().into_owned();
        // DWARF allows leaving the location out for a member at offset 0.
        let offset = match entry.attr_value(gimli::DW_AT_data_member_location)? {
            Some(loc) => member_offset(loc, unit.encoding())
                .with_context(|| format!("unsupported location for member `{name}`"))?,
            None => 0,
        };
        members.push((name, offset));
    }
    Ok(members)
}

/// A constant (DWARF 4/5, what GCC and Clang emit) or a lone `DW_OP_plus_uconst`
/// (older producers).
fn member_offset(loc: AttributeValue<Reader>, encoding: gimli::Encoding) -> Result<u64> {
    if let Some(n) = loc.udata_value() {
        return Ok(n);
    }
    if let AttributeValue::Exprloc(expr) = loc {
        let mut ops = expr.operations(encoding);
        if let (Some(gimli::Operation::PlusConstant { value }), None) = (ops.next()?, ops.next()?) {
            return Ok(value);
        }
    }
    bail!("data member location is neither a constant nor DW_OP_plus_uconst")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A `-g` LuaJIT: `$LJPROBE_LUAJIT_DEBUG_LIB`, else the one `cargo xtask setup` builds.
    fn debug_lib() -> PathBuf {
        if let Some(p) = std::env::var_os("LJPROBE_LUAJIT_DEBUG_LIB") {
            let p = PathBuf::from(p);
            assert!(p.exists(), "LJPROBE_LUAJIT_DEBUG_LIB={} does not exist", p.display());
            return p;
        }
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/luajit-debug/lib/libluajit-5.1.so.2");
        assert!(
            p.exists(),
            "no debug LuaJIT at {}: run `cargo xtask setup` or set LJPROBE_LUAJIT_DEBUG_LIB",
            p.display()
        );
        p
    }

    /// OpenResty's LuaJIT 2.1-20230119 (Debian's `luajit2`), GC64, x86_64; the
    /// numbers agree with gdb's `ptype/o` on the same build.
    #[test]
    fn reads_openresty_gc64_layout() {
        let lib = debug_lib();
        let l = read_layout(&lib).expect("read DWARF").expect("debug build has DWARF");
        assert_eq!(
            l,
            LuaJitLayout {
                gc64: true,
                gg_g: 112,
                gg_dispatch: 4120,
                g_vmstate: 184,
                g_cur_l: 368,
                g_jit_base: 376,
                l_glref: 16,
                l_base: 32,
                l_stack: 56,
                l_maxstack: 48,
                l_cframe: 80,
                lua_state_size: 112,
            }
        );
        // GG_State.g sits right after the embedded lua_State, and lj_dispatch.h's
        // GG_G2DISP is what the probes use.
        assert_eq!(l.gg_g, l.lua_state_size);
        assert_eq!(l.gg_dispatch - l.gg_g, 4008);
    }

    #[test]
    fn member_offset_constant_or_plus_uconst() {
        let enc = gimli::Encoding { format: gimli::Format::Dwarf32, version: 4, address_size: 8 };
        let expr = |bytes| {
            AttributeValue::Exprloc(gimli::Expression(EndianSlice::new(bytes, RunTimeEndian::Little)))
        };
        assert_eq!(member_offset(AttributeValue::Udata(24), enc).unwrap(), 24);
        assert_eq!(member_offset(AttributeValue::Data1(16), enc).unwrap(), 16);
        assert_eq!(member_offset(expr(&[0x23, 0x90, 0x01]), enc).unwrap(), 144); // DW_OP_plus_uconst 144
        assert!(member_offset(expr(&[0x23, 0x10, 0x06]), enc).is_err()); // ... DW_OP_deref
        assert!(member_offset(expr(&[0x23]), enc).is_err()); // truncated
    }

    use proptest::{collection::vec, prelude::*, sample::Index, test_runner::TestRunner};

    fn config(cases: u32) -> ProptestConfig {
        ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
    }

    /// Where in the debug build's file a section lies, and how much of it
    /// the struct search reads before it has found everything.
    fn file_range(data: &[u8], name: &str, head: usize) -> (usize, usize) {
        let file = object::File::parse(data).expect("debug build parses");
        let (off, size) = file.section_by_name(name).and_then(|s| s.file_range()).expect(name);
        (off as usize, (size as usize).min(head))
    }

    /// Corrupted DWARF gives a layout, None or an error: never a panic or a
    /// hang. Writes go to the start of .debug_info (the units read before all
    /// structs are found), .debug_abbrev and .debug_str; some are whole words
    /// at the edges of u64 (lengths, offsets, sizes).
    #[test]
    fn mutated_dwarf_gives_a_layout_or_an_error() {
        let original = std::fs::read(debug_lib()).expect("debug build");
        let sections = [
            file_range(&original, ".debug_info", 64 << 10),
            file_range(&original, ".debug_abbrev", 8 << 10),
            file_range(&original, ".debug_str", 64 << 10),
        ];
        let value = prop_oneof![any::<u64>(), Just(0u64), Just(u64::MAX), Just(u64::from(u32::MAX))];
        let write = (0..sections.len(), any::<Index>(), value, 1usize..=8);
        let mut runner = TestRunner::new(config(128));
        runner
            .run(&(vec(write, 1..8), any::<Option<Index>>()), |(writes, cut)| {
                let mut data = original.clone();
                for (s, at, value, n) in writes {
                    let (off, len) = sections[s];
                    let i = off + at.index(len);
                    data[i..i + n].copy_from_slice(&value.to_le_bytes()[..n]);
                }
                if let Some(cut) = cut {
                    data.truncate(cut.index(data.len()));
                }
                let _ = layout_from_bytes(&data, Path::new("mutated"));
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
        // Unmutated, the same bytes give the debug build's layout.
        assert!(matches!(layout_from_bytes(&original, Path::new("original")), Ok(Some(_))));
    }

    proptest! {
        #![proptest_config(config(256))]

        #[test]
        fn any_bytes_give_a_layout_or_an_error(data in vec(any::<u8>(), 0..4096)) {
            let _ = layout_from_bytes(&data, Path::new("random"));
        }
    }

    #[test]
    fn stripped_file_has_no_layout() {
        let candidates = ["/usr/lib/x86_64-linux-gnu/libluajit-5.1.so.2", "/bin/true"];
        let present: Vec<_> = candidates.iter().map(Path::new).filter(|p| p.exists()).collect();
        assert!(!present.is_empty(), "none of {candidates:?} exists");
        for p in present {
            assert_eq!(read_layout(p).expect("stripped file reads"), None, "{}", p.display());
        }
    }
}
