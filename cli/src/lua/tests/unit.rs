//! The resolver over synthetic objects: labels, LuaJIT's naming rules, and
//! behaviour on garbage.

use super::image::{ins_abc, ins_ad, ret_link, FakeMem, Image, ProtoSpec, VarSpec, L};
use crate::lua::{
    bc::Op,
    gcstr::{chunk_label, shorten},
    LuaFrame, RawFrame, Resolver, SlotKind, SlotName,
};

/// Link words of frames not called from Lua: delta<<3 | frame type.
const C_LINK: u64 = (2 << 3) | 1;
const VARG_LINK: u64 = (3 << 3) | 3;

fn lua(name: Option<&str>, file: &str, line: u32) -> LuaFrame {
    LuaFrame::Lua { name: name.map(str::to_string), file: file.to_string(), line, at: None }
}

fn slot(kind: SlotKind, name: &str) -> Option<SlotName> {
    Some(SlotName { kind, name: name.to_string() })
}

fn spec<'a>(bc: Vec<u32>) -> ProtoSpec<'a> {
    ProtoSpec { chunkname: "@/t.lua", firstline: 1, bc, ..Default::default() }
}

/// Name of the call at the last instruction of `spec`, through the resolver.
fn name_of_last_call(spec: ProtoSpec) -> Option<SlotName> {
    let mut img = Image::default();
    let pos = spec.bc.len() as u32;
    let proto = img.proto(&spec);
    Resolver::with_layout(img.mem, *L).call_name(proto, pos)
}

#[test]
fn labels_file_and_line() {
    let mut img = Image::default();
    let p = img.proto(&ProtoSpec { chunkname: "@/srv/app/handler.lua", firstline: 12, ..spec(vec![]) });
    let f = img.lua_func(p);
    let mut r = Resolver::with_layout(img.mem, *L);
    assert_eq!(r.resolve(&[RawFrame { func: f, link: 0 }]), vec![lua(None, "/srv/app/handler.lua", 12)]);
}

#[test]
fn labels_other_chunknames_like_lj_debug_shortname() {
    let short = |s: &str, line| shorten(s.as_bytes(), s.len(), line);
    assert_eq!(short("=stdin", 0), "stdin");
    assert_eq!(short(&format!("={}", "x".repeat(100)), 0), "x".repeat(59));
    assert_eq!(short("=a\nb", 0), "ab");
    assert_eq!(short("return 1", 0), "[string \"return 1\"]");
    assert_eq!(short("local x = 1\nreturn x", 0), "[string \"local x = 1...\"]");
    assert_eq!(short(&"y".repeat(100), 0), format!("[string \"{}...\"]", "y".repeat(45)));
    assert_eq!(short("boot", -1), "[builtin:boot]");

    // Through memory: long names are never read whole.
    let mut img = Image::default();
    let long_path = format!("@/{}/end.lua", "d".repeat(5000));
    let s = img.string(&long_path);
    let label = chunk_label(&img.mem, &L, s, 1).expect("label");
    assert!(label.starts_with("...") && label.ends_with("/end.lua") && label.len() == 59, "{label}");
    let code = format!("local a = 1 -- {}", "z".repeat(9000));
    let s = img.string(&code);
    let want = format!("[string \"local a = 1 -- {}...\"]", "z".repeat(30));
    assert_eq!(chunk_label(&img.mem, &L, s, 1), Some(want));
}

#[test]
fn names_a_global() {
    let s = ProtoSpec { kstr: vec!["helper"], ..spec(vec![ins_ad(Op::Gget, 0, 0), ins_abc(Op::Call, 0, 1, 1)]) };
    assert_eq!(name_of_last_call(s), slot(SlotKind::Global, "helper"));
}

#[test]
fn names_a_field() {
    let bc = vec![ins_ad(Op::Uget, 0, 0), ins_abc(Op::Tgets, 0, 0, 1), ins_abc(Op::Call, 0, 1, 1)];
    let s = ProtoSpec { kstr: vec!["other", "field"], uvnames: vec!["t"], ..spec(bc) };
    assert_eq!(name_of_last_call(s), slot(SlotKind::Field, "field"));
}

#[test]
fn names_a_method() {
    // obj:meth(): the self copy goes two slots above the callee (GC64 frames).
    let bc =
        vec![ins_ad(Op::Uget, 0, 1), ins_ad(Op::Mov, 2, 0), ins_abc(Op::Tgets, 0, 0, 0), ins_abc(Op::Call, 0, 1, 2)];
    let s = ProtoSpec { kstr: vec!["meth"], uvnames: vec!["t", "obj"], ..spec(bc.clone()) };
    assert_eq!(name_of_last_call(s), slot(SlotKind::Method, "meth"));

    // A copy into any other slot is not `obj:m()`.
    let mut bc = bc;
    bc[1] = ins_ad(Op::Mov, 1, 0);
    let s = ProtoSpec { kstr: vec!["meth"], uvnames: vec!["t", "obj"], ..spec(bc) };
    assert_eq!(name_of_last_call(s), slot(SlotKind::Field, "meth"));
}

#[test]
fn names_an_upvalue() {
    let bc = vec![ins_ad(Op::Uget, 0, 2), ins_abc(Op::Call, 0, 1, 1)];
    let s = ProtoSpec { uvnames: vec!["t", "obj", "local_fn"], ..spec(bc.clone()) };
    assert_eq!(name_of_last_call(s), slot(SlotKind::Upvalue, "local_fn"));
    // Stripped bytecode has no upvalue names: LuaJIT says "", we say nothing.
    assert_eq!(name_of_last_call(spec(bc)), None);
}

#[test]
fn names_a_local_through_a_copy() {
    // local inner = local_fn; inner()  ->  UGET 0 2; MOV 1 0; CALL 1
    let bc = vec![ins_ad(Op::Uget, 0, 2), ins_ad(Op::Mov, 1, 0), ins_abc(Op::Call, 1, 1, 1), ins_ad(Op::Ret0, 0, 1)];
    let vars = vec![VarSpec { name: "inner", start: 2, end: 4 }];
    let uvnames = vec!["a", "b", "local_fn"];
    let mut img = Image::default();
    let p = img.proto(&ProtoSpec { vars, uvnames: uvnames.clone(), ..spec(bc.clone()) });
    let no_vars = img.proto(&ProtoSpec { uvnames, ..spec(bc) });
    let mut r = Resolver::with_layout(img.mem, *L);
    assert_eq!(r.call_name(p, 3), slot(SlotKind::Local, "inner"));
    assert_eq!(r.slotname(p, 3, 0), slot(SlotKind::Local, "inner"));
    // Past the variable's range, the walk finds what filled the slot.
    assert_eq!(r.slotname(p, 4, 0), slot(SlotKind::Upvalue, "local_fn"));
    // Without varinfo the walk goes on through the copy to the upvalue.
    assert_eq!(r.call_name(no_vars, 3), slot(SlotKind::Upvalue, "local_fn"));
}

#[test]
fn names_an_iterator_call_by_its_generator_slot() {
    // for k, v in gen, s, c do ... end: ITERC A=3 calls slot 0, "(for generator)".
    let bc = vec![ins_ad(Op::Jmp, 3, 0x8001), ins_ad(Op::Kpri, 5, 0), ins_abc(Op::Iterc, 3, 3, 3)];
    let vars = vec![
        VarSpec { name: "\u{4}", start: 1, end: 5 },
        VarSpec { name: "\u{5}", start: 1, end: 5 },
        VarSpec { name: "\u{6}", start: 1, end: 5 },
        VarSpec { name: "k", start: 2, end: 4 },
    ];
    assert_eq!(name_of_last_call(ProtoSpec { vars, ..spec(bc) }), slot(SlotKind::Local, "(for generator)"));
    // ITERC below slot 3 is garbage; no underflow.
    assert_eq!(name_of_last_call(spec(vec![ins_abc(Op::Iterc, 1, 3, 3)])), None);
}

#[test]
fn base_instructions_bound_the_backward_walk() {
    let kstr = vec!["helper"];
    // KNIL over the slot: its value is nil, not the global.
    let bc = vec![ins_ad(Op::Gget, 0, 0), ins_ad(Op::Knil, 0, 1), ins_abc(Op::Call, 0, 1, 1)];
    assert_eq!(name_of_last_call(ProtoSpec { kstr: kstr.clone(), ..spec(bc) }), None);
    // KNIL above the slot, and a call based above it, leave it alone.
    let bc =
        vec![ins_ad(Op::Gget, 0, 0), ins_ad(Op::Knil, 1, 2), ins_abc(Op::Call, 1, 1, 1), ins_abc(Op::Call, 0, 1, 1)];
    assert_eq!(name_of_last_call(ProtoSpec { kstr: kstr.clone(), ..spec(bc) }), slot(SlotKind::Global, "helper"));
    // A call based at or below the slot overwrote it.
    let bc = vec![ins_ad(Op::Gget, 0, 0), ins_abc(Op::Call, 0, 2, 1), ins_abc(Op::Call, 0, 1, 1)];
    assert_eq!(name_of_last_call(ProtoSpec { kstr, ..spec(bc) }), None);
}

#[test]
fn only_call_instructions_name_frames() {
    // A TGETS site means an __index metamethod: out of scope.
    let bc = vec![ins_ad(Op::Gget, 0, 0), ins_abc(Op::Tgets, 0, 0, 0)];
    assert_eq!(name_of_last_call(ProtoSpec { kstr: vec!["x"], ..spec(bc) }), None);
    assert_eq!(name_of_last_call(spec(vec![ins_ad(Op::Ret0, 0, 1)])), None);
}

/// D (main chunk) calls cfn (C), which calls B; B calls A (vararg), which calls pairs.
struct Stack {
    mem: FakeMem,
    frames: Vec<RawFrame>,
    cfn: u64,
}

fn stack() -> Stack {
    let mut img = Image::default();
    let d = img.proto(&ProtoSpec {
        chunkname: "@/d.lua",
        firstline: 0,
        kstr: vec!["cfn"],
        ..spec(vec![ins_ad(Op::Gget, 0, 0), ins_abc(Op::Call, 0, 1, 1), ins_ad(Op::Ret0, 0, 1)])
    });
    let b = img.proto(&ProtoSpec {
        chunkname: "@/b.lua",
        firstline: 10,
        kstr: vec!["a_name"],
        ..spec(vec![ins_ad(Op::Gget, 0, 0), ins_ad(Op::Kshort, 2, 1), ins_abc(Op::Call, 0, 1, 2)])
    });
    let a = img.proto(&ProtoSpec {
        chunkname: "@/a.lua",
        firstline: 20,
        kstr: vec!["pairs"],
        ..spec(vec![ins_ad(Op::Gget, 0, 0), ins_abc(Op::Call, 0, 4, 2)])
    });
    let cfn = 0x5555_0000_1234;
    let (fd, fb, fa) = (img.lua_func(d), img.lua_func(b), img.lua_func(a));
    let (fc, fpairs) = (img.c_func(cfn), img.builtin(5));
    let frames = vec![
        RawFrame { func: fpairs, link: ret_link(a, 2) },
        RawFrame { func: fa, link: VARG_LINK },
        RawFrame { func: fa, link: ret_link(b, 3) },
        RawFrame { func: fb, link: C_LINK },
        RawFrame { func: fc, link: ret_link(d, 2) },
        RawFrame { func: fd, link: C_LINK },
    ];
    Stack { mem: img.mem, frames, cfn }
}

#[test]
fn resolves_a_stack_through_c_builtin_and_vararg_frames() {
    let Stack { mem, frames, cfn } = stack();
    let mut r = Resolver::with_layout(mem, *L);
    let want = vec![
        LuaFrame::Builtin { ffid: 5, name: Some("pairs".into()) },
        lua(Some("a_name"), "/a.lua", 20),
        lua(None, "/b.lua", 10),
        LuaFrame::C { addr: cfn, name: Some("cfn".into()) },
        lua(None, "/d.lua", 0),
    ];
    assert_eq!(r.resolve(&frames), want);
    assert_eq!(r.resolve(&frames), want, "cached answers are the same");
    // A walk cut after the vararg pseudo-frame still shows the function.
    assert_eq!(r.resolve(&frames[1..2]), vec![lua(None, "/a.lua", 20)]);
}

#[test]
fn call_site_must_lie_inside_the_caller() {
    let Stack { mem, frames, .. } = stack();
    // Without the build's names, a builtin is named by its call site alone.
    let mut r = Resolver::with_layout(mem, crate::lua::ObjLayout { fast_functions: &[], ..*L });
    let (fpairs, fa) = (frames[0].func, frames[2].func);
    let proto = r.func_proto(fa).expect("A is a Lua function");
    let bc_start = proto + L.proto_size;
    let sizebc = 3;
    for link in [bc_start, bc_start + 6, bc_start + (sizebc + 1) * 4, bc_start - 4, frames[2].link] {
        let got = r.resolve(&[RawFrame { func: fpairs, link }, RawFrame { func: fa, link: C_LINK }]);
        assert_eq!(got[0], LuaFrame::Builtin { ffid: 5, name: None }, "link {link:#x}");
    }
    // The caller must be a Lua function.
    let got = r.resolve(&[RawFrame { func: fpairs, link: frames[0].link }, frames[4]]);
    assert_eq!(got[0], LuaFrame::Builtin { ffid: 5, name: None });
}

#[test]
fn garbage_gives_question_marks_not_panics() {
    let mut img = Image::default();
    let good = img.proto(&ProtoSpec { chunkname: "@/g.lua", firstline: 3, ..spec(vec![]) });
    let huge = img.proto(&ProtoSpec { chunkname: "@/h.lua", firstline: 4, ..spec(vec![]) });
    let badname = img.proto(&ProtoSpec { chunkname: "@/n.lua", firstline: 5, ..spec(vec![]) });
    let s = img.string("just a string");
    let junk = img.alloc(vec![0xa5; 512]);
    let (fgood, fhuge, fbadname, fjunk) =
        (img.lua_func(good), img.lua_func(huge), img.lua_func(badname), img.lua_func(junk));
    let mut mem = img.mem;
    let r = mem.region_mut(huge).expect("proto region");
    r[L.proto_sizebc as usize..][..4].copy_from_slice(&(1u32 << 25).to_ne_bytes());
    let r = mem.region_mut(badname).expect("proto region");
    r[L.proto_chunkname as usize..][..8].copy_from_slice(&0x1234u64.to_ne_bytes());

    let mut r = Resolver::with_layout(mem, *L);
    let frame = |func| RawFrame { func, link: 0 };
    let got =
        r.resolve(&[frame(0), frame(0xdead_0000), frame(s), frame(fjunk), frame(fhuge), frame(fbadname), frame(fgood)]);
    assert_eq!(
        got,
        vec![
            lua(None, "?", 0),
            lua(None, "?", 0),
            lua(None, "?", 0),
            lua(None, "?", 0),
            lua(None, "?", 0),
            lua(None, "?", 5),
            lua(None, "/g.lua", 3),
        ]
    );
    assert_eq!(r.bytecode(junk), None);
    assert_eq!(r.slotname(good, 1_000_000, 0), None);
}

#[test]
fn long_constant_names_are_refused() {
    let long = "n".repeat(5000);
    let s = ProtoSpec { kstr: vec![&long], ..spec(vec![ins_ad(Op::Gget, 0, 0), ins_abc(Op::Call, 0, 1, 1)]) };
    assert_eq!(name_of_last_call(s), None);
}

/// xorshift64: deterministic noise without a dependency.
fn noise(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn corrupted_objects_never_panic() {
    let Stack { mem, frames, .. } = stack();
    let mut rng = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..3000 {
        let mut mem = mem.clone();
        // Overwrite a few words anywhere in the objects, or a frame word.
        for _ in 0..(noise(&mut rng) % 6 + 1) {
            let addrs = mem.addrs();
            let region = addrs[(noise(&mut rng) % addrs.len() as u64) as usize];
            if let Some(bytes) = mem.region_mut(region) {
                let off = (noise(&mut rng) as usize) % bytes.len();
                let word = noise(&mut rng).to_ne_bytes();
                let n = (noise(&mut rng) % 8 + 1) as usize;
                for (i, b) in word.iter().take(n).enumerate() {
                    if let Some(slot) = bytes.get_mut(off + i) {
                        *slot = *b;
                    }
                }
            }
        }
        let mut frames = frames.clone();
        if noise(&mut rng).is_multiple_of(4) {
            let i = (noise(&mut rng) % frames.len() as u64) as usize;
            frames[i].link ^= noise(&mut rng) & 0xfff;
        }
        let mut r = Resolver::with_layout(mem, *L);
        let got = r.resolve(&frames);
        assert!(got.len() <= frames.len());
    }
}

#[test]
fn proto_cache_is_bounded() {
    let mut img = Image::default();
    let funcs: Vec<(u64, i32)> = (0..20)
        .map(|i| {
            let p = img.proto(&ProtoSpec { chunkname: "@/many.lua", firstline: i, ..spec(vec![]) });
            (img.lua_func(p), i)
        })
        .collect();
    let mem = img.mem;
    for (max_protos, max_bytes, bound) in [(4, usize::MAX, 8), (1000, 1, 2)] {
        let mut r = Resolver::with_cache_limits(mem.clone(), *L, max_protos, max_bytes);
        for _ in 0..3 {
            for &(f, line) in &funcs {
                let got = r.resolve(&[RawFrame { func: f, link: 0 }]);
                assert_eq!(got, vec![lua(None, "/many.lua", line as u32)]);
                assert!(r.cached_protos() <= bound, "{} protos cached", r.cached_protos());
            }
        }
    }
}
