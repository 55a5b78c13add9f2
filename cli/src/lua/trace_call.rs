//! Which Lua frames are live at an FFI call a JIT trace made, where the
//! snapshots alone cannot say (see `trace.rs`): a thin wrapper such as
//! `local function nap(us) C.usleep(us) end` has no guard, so no snapshot,
//! inside it, and the snapshots around the call disagree about it.
//!
//! Three things pin the frames down, each read from the live trace:
//! - the call instruction before the return address, and the trace's IR
//!   `CALLXS` instructions (FFI calls) in the covering snapshot's range: which
//!   of them this is (`callsite.rs`);
//! - the bytecode from the snapshot's PC on, walked with the snapshot's frames
//!   the way the recorder went: into a called Lua function, out at its return,
//!   collecting the FFI call sites on the way, until the next snapshot's PC;
//! - the callee of each call, resolved from what the bytecode loaded: an
//!   upvalue, a field of a table or of the globals, a `ffi.C` (clib) symbol.
//!   A Lua function read from a table counts only if the trace guarded on it
//!   (an `EQ` or `UREFO` on its constant), as the recorder does when it inlines.
//!
//! The FFI sites of a path must match the range's `CALLXS` one to one, with the
//! same targets where both are known. Only when every matching path puts the
//! call in the same frames is the answer given; a frame is never made up, and
//! anything unknown (a callee from a call result, a loop, a `pcall`) leaves the
//! caller's answer to the snapshots, as before.

use std::collections::{HashMap, HashSet};

use super::{
    bc::{self, Op},
    callsite::{call_site, CallSite},
    frame::RawFrame,
    layout::ObjLayout,
    mem::{buf_u32, buf_u64, buf_u8, Memory},
    trace::{buf_u16, read_trace, MAX_INLINED},
};

/// Bytecode instructions walked per snapshot range, over all its branches.
const MAX_STEPS: usize = 4000;
/// Branches the walk may keep open at once.
const MAX_OPEN: usize = 64;
/// Hash slots looked at per table lookup; a larger table is not searched.
const MAX_NODES: u64 = 1 << 12;
/// `__index` tables followed per field, as the recorder follows them.
const MAX_INDEX_CHAIN: usize = 4;
/// Bytes of a key string compared with `__index`.
const INDEX_KEY: &[u8] = b"__index";

/// `IRIns`: op1 and op2 are the first two u16, in every 2.x build.
const IR_OP1: u64 = 0;
const IR_OP2: u64 = 2;

/// A TValue's type in GC64: the upper 17 bits are `~itype`.
fn tv_type(v: u64) -> u64 {
    !(v >> 47) & 0x1ffff
}
const GCVMASK: u64 = (1 << 47) - 1;
const T_STR: u64 = 4;
const T_FUNC: u64 = 8;
const T_CDATA: u64 = 10;
const T_TAB: u64 = 11;
const T_UDATA: u64 = 12;

/// One snapshot, decoded.
struct Snap {
    ir_ref: u32,
    mcofs: u64,
    /// The instruction the interpreter would resume at.
    pc: u64,
    /// Slot of the innermost frame's first local.
    baseslot: u32,
    entries: Vec<u32>,
}

/// What the walk needs of one trace, read once and cached by the caller.
pub struct TraceImage {
    nk: u32,
    nins: u32,
    ref_bias: u32,
    /// IR from constant `nk` up, 8 bytes each.
    ir: Vec<u8>,
    snaps: Vec<Snap>,
    mcode: u64,
    szmcode: u64,
    startpc: u64,
    /// `CALLXS` refs with their constant target, in IR order.
    calls: Vec<(u32, Option<u64>)>,
    loop_ref: Option<u32>,
    /// Lua functions the trace guards on (`EQ` with a function constant, or
    /// an upvalue reference of one): those it inlined after a table read.
    guarded: HashSet<u64>,
}

/// The answer for one return address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The call there is no FFI call of the trace (one of LuaJIT's helpers,
    /// or no call LuaJIT emits).
    NotFfi,
    /// An FFI call whose frames could not be pinned down; its target if known.
    Ambiguous(Option<u64>),
    Call(FfiCall),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FfiCall {
    /// The inlined frames live at the call, innermost first, as
    /// `Inlined::frames` gives them (the trace's root frame not included).
    pub frames: Vec<RawFrame>,
    /// The CALL instruction, in the innermost frame (or the root's bytecode
    /// when `frames` is empty); None when matching paths differ in it only.
    pub pc: Option<u64>,
    /// The C function, when the trace's constant or the clib names it.
    pub target: Option<u64>,
}

impl TraceImage {
    pub fn read<M: Memory>(mem: &M, l: &ObjLayout, g: u64, traceno: u32) -> Option<TraceImage> {
        let t = &l.trace;
        let trace = read_trace(mem, l, g, traceno)?;
        let n = usize::try_from(trace.nins - trace.nk).ok()?;
        let ir = mem.read_bytes(trace.ir.wrapping_add(u64::from(trace.nk) * t.irins_size), n * 8)?;
        let snap_bytes = mem.read_bytes(trace.snap, usize::try_from(trace.nsnap * t.snap_size).ok()?)?;
        let map = mem.read_bytes(trace.snapmap, usize::try_from(u64::from(trace.nsnapmap) * t.snapentry_size).ok()?)?;
        let mut snaps = Vec::with_capacity(usize::try_from(trace.nsnap).ok()?);
        for i in 0..trace.nsnap {
            let s = i * t.snap_size;
            let mapofs = u64::from(buf_u32(&snap_bytes, s + t.snap_mapofs)?);
            let nent = u64::from(buf_u8(&snap_bytes, s + t.snap_nent)?);
            let entries = (0..nent).map(|e| buf_u32(&map, (mapofs + e) * t.snapentry_size)).collect::<Option<Vec<_>>>()?;
            let pcbase = buf_u64(&map, (mapofs + nent) * t.snapentry_size)?;
            snaps.push(Snap {
                ir_ref: u32::from(buf_u16(&snap_bytes, s + t.snap_ref)?),
                mcofs: u64::from(buf_u16(&snap_bytes, s + t.snap_mcofs)?) * t.mcode_unit,
                pc: pcbase >> 8,
                baseslot: (pcbase & 0xff) as u32 + 2,
                entries,
            });
        }
        let mut img = TraceImage {
            nk: trace.nk,
            nins: trace.nins,
            ref_bias: t.ref_bias,
            ir,
            snaps,
            mcode: trace.mcode,
            szmcode: trace.szmcode,
            startpc: mem.read_u64(trace.addr.checked_add(t.trace_startpc)?)?,
            calls: Vec::new(),
            loop_ref: None,
            guarded: HashSet::new(),
        };
        for r in t.ref_bias + 1..trace.nins {
            let o = img.op(r)?;
            if o == t.ir_callxs {
                let mut f = u32::from(img.op2(r)?);
                if img.op(f) == Some(t.ir_carg) {
                    f = u32::from(img.op1(f)?);
                }
                img.calls.push((r, img.pointer(l, f)));
            } else if o == t.ir_loop && img.loop_ref.is_none() {
                img.loop_ref = Some(r);
            }
            let guard_on = if o == t.ir_eq {
                Some(img.op2(r)?)
            } else if o == t.ir_urefo || o == t.ir_urefc {
                Some(img.op1(r)?)
            } else {
                None
            };
            if let Some(k) = guard_on.map(u32::from) {
                if k < t.ref_bias && img.op(k) == Some(t.ir_kgc) && img.t(k)? & t.irt_mask == t.irt_func {
                    img.guarded.extend(img.k64(k));
                }
            }
        }
        Some(img)
    }

    fn field(&self, r: u32, off: u64) -> Option<&[u8]> {
        let i = u64::from(r.checked_sub(self.nk)?) * 8 + off;
        self.ir.get(usize::try_from(i).ok()?..)
    }

    fn op(&self, r: u32) -> Option<u8> {
        buf_u8(self.field(r, 0)?, 5)
    }

    fn t(&self, r: u32) -> Option<u8> {
        buf_u8(self.field(r, 0)?, 4)
    }

    fn op1(&self, r: u32) -> Option<u16> {
        buf_u16(self.field(r, 0)?, IR_OP1)
    }

    fn op2(&self, r: u32) -> Option<u16> {
        buf_u16(self.field(r, 0)?, IR_OP2)
    }

    /// A 64-bit constant's value: the whole instruction after it (GC64).
    fn k64(&self, r: u32) -> Option<u64> {
        buf_u64(self.field(r, 8)?, 0)
    }

    /// The address a call target constant holds (KINT64, KPTR, KKPTR, KINT).
    fn pointer(&self, l: &ObjLayout, r: u32) -> Option<u64> {
        let t = &l.trace;
        if r >= self.ref_bias {
            return None;
        }
        let o = self.op(r)?;
        if o == t.ir_kint64 || o == t.ir_kptr || o == t.ir_kkptr {
            self.k64(r)
        } else if o == t.ir_kint {
            Some(u64::from(buf_u32(self.field(r, 0)?, 0)?))
        } else {
            None
        }
    }

    /// The snapshot whose machine code holds offset `ofs`.
    fn covering(&self, ofs: u64) -> Option<usize> {
        self.snaps.iter().rposition(|s| s.mcofs <= ofs)
    }

    /// The frames of snapshot `n`, outermost first after the root: (slot of
    /// the frame link, function, link). None where a frame's function is no
    /// constant, or is no Lua frame.
    fn frames(&self, l: &ObjLayout, n: usize) -> Option<Vec<(u32, u64, u64)>> {
        let t = &l.trace;
        let snap = self.snaps.get(n)?;
        let by_slot: HashMap<u32, u32> = snap.entries.iter().map(|&e| (e >> 24, e)).collect();
        let mut frames = Vec::new();
        for &e in &snap.entries {
            if e & t.snap_frame == 0 || e >> 24 < 2 {
                continue;
            }
            let link = self.k64(e & 0xffff)?;
            if link & 3 == 3 {
                continue; // the vararg marker of the function below
            }
            if link & 3 != 0 {
                return None; // a continuation or C frame: not modelled
            }
            let f = *by_slot.get(&((e >> 24) - 1))? & 0xffff;
            if f >= t.ref_bias || self.op(f)? != t.ir_kgc {
                return None;
            }
            frames.push((e >> 24, self.k64(f)?, link));
        }
        Some(frames)
    }

    /// What snapshot `n` holds as constants (functions, tables, userdata,
    /// cdata: what the recorder specialised to) in each frame's slots, root
    /// first, by register number. `bases` is each frame's first slot, root
    /// first (one above its link's slot; the root's is 2).
    fn known_slots(&self, l: &ObjLayout, n: usize, bases: &[u32]) -> Vec<HashMap<u32, Val>> {
        let t = &l.trace;
        let mut frames = vec![HashMap::new(); bases.len()];
        let Some(snap) = self.snaps.get(n) else { return frames };
        for &e in &snap.entries {
            let (slot, r) = (e >> 24, e & 0xffff);
            if e & 0x3_0000 != 0 || r >= t.ref_bias || self.op(r) != Some(t.ir_kgc) {
                continue;
            }
            let Some(i) = bases.iter().rposition(|&b| b <= slot) else { continue };
            let (Some(ty), Some(gc)) = (self.t(r), self.k64(r)) else { continue };
            let v = match u64::from(ty & t.irt_mask) {
                T_FUNC => Val::Func(gc),
                T_TAB => Val::Table(gc),
                T_UDATA => Val::Udata(gc),
                T_CDATA => Val::Cdata(gc),
                _ => continue,
            };
            frames[i].insert(slot - bases[i], v);
        }
        frames
    }
}

/// Which frames are live at the call that returns to `ret` inside the trace
/// whose root frame runs `root` (a `GCfunc`).
pub fn frames_at<M: Memory>(mem: &M, l: &ObjLayout, img: &TraceImage, root: u64, ret: u64) -> Found {
    let Some(site) = call_site(mem, ret) else { return Found::NotFfi };
    let Some(ofs) = ret.checked_sub(1).and_then(|r| r.checked_sub(img.mcode)).filter(|&o| o < img.szmcode) else {
        return Found::NotFfi;
    };
    let Some(k) = img.covering(ofs) else { return Found::NotFfi };
    let end = img.snaps.get(k + 1).map_or(img.nins, |s| s.ir_ref);
    let lo = img.snaps[k].ir_ref;
    let mut candidates: Vec<(u32, Option<u64>)> =
        img.calls.iter().copied().filter(|&(r, _)| r >= lo && r < end).collect();
    if let CallSite::To(target) = site {
        candidates.retain(|&(_, t)| t.is_none_or(|t| t == target));
        if candidates.is_empty() {
            return Found::NotFfi;
        }
    }
    let targets: HashSet<Option<u64>> = candidates.iter().map(|c| c.1).collect();
    let target = match site {
        CallSite::To(t) => Some(t),
        CallSite::SavedRegister if targets.len() == 1 => targets.into_iter().next().flatten(),
        CallSite::SavedRegister => None,
    };
    let mut walks: HashMap<usize, Option<Vec<Vec<Site>>>> = HashMap::new();
    let mut answers = Vec::new();
    log::debug!("FFI call at {ret:#x}: snapshot #{k}, site {site:?}, CALLXS candidates {candidates:x?}");
    for (r, _) in candidates {
        let Some(answer) = attribute(mem, l, img, root, r, &mut walks) else {
            log::debug!("CALLXS {r:#x}: no single answer");
            return Found::Ambiguous(target);
        };
        answers.push(answer);
    }
    let Some(first) = answers.first().cloned() else { return Found::Ambiguous(target) };
    if answers.iter().any(|a| a.frames != first.frames) {
        return Found::Ambiguous(target);
    }
    let pc = answers.iter().all(|a| a.pc == first.pc).then_some(first.pc);
    let frames = first.frames.iter().rev().map(|&(func, link)| RawFrame { func, link }).collect();
    Found::Call(FfiCall { frames, pc, target: target.or(first.target) })
}

/// One FFI call site on a walked path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    target: Option<u64>,
    /// Inlined frames, outermost first, without the root.
    frames: Vec<(u64, u64)>,
    pc: u64,
}

/// The site of `CALLXS` `r`, from the walk of its snapshot range (cached per
/// snapshot in `walks`).
fn attribute<M: Memory>(
    mem: &M,
    l: &ObjLayout,
    img: &TraceImage,
    root: u64,
    r: u32,
    walks: &mut HashMap<usize, Option<Vec<Vec<Site>>>>,
) -> Option<Site> {
    // The loop body repeats the pre-roll's calls in order (loop unrolling
    // copies every instruction with a side effect once): answer for the
    // pre-roll's, where the snapshots still follow the bytecode.
    let mut r = r;
    if let Some(lp) = img.loop_ref.filter(|&lp| r > lp) {
        let pre: Vec<_> = img.calls.iter().filter(|c| c.0 < lp).collect();
        let body: Vec<_> = img.calls.iter().filter(|c| c.0 > lp).collect();
        let i = body.iter().position(|c| c.0 == r)?;
        if pre.len() != body.len() || pre[i].1 != body[i].1 {
            return None;
        }
        r = pre[i].0;
    }
    let n = img.snaps.iter().rposition(|s| s.ir_ref <= r)?;
    let hi = match img.snaps.get(n + 1) {
        Some(s) => s.ir_ref,
        None => img.loop_ref.unwrap_or(img.nins),
    };
    let in_range: Vec<&(u32, Option<u64>)> = img.calls.iter().filter(|c| c.0 >= img.snaps[n].ir_ref && c.0 < hi).collect();
    let k = in_range.iter().position(|c| c.0 == r)?;
    let paths = walks.entry(n).or_insert_with(|| Walk::new(mem, l, img, root, n).and_then(|w| w.run())).as_ref();
    log::debug!("snapshot #{n}: CALLXS {k} of {}, paths {paths:x?}", in_range.len());
    let paths = paths?;
    let matching: Vec<&Site> = paths
        .iter()
        .filter(|sites| {
            sites.len() == in_range.len()
                && sites.iter().zip(&in_range).all(|(s, c)| s.target.is_none() || c.1.is_none() || s.target == c.1)
        })
        .map(|sites| &sites[k])
        .collect();
    let first = (*matching.first()?).clone();
    matching.iter().all(|s| s.frames == first.frames && s.pc == first.pc).then_some(first)
}

/// What the walk knows a slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Val {
    Func(u64),
    Table(u64),
    Udata(u64),
    Cdata(u64),
    /// A clib symbol: an FFI function, its address when the clib resolved it.
    Ffi(Option<u64>),
}

/// One path of the walk.
#[derive(Clone)]
struct State {
    /// Root first: (function, link); the root's link is not known (0).
    frames: Vec<(u64, u64)>,
    pc: u64,
    slots: HashMap<u32, Val>,
    /// The callers' slots, for when the walk returns to them.
    saved: Vec<HashMap<u32, Val>>,
    sites: Vec<Site>,
}

struct Walk<'a, M: Memory> {
    mem: &'a M,
    l: &'a ObjLayout,
    img: &'a TraceImage,
    /// Where the range ends: the next snapshot's frames (functions) and PC.
    next: Option<(Vec<u64>, u64)>,
    start: State,
}

impl<'a, M: Memory> Walk<'a, M> {
    fn new(mem: &'a M, l: &'a ObjLayout, img: &'a TraceImage, root: u64, n: usize) -> Option<Self> {
        let inlined = img.frames(l, n)?;
        if inlined.len() >= MAX_INLINED {
            return None;
        }
        let bases: Vec<u32> = std::iter::once(2).chain(inlined.iter().map(|f| f.0 + 1)).collect();
        let frames: Vec<(u64, u64)> = std::iter::once((root, 0)).chain(inlined.iter().map(|f| (f.1, f.2))).collect();
        let next = match img.snaps.get(n + 1) {
            Some(s) => {
                let mut f = vec![root];
                f.extend(img.frames(l, n + 1)?.into_iter().map(|(_, func, _)| func));
                Some((f, s.pc))
            }
            None => None,
        };
        let mut saved = img.known_slots(l, n, &bases);
        let slots = saved.pop()?;
        let start = State { frames, pc: img.snaps[n].pc, slots, saved, sites: Vec::new() };
        Some(Walk { mem, l, img, next, start })
    }

    /// Every complete path's FFI sites; None when any path meets what the walk
    /// cannot follow (then nothing it found can be trusted to be all).
    fn run(self) -> Option<Vec<Vec<Site>>> {
        let mut done = Vec::new();
        let mut open = vec![self.start.clone()];
        let mut steps = 0;
        while let Some(mut s) = open.pop() {
            loop {
                steps += 1;
                if steps > MAX_STEPS || open.len() > MAX_OPEN {
                    return None;
                }
                if self.at_next(&s) {
                    done.push(s.sites);
                    break;
                }
                match self.step(&mut s, &mut open)? {
                    Step::Go => {}
                    Step::End(complete) => {
                        if complete {
                            done.push(s.sites);
                        }
                        break;
                    }
                }
            }
        }
        Some(done)
    }

    fn at_next(&self, s: &State) -> bool {
        self.next.as_ref().is_some_and(|(funcs, pc)| *pc == s.pc && s.frames.iter().map(|f| f.0).eq(funcs.iter().copied()))
    }

    fn same_frames_as_next(&self, s: &State) -> bool {
        self.next.as_ref().is_some_and(|(funcs, _)| s.frames.iter().map(|f| f.0).eq(funcs.iter().copied()))
    }

    /// Executes one instruction of `s` as far as frames and callees go.
    fn step(&self, s: &mut State, open: &mut Vec<State>) -> Option<Step> {
        log::trace!("step pc {:#x} op {:?} frames {:x?}", s.pc, self.mem.read_u32(s.pc).and_then(|i| self.l.op(i)), s.frames);
        let r = self.step_inner(s, open);
        if r.is_none() {
            let op = self.mem.read_u32(s.pc).and_then(|i| self.l.op(i));
            log::debug!("walk stops at pc {:#x} ({op:?}) in frames {:x?}, slots {:x?}", s.pc, s.frames, s.slots);
        }
        r
    }

    fn step_inner(&self, s: &mut State, open: &mut Vec<State>) -> Option<Step> {
        let l = self.l;
        let func = s.frames.last()?.0;
        let proto = self.proto(func)?;
        let bc = proto.checked_add(l.proto_size)?;
        let sizebc = u64::from(self.mem.read_u32(proto.checked_add(l.proto_sizebc)?)?);
        if s.pc < bc || s.pc >= bc.checked_add(sizebc * l.bcins_size)? {
            return None;
        }
        let ins = self.mem.read_u32(s.pc)?;
        let op = l.op(ins)?;
        let (a, b, c, d) = (bc::a(ins), bc::b(ins), bc::c(ins), bc::d(ins));
        let next = s.pc + l.bcins_size;
        let jump = |from: u64, d: u32| from.wrapping_add(l.bcins_size).wrapping_add((i64::from(d) - 0x8000) as u64 * l.bcins_size);
        use Op::*;
        match op {
            // A comparison is a guard with its own snapshot, unless the
            // recorder folded it: then either way may have been taken.
            Islt | Isge | Isle | Isgt | Iseqv | Isnev | Iseqs | Isnes | Iseqn | Isnen | Iseqp | Isnep => {
                let target = jump(next, bc::d(self.mem.read_u32(next)?));
                let after = next + l.bcins_size;
                if self.same_frames_as_next(s) && self.next.as_ref().is_some_and(|n| n.1 == after || n.1 == target) {
                    return Some(Step::End(true));
                }
                let mut other = s.clone();
                other.pc = target;
                open.push(other);
                s.pc = after;
            }
            Ist | Isf | Istc | Isfc => {
                let target = jump(next, bc::d(self.mem.read_u32(next)?));
                let mut other = s.clone();
                if matches!(op, Istc | Isfc) {
                    other.slots.remove(&a);
                }
                other.pc = target;
                open.push(other);
                s.pc = next + l.bcins_size;
            }
            Forl | Iforl | Jforl | Iterl | Iiterl | Jiterl | Loop | Iloop | Jloop => {
                let root_only = s.frames.len() == 1;
                let complete = match &self.next {
                    None => root_only && s.pc == self.img.startpc,
                    Some((funcs, pc)) => root_only && next == *pc && funcs.len() == 1,
                };
                return Some(Step::End(complete));
            }
            Jmp => s.pc = jump(s.pc, d),
            Funcf | Ifuncf | Jfuncf | Funcv | Ifuncv | Jfuncv => s.pc = next,
            Uget => {
                let (v, immutable) = self.upvalue(func, d)?;
                match v {
                    Some(v) if immutable || matches!(v, Val::Table(_) | Val::Udata(_)) => s.slots.insert(a, v),
                    _ => s.slots.remove(&a),
                };
                s.pc = next;
            }
            Mov => {
                match s.slots.get(&d).copied() {
                    Some(v) => s.slots.insert(a, v),
                    None => s.slots.remove(&a),
                };
                s.pc = next;
            }
            Gget | Tgets => {
                let (table, key) = match op {
                    Gget => (Some(Val::Table(self.mem.read_u64(func.checked_add(l.func_env)?)? & GCVMASK)), d),
                    _ => (s.slots.get(&b).copied(), c),
                };
                let key = self.kgc(proto, key)?;
                let v = table.and_then(|t| self.field(t, key));
                match v {
                    Some(v) => s.slots.insert(a, v),
                    None => s.slots.remove(&a),
                };
                s.pc = next;
            }
            Call | Callm | Callt | Callmt => return self.call(s, op, a, next),
            Ret | Ret0 | Ret1 | Retm => return self.ret(s),
            Fori | Jfori | Iterc | Itern | Isnext | Uclo | Fnew | Varg | Knil | Tsetm => {
                return None; // loops, closures, variable slot counts: not followed
            }
            Usetv | Usets | Usetn | Usetp | Tsetv | Tsets | Tsetb | Tsetr | Gset | Istype | Isnum => s.pc = next,
            _ => {
                s.slots.remove(&a);
                s.pc = next;
            }
        }
        Some(Step::Go)
    }

    fn call(&self, s: &mut State, op: Op, a: u32, next: u64) -> Option<Step> {
        let l = self.l;
        let tail = matches!(op, Op::Callt | Op::Callmt);
        let callee = match s.slots.get(&a).copied()? {
            Val::Cdata(cd) => Val::Ffi(self.mem.read_u64(cd.checked_add(l.cdata_ptr)?)),
            v => v,
        };
        match callee {
            Val::Ffi(target) => {
                let mut frames: Vec<(u64, u64)> = s.frames[1..].to_vec();
                let pc = if tail {
                    // The call happens in the caller, at the call that made this frame.
                    let (_, link) = frames.pop()?;
                    link.checked_sub(l.bcins_size)?
                } else {
                    s.pc
                };
                s.sites.push(Site { target, frames, pc });
                if tail {
                    return self.ret(s);
                }
                for k in a..a + 3 {
                    s.slots.remove(&k);
                }
                s.pc = next;
            }
            Val::Func(f) => {
                let ffid = self.mem.read_u8(f.checked_add(l.func_ffid)?)?;
                if ffid != l.ffid_lua {
                    if ffid == l.ffid_pcall || ffid == l.ffid_xpcall {
                        return None;
                    }
                    // A builtin or C function: no Lua frame, results unknown;
                    // called in tail position, the frame returns with them.
                    if tail {
                        return self.ret(s);
                    }
                    for k in a..a + 3 {
                        s.slots.remove(&k);
                    }
                    s.pc = next;
                    return Some(Step::Go);
                }
                let proto = self.proto(f)?;
                let nparams = u32::from(self.mem.read_u8(proto.checked_add(l.proto_numparams)?)?);
                // GC64 frames take two slots: arguments start at A + 2.
                let args: HashMap<u32, Val> =
                    (0..nparams).filter_map(|i| Some((i, *s.slots.get(&(a + 2 + i))?))).collect();
                if tail {
                    let (_, link) = s.frames.pop()?;
                    s.frames.push((f, link));
                } else {
                    if s.frames.len() >= MAX_INLINED {
                        return None;
                    }
                    let mut caller = std::mem::take(&mut s.slots);
                    caller.retain(|&k, _| k < a);
                    s.saved.push(caller);
                    s.frames.push((f, next));
                }
                s.slots = args;
                s.pc = proto.checked_add(l.proto_size)?;
            }
            Val::Table(_) | Val::Udata(_) | Val::Cdata(_) => return None, // __call: not followed
        }
        Some(Step::Go)
    }

    /// Back to the caller; leaving the trace's root frame is not followed.
    fn ret(&self, s: &mut State) -> Option<Step> {
        let (_, link) = s.frames.pop()?;
        if s.frames.is_empty() || link == 0 {
            return None;
        }
        s.pc = link;
        s.slots = s.saved.pop().unwrap_or_default();
        Some(Step::Go)
    }

    fn proto(&self, func: u64) -> Option<u64> {
        let l = self.l;
        if self.mem.read_u8(func.checked_add(l.gct)?)? != l.gct_func || self.mem.read_u8(func + l.func_ffid)? != l.ffid_lua {
            return None;
        }
        self.mem.read_u64(func.checked_add(l.func_pc)?)?.checked_sub(l.proto_size)
    }

    /// GC constant `idx` of a proto (`proto_kgc(pt, ~idx)`).
    fn kgc(&self, proto: u64, idx: u32) -> Option<u64> {
        let k = self.mem.read_u64(proto.checked_add(self.l.proto_k)?)?;
        self.mem.read_u64(k.checked_sub((u64::from(idx) + 1).checked_mul(self.l.gcref_size)?)?)
    }

    /// Upvalue `idx` of closure `func`, and whether it is immutable (the
    /// recorder then used its value as a constant).
    fn upvalue(&self, func: u64, idx: u32) -> Option<(Option<Val>, bool)> {
        let l = self.l;
        if idx >= u32::from(self.mem.read_u8(func.checked_add(l.func_nupvalues)?)?) {
            return None;
        }
        let uv = self.mem.read_u64(func.checked_add(l.func_uvptr)?.checked_add(8 * u64::from(idx))?)?;
        let immutable = self.mem.read_u8(uv.checked_add(l.uv_immutable)?)? != 0;
        let v = self.mem.read_u64(self.mem.read_u64(uv.checked_add(l.uv_v)?)?)?;
        Some((value(v), immutable))
    }

    /// What `t.key` (a string key) reads, following `__index` tables; a clib's
    /// symbol is an FFI function. A Lua function counts only if the trace
    /// guarded on it: a table may have changed since the trace was recorded.
    fn field(&self, t: Val, key: u64) -> Option<Val> {
        let l = self.l;
        let v = match t {
            Val::Table(tab) => self.lookup(tab, key, 0)?,
            Val::Udata(ud) if self.mem.read_u8(ud.checked_add(l.udata_udtype)?)? == l.udtype_clib => {
                let cache = self.mem.read_u64(ud.checked_add(l.udata_payload)?.checked_add(8)?)? & GCVMASK;
                let target = match self.lookup(cache, key, MAX_INDEX_CHAIN) {
                    Some(Val::Cdata(cd)) => self.mem.read_u64(cd.checked_add(l.cdata_ptr)?),
                    _ => None,
                };
                return Some(Val::Ffi(target));
            }
            _ => return None,
        };
        match v {
            Val::Func(f) if self.proto(f).is_some() && !self.img.guarded.contains(&f) => None,
            v => Some(v),
        }
    }

    /// `t[key]` for an interned string `key`, then through `__index` tables.
    fn lookup(&self, tab: u64, key: u64, depth: usize) -> Option<Val> {
        let l = self.l;
        if let Some(v) = self.raw_get(tab, |k| k == key) {
            return value(v);
        }
        if depth >= MAX_INDEX_CHAIN {
            return None;
        }
        let meta = self.mem.read_u64(tab.checked_add(l.tab_meta)?)? & GCVMASK;
        if meta == 0 {
            return None;
        }
        let index = self.raw_get(meta, |k| self.string_is(k, INDEX_KEY))?;
        match value(index)? {
            Val::Table(next) => self.lookup(next, key, depth + 1),
            _ => None,
        }
    }

    /// The value of the first hash slot whose string key satisfies `is_key`.
    fn raw_get(&self, tab: u64, is_key: impl Fn(u64) -> bool) -> Option<u64> {
        let l = self.l;
        let hmask = u64::from(self.mem.read_u32(tab.checked_add(l.tab_hmask)?)?);
        if hmask >= MAX_NODES {
            return None;
        }
        let node = self.mem.read_u64(tab.checked_add(l.tab_node)?)?;
        let nodes = self.mem.read_bytes(node, usize::try_from((hmask + 1) * l.node_size).ok()?)?;
        (0..=hmask).find_map(|i| {
            let at = i * l.node_size;
            let k = buf_u64(&nodes, at + l.node_key)?;
            (tv_type(k) == T_STR && is_key(k & GCVMASK)).then(|| buf_u64(&nodes, at + l.node_val)).flatten()
        })
    }

    fn string_is(&self, s: u64, want: &[u8]) -> bool {
        let l = self.l;
        let len = s.checked_add(l.str_len).and_then(|a| self.mem.read_u32(a));
        len.is_some_and(|n| n as usize == want.len())
            && s.checked_add(l.str_data).and_then(|a| self.mem.read_bytes(a, want.len())).is_some_and(|b| b == want)
    }
}

enum Step {
    Go,
    /// The path ended; true if it reached the range's end as the recorder did.
    End(bool),
}

/// The objects a slot may hold that the walk can use.
fn value(v: u64) -> Option<Val> {
    let gc = v & GCVMASK;
    match tv_type(v) {
        T_FUNC => Some(Val::Func(gc)),
        T_TAB => Some(Val::Table(gc)),
        T_UDATA => Some(Val::Udata(gc)),
        T_CDATA => Some(Val::Cdata(gc)),
        _ => None,
    }
}
