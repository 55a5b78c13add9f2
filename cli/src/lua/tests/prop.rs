//! Property tests of the Lua VM reader: whatever the target's memory holds
//! (random bytes, pointers to themselves, cycles, huge counts), every decoder
//! returns within its bounds and never panics; objects built as LuaJIT builds
//! them decode to what was built.

use proptest::{collection::vec, prelude::*, sample::Index};

use super::{
    image::{FakeMem, Image, ProtoSpec, VarSpec, L},
    trace::{two_frames, G, MCODE, SNAP1_AT},
};
use crate::lua::{
    funcname::{call_name, slotname},
    gcstr::{chunk_label, read_str, MAX_STR},
    proto::{ProtoDebug, ProtoHeader, MAX_KGC, MAX_SIZEBC, MAX_VARS},
    trace::inlined_frames,
    LuaFrame, RawFrame, Resolver, MAX_INLINED,
};

/// Bounded so the whole file runs in a few seconds of a debug build; no
/// regression files are written into the source tree.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

const ADDR: u64 = 0x7f20_0000_1000;

fn put(buf: &mut [u8], off: u64, bytes: &[u8]) {
    let off = off as usize;
    buf[off..off + bytes.len()].copy_from_slice(bytes);
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// An absolute address: random, or an offset into the object at `ADDR`.
fn addr_in(len: u64) -> impl Strategy<Value = u64> {
    prop_oneof![any::<u64>(), (0..len).prop_map(|o| ADDR + o)]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn strings_are_read_whole_up_to_max_str_and_never_beyond(
        data in vec(any::<u8>(), 0..(MAX_STR as usize + 64)),
        claimed in prop_oneof![Just(None), any::<u32>().prop_map(Some), (MAX_STR - 2..MAX_STR + 3).prop_map(Some)],
        is_str in prop::bool::weighted(0.9),
        at_path in any::<bool>(),
        firstline in any::<i32>(),
    ) {
        let mut data = data;
        if at_path {
            data.insert(0, b'@');
        }
        let len = claimed.unwrap_or(data.len() as u32);
        let mut obj = vec![0u8; L.str_data as usize];
        put(&mut obj, L.gct, &[if is_str { L.gct_str } else { L.gct_str.wrapping_add(1) }]);
        put(&mut obj, L.str_len, &len.to_ne_bytes());
        obj.extend_from_slice(&data);
        let mut mem = FakeMem::default();
        mem.put(ADDR, obj);

        let s = read_str(&mem, &L, ADDR);
        if let Some(s) = &s {
            prop_assert!(is_str && len <= MAX_STR && s.chars().count() <= MAX_STR as usize);
        }
        let label = chunk_label(&mem, &L, ADDR, firstline);
        if let Some(label) = &label {
            prop_assert!(is_str && label.chars().count() <= MAX_STR as usize, "{} chars", label.chars().count());
        }
        // Well-formed: the string itself, and a path chunkname without its '@'.
        if is_str && claimed.is_none() && len <= MAX_STR {
            prop_assert_eq!(s, Some(lossy(&data)));
        }
        if is_str && claimed.is_none() && data.first() == Some(&b'@') && len - 1 <= MAX_STR {
            prop_assert_eq!(label, Some(lossy(&data[1..])));
        }
    }

    #[test]
    fn proto_decoding_is_bounded_on_any_bytes(
        body in vec(any::<u8>(), 0..1024),
        sizebc in prop_oneof![any::<u32>(), 0u32..300],
        sizept in prop_oneof![any::<u32>(), 0u32..1200],
        sizekgc in prop_oneof![any::<u32>(), 0u32..64, Just(MAX_KGC + 1)],
        sizeuv in any::<u8>(),
        k in addr_in(1200),
        uvinfo in addr_in(1200),
        varinfo in addr_in(1200),
        chunkname in addr_in(1200),
        firstline in any::<i32>(),
        lookups in vec((any::<u32>(), any::<u32>()), 0..8),
    ) {
        let mut obj = vec![0u8; L.proto_size as usize];
        obj.extend_from_slice(&body);
        put(&mut obj, L.gct, &[L.gct_proto]);
        put(&mut obj, L.proto_sizebc, &sizebc.to_ne_bytes());
        put(&mut obj, L.proto_sizept, &sizept.to_ne_bytes());
        put(&mut obj, L.proto_k, &k.to_ne_bytes());
        put(&mut obj, L.proto_sizekgc, &sizekgc.to_ne_bytes());
        put(&mut obj, L.proto_sizeuv, &[sizeuv]);
        put(&mut obj, L.proto_uvinfo, &uvinfo.to_ne_bytes());
        put(&mut obj, L.proto_varinfo, &varinfo.to_ne_bytes());
        put(&mut obj, L.proto_chunkname, &chunkname.to_ne_bytes());
        put(&mut obj, L.proto_firstline, &firstline.to_ne_bytes());
        let mut img = Image::default();
        img.mem.put(ADDR, obj);
        let func = img.lua_func(ADDR);
        let mem = img.mem;

        if let Some(h) = ProtoHeader::read(&mem, &L, ADDR) {
            prop_assert!(h.sizebc > 0 && h.sizebc <= MAX_SIZEBC);
            if let Some(d) = ProtoDebug::read(&mem, &L, &h) {
                prop_assert_eq!(d.bc.len(), h.sizebc as usize);
                prop_assert!(d.vars().len() <= MAX_VARS);
                prop_assert!(d.kgc(MAX_KGC).is_none());
                for &(pos, slot) in &lookups {
                    let pos = pos % (h.sizebc + 1);
                    let _ = call_name(&mem, &L, &d, pos);
                    let _ = slotname(&mem, &L, &d, pos, slot);
                }
            }
        }
        // The same object through the resolver, called from itself at each position.
        let mut r = Resolver::with_layout(mem, *L);
        let frames: Vec<RawFrame> = lookups
            .iter()
            .map(|&(pos, _)| RawFrame { func, link: ADDR + L.proto_size + u64::from(pos % 64) * L.bcins_size })
            .collect();
        prop_assert!(r.resolve(&frames).len() <= frames.len());
    }

    #[test]
    fn protos_built_like_luajit_round_trip(
        kstr in vec("[a-z_][a-z0-9_]{0,12}", 0..8),
        uvnames in vec("[a-z_][a-z0-9_]{0,12}", 0..8),
        vars in vec(("[a-z_][a-z0-9_]{2,12}", 0u32..50, 0u32..50), 0..12),
        bc in vec(any::<u32>(), 0..32),
        firstline in 0i32..100_000,
        path in "/[a-z/]{1,40}\\.lua",
    ) {
        let mut vars = vars;
        vars.sort_by_key(|v| v.1);
        let chunkname = format!("@{path}");
        let spec = ProtoSpec {
            chunkname: &chunkname,
            firstline,
            bc: bc.clone(),
            kstr: kstr.iter().map(String::as_str).collect(),
            uvnames: uvnames.iter().map(String::as_str).collect(),
            vars: vars.iter().map(|(name, start, len)| VarSpec { name, start: *start, end: start + len }).collect(),
        };
        let mut img = Image::default();
        let proto = img.proto(&spec);
        let func = img.lua_func(proto);
        let mem = img.mem;

        let h = ProtoHeader::read(&mem, &L, proto).expect("header");
        let d = ProtoDebug::read(&mem, &L, &h).expect("debug info");
        prop_assert_eq!(&d.bc[1..], &bc[..]);
        let got: Vec<(String, u32, u32)> = d.vars().iter().map(|v| (v.name.clone(), v.start, v.end)).collect();
        let want: Vec<(String, u32, u32)> = vars.iter().map(|(n, s, l)| (n.clone(), *s, s + l)).collect();
        prop_assert_eq!(got, want);
        for (i, name) in uvnames.iter().enumerate() {
            prop_assert_eq!(d.uvname(i as u32), Some(name.as_str()));
        }
        for (i, s) in kstr.iter().enumerate() {
            let k = d.kgc(i as u32).expect("constant");
            prop_assert_eq!(read_str(&mem, &L, k), Some(s.clone()));
        }
        let mut r = Resolver::with_layout(mem, *L);
        let got = r.resolve(&[RawFrame { func, link: 0 }]);
        prop_assert_eq!(got, vec![LuaFrame::Lua { name: None, file: path, line: firstline as u32, at: None }]);
    }
}

const BASE: u64 = 0x7f30_0000_0000;
/// Objects are `WORDS` words, `STRIDE` apart: a read past one's end fails.
const WORDS: usize = 24;
const STRIDE: u64 = 0x100;
const OBJECTS: usize = 8;

/// A word of a hostile object: anything, or a pointer into any object,
/// itself included (cycles, self-references): mostly to its start or to where
/// a GCfunc's `pc` points (just past a proto header), else anywhere in it.
fn hostile_word() -> impl Strategy<Value = u64> {
    let off = prop_oneof![Just(0u64), Just(L.proto_size), 0..WORDS as u64 * 8 + 8];
    prop_oneof![
        any::<u64>(),
        Just(0u64),
        Just(u64::MAX),
        (0..OBJECTS as u64, off.clone()).prop_map(|(j, off)| BASE + j * STRIDE + off),
        (0..OBJECTS as u64, off).prop_map(|(j, off)| BASE + j * STRIDE + off),
    ]
}

fn object_start() -> impl Strategy<Value = u64> {
    (0..OBJECTS as u64).prop_map(|j| BASE + j * STRIDE)
}

/// Mostly the function objects, else any object or any word.
fn frame_func() -> impl Strategy<Value = u64> {
    prop_oneof![2 => (0..2u64).prop_map(|j| BASE + j * STRIDE), 1 => object_start(), 1 => hostile_word()]
}

/// Mostly a return address into a proto object's bytecode (a Lua caller
/// whose call instruction names the frame), else any word.
fn frame_link() -> impl Strategy<Value = u64> {
    let ret = (2..4u64, 1..24u64).prop_map(|(j, pos)| BASE + j * STRIDE + L.proto_size + pos * L.bcins_size);
    prop_oneof![ret, hostile_word()]
}

/// Objects 0-1 are functions, 2-3 protos, 4-5 strings, 6-7 of any type.
fn role(j: u64) -> u8 {
    [3, 3, 2, 2, 1, 1, 0, 0][j as usize]
}

/// Objects typed as strings, protos or functions (or not at all), with every
/// other word hostile: a frame's function may be its own proto, a proto its
/// own chunkname, a chunkname a function, and so on around. Most are "sane"
/// enough to be followed: a function's `pc` just past a proto header, a
/// proto's chunkname at a string, small counts; the rest are left hostile.
fn hostile_image() -> impl Strategy<Value = FakeMem> {
    let sane = prop::bool::weighted(0.75);
    let object = (0u8..4, any::<u8>(), 0u32..20, sane, any::<bool>(), vec(hostile_word(), WORDS));
    vec(object, OBJECTS).prop_map(|objs| {
        let mut mem = FakeMem::default();
        for (j, (any_kind, ffid, small, sane, pick, words)) in objs.into_iter().enumerate() {
            let j = j as u64;
            let mut buf: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
            let kind = if role(j) == 0 { any_kind } else { role(j) };
            match kind {
                1 => {
                    put(&mut buf, L.gct, &[L.gct_str]);
                    if sane {
                        put(&mut buf, L.str_len, &(small * 8).to_ne_bytes());
                    }
                }
                2 => {
                    put(&mut buf, L.gct, &[L.gct_proto]);
                    put(&mut buf, L.proto_sizebc, &(small + 1).to_ne_bytes());
                    if sane {
                        let chunkname = BASE + (4 + u64::from(pick)) * STRIDE;
                        put(&mut buf, L.proto_sizept, &(WORDS as u32 * 8).to_ne_bytes());
                        put(&mut buf, L.proto_chunkname, &chunkname.to_ne_bytes());
                    }
                }
                3 => {
                    put(&mut buf, L.gct, &[L.gct_func]);
                    put(&mut buf, L.func_ffid, &[ffid % 3]);
                    if sane {
                        let proto = BASE + (2 + u64::from(pick)) * STRIDE;
                        put(&mut buf, L.func_pc, &(proto + L.proto_size).to_ne_bytes());
                    }
                }
                _ => {}
            }
            mem.put(BASE + j * STRIDE, buf);
        }
        mem
    })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn resolver_is_bounded_on_cyclic_and_self_pointing_images(
        mem in hostile_image(),
        frames in vec((frame_func(), frame_link()), 0..24),
        traceno in prop_oneof![any::<u32>(), 0u32..8],
        addrs in vec(hostile_word(), 0..4),
    ) {
        let frames: Vec<RawFrame> = frames.into_iter().map(|(func, link)| RawFrame { func, link }).collect();
        let mut r = Resolver::with_layout(mem, *L);
        let got = r.resolve(&frames);
        prop_assert!(got.len() <= frames.len());
        for f in &got {
            if let LuaFrame::Lua { file, .. } = f {
                prop_assert!(file.chars().count() <= MAX_STR as usize);
            }
        }
        for j in 0..OBJECTS as u64 {
            let obj = BASE + j * STRIDE;
            let _ = r.bytecode(obj);
            let _ = r.call_name(obj, traceno);
            let _ = r.slotname(obj, traceno, traceno >> 8);
            prop_assert!(r.inlined_frames(obj, traceno, &addrs).len() <= MAX_INLINED);
        }
    }

    #[test]
    fn mutated_traces_give_at_most_max_inlined_frames(
        writes in vec((any::<Index>(), any::<Index>(), any::<u64>(), 1usize..9), 1..8),
        traceno in prop_oneof![Just(None), any::<u32>().prop_map(Some)],
        addrs in vec(prop_oneof![MCODE..MCODE + 0x300, any::<u64>()], 1..4),
    ) {
        let b = two_frames();
        // Unmutated, the snapshot after SNAP1_AT holds the two inlined frames.
        let inside = MCODE + u64::from(SNAP1_AT) + 1;
        let clean = inlined_frames(&b.img.mem, &L, G, b.traceno, &[inside]).map(|i| i.frames.len());
        prop_assert_eq!(clean, Some(2));

        let mut mem = b.img.mem.clone();
        let regions = mem.addrs();
        for (region, off, word, n) in writes {
            let bytes = mem.region_mut(*region.get(&regions)).expect("region");
            let off = off.index(bytes.len());
            let end = (off + n).min(bytes.len());
            bytes[off..end].copy_from_slice(&word.to_ne_bytes()[..end - off]);
        }
        let got = inlined_frames(&mem, &L, G, traceno.unwrap_or(b.traceno), &addrs);
        if let Some(i) = got {
            prop_assert!(i.frames.len() <= MAX_INLINED);
            prop_assert!(addrs.contains(&i.addr));
        }
    }
}
