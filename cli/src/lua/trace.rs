//! The Lua frames a JIT trace has inlined. A trace runs the functions it
//! inlined inside its root frame without ever writing their frames to the Lua
//! stack, so a walk from `G->jit_base` cannot see them. LuaJIT rebuilds them
//! only when the trace exits, from the snapshot that covers the exit point
//! (`lj_snap_restore`). We do the same without touching the target: find the
//! snapshot whose machine code holds an address (the binary search of
//! `lj_trace_unwind`) and turn its frame entries into the (func, link) pairs
//! the kernel records for real frames, so `Resolver::resolve` names them alike.
//!
//! What this can and cannot show follows from when LuaJIT takes snapshots: only
//! where the trace may have to resume the interpreter, i.e. before a guard that
//! follows a side effect (a store, a call). The code after a snapshot belongs
//! to it until the next one, and in between the trace may have returned from
//! inlined functions (the snapshot before still lists them) or entered new
//! ones (the snapshot after already lists them). So only the frames that the
//! snapshots on both sides of the address agree on are returned: those are
//! live throughout. A function with no snapshot inside it on both sides of an
//! address (say, a bare FFI call with no check before and after it) is charged
//! to its caller; a frame is never made up or left over from a past call.
//!
//! Everything is read from a running process: every count is bounded, every
//! pointer checked against the others, and anything inconsistent gives no
//! frames rather than guessed ones.

use super::{
    frame::RawFrame,
    layout::{ObjLayout, TraceLayout},
    mem::{buf_u32, buf_u64, buf_u8, Memory},
};

/// Most frames returned. A trace has at most `LJ_MAX_JSLOTS` (250) slots and
/// an inlined frame takes two, so this only cuts pathological traces; the
/// outermost frames are the ones dropped.
pub const MAX_INLINED: usize = 64;

/// Snapshots per trace we accept. LuaJIT's `maxsnap` defaults to 500; far
/// more is garbage, and the bound keeps the one read of the array small.
pub const MAX_SNAPS: u64 = 1 << 14;

/// Traces per VM we accept: trace numbers are 16-bit (`TraceNo1`).
pub(super) const MAX_TRACES: u32 = 1 << 16;

/// IR instructions and constants per trace we accept: IR refs are 16-bit
/// (`IRRef1`), so a saved trace never spans more.
const MAX_IR: u32 = 1 << 16;

/// Slot 0 is the root function and slot 1 its frame link: the root frame
/// itself, which is on the stack at `jit_base`. A frame entry for slot 1 only
/// marks that the root was tail-called. Inlined frames start above.
const FIRST_INLINED_SLOT: u32 = 2;

/// Where `inlined_frames` found its frames, for diagnostics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inlined {
    /// The address of `addrs` that lies in the trace's machine code.
    pub addr: u64,
    /// The snapshot (exit number) covering it.
    pub snapno: u32,
    /// Innermost first, those the snapshots before and after the address
    /// agree on; frames whose function is not a constant are left out.
    pub frames: Vec<RawFrame>,
    /// The bytecode instruction the snapshot resumes at, in the innermost of
    /// `frames` (or the trace's root frame when `frames` is empty); None when
    /// the snapshots disagreed about inner frames, so the instruction is in a
    /// frame not returned.
    pub pc: Option<u64>,
    /// The snapshot before the address listed inner frames the one after did
    /// not, and nothing else told whether they were still live there: they
    /// were left out, and the code is charged to the frames both agree on.
    pub ambiguous: bool,
}

/// The header fields of a saved trace we use, already checked.
pub(super) struct Trace {
    pub addr: u64,
    pub nk: u32,
    pub nins: u32,
    pub ir: u64,
    pub nsnap: u64,
    pub nsnapmap: u32,
    pub snap: u64,
    pub snapmap: u64,
    pub mcode: u64,
    pub szmcode: u64,
}

/// See `Resolver::inlined_frames`; None when nothing is found or anything
/// reads wrong.
pub fn inlined_frames<M: Memory>(mem: &M, l: &ObjLayout, g: u64, traceno: u32, addrs: &[u64]) -> Option<Inlined> {
    let t = &l.trace;
    let trace = read_trace(mem, l, g, traceno)?;
    // Stack words are return addresses: the call that pushed one ends there,
    // so the byte before it is the call. Looking that byte up keeps a call
    // that ends a snapshot's code charged to that snapshot, not the next.
    let (addr, ofs) = addrs.iter().find_map(|&a| {
        let ofs = a.checked_sub(1)?.checked_sub(trace.mcode)?;
        (ofs < trace.szmcode).then_some((a, ofs.checked_div(t.mcode_unit)?))
    })?;
    let snapno = snapshot_at(mem, t, &trace, ofs)?;
    let (mut frames, pc) = snapshot_frames(mem, t, &trace, snapno)?;
    let mut pc = Some(pc);
    let mut ambiguous = false;
    // The last snapshot's code runs to the trace's end or loop: nothing after
    // it to agree with, and the interpreter would resume from it.
    if snapno + 1 < trace.nsnap {
        let (after, _) = snapshot_frames(mem, t, &trace, snapno + 1)?;
        let common = frames.iter().rev().zip(after.iter().rev()).take_while(|(a, b)| a == b).count();
        if common < frames.len() {
            pc = None;
            ambiguous = true;
        }
        frames.drain(..frames.len() - common);
    }
    Some(Inlined { addr, snapno: u32::try_from(snapno).ok()?, frames, pc, ambiguous })
}

/// The bytecode instruction snapshot `snapno` of `trace` resumes at, i.e.
/// where the interpreter continues after that exit (the last snapshot's is
/// where the trace ends). None past the last snapshot: the stack check's
/// exit number (`nsnap`) is no snapshot.
pub(super) fn resume_pc<M: Memory>(mem: &M, l: &ObjLayout, trace: &Trace, snapno: u64) -> Option<u64> {
    if snapno >= trace.nsnap {
        return None;
    }
    snapshot_map(mem, &l.trace, trace, snapno).map(|(_, _, pc)| pc)
}

/// Trace `traceno` of the VM at `g`, checked against how `trace_save` lays a
/// trace out: header, IR from constant `nk` up, snapshots, snapshot map.
pub(super) fn read_trace<M: Memory>(mem: &M, l: &ObjLayout, g: u64, traceno: u32) -> Option<Trace> {
    let t = &l.trace;
    let j = g.checked_add(t.g2j)?;
    let traces = mem.read_u64(j.checked_add(t.j_trace)?)?;
    let sizetrace = mem.read_u32(j.checked_add(t.j_sizetrace)?)?;
    // Trace 0 does not exist: vmstate 0 is never a running trace.
    if traceno == 0 || traceno >= sizetrace || sizetrace > MAX_TRACES {
        return None;
    }
    let at = traces.checked_add(u64::from(traceno).checked_mul(l.gcref_size)?)?;
    let addr = mem.read_u64(at)?;
    if addr == 0 {
        return None; // Flushed since the sample.
    }
    trace_at(mem, l, addr, traceno).map(|(trace, _)| trace)
}

/// The trace object at `addr`, which the trace array holds as number
/// `traceno`, checked as `read_trace` says; with its header's bytes, for
/// the fields a caller reads beside these.
pub(super) fn trace_at<M: Memory>(mem: &M, l: &ObjLayout, addr: u64, traceno: u32) -> Option<(Trace, Vec<u8>)> {
    let t = &l.trace;
    let buf = mem.read_bytes(addr, usize::try_from(t.trace_size).ok()?)?;
    let u16_at = |off| buf_u16(&buf, off).map(u64::from);
    if buf_u8(&buf, l.gct)? != t.gct_trace || u16_at(t.trace_traceno)? != u64::from(traceno) {
        return None;
    }
    let trace = Trace {
        addr,
        nk: buf_u32(&buf, t.trace_nk)?,
        nins: buf_u32(&buf, t.trace_nins)?,
        ir: buf_u64(&buf, t.trace_ir)?,
        nsnap: u16_at(t.trace_nsnap)?,
        nsnapmap: buf_u32(&buf, t.trace_nsnapmap)?,
        snap: buf_u64(&buf, t.trace_snap)?,
        snapmap: buf_u64(&buf, t.trace_snapmap)?,
        mcode: buf_u64(&buf, t.trace_mcode)?,
        szmcode: u64::from(buf_u32(&buf, t.trace_szmcode)?),
    };
    // Constants lie below REF_BIAS and instructions from it up; refs are 16-bit.
    if trace.nk >= t.ref_bias || trace.nins <= t.ref_bias || trace.nins - trace.nk > MAX_IR {
        return None;
    }
    // One allocation, in this order (trace_save): a stale or foreign object
    // will not line up.
    let ir_start = addr.checked_add(t.trace_size)?;
    let ir_end = ir_start.checked_add(u64::from(trace.nins - trace.nk) * t.irins_size)?;
    let snap_end = ir_end.checked_add(trace.nsnap.checked_mul(t.snap_size)?)?;
    if trace.ir.wrapping_add(u64::from(trace.nk) * t.irins_size) != ir_start
        || trace.snap != ir_end
        || trace.snapmap != snap_end
        || trace.nsnap == 0
        || trace.nsnap > MAX_SNAPS
        || trace.szmcode == 0
        || trace.mcode.checked_add(trace.szmcode).is_none()
    {
        return None;
    }
    Some((trace, buf))
}

/// The snapshot covering machine-code offset `ofs` (in `MCode` units): the
/// last one whose code starts at or before it, by the rightmost binary search
/// of `lj_trace_unwind`. Snapshot 0 starts at offset 0.
fn snapshot_at<M: Memory>(mem: &M, t: &TraceLayout, trace: &Trace, ofs: u64) -> Option<u64> {
    let snaps = mem.read_bytes(trace.snap, usize::try_from(trace.nsnap * t.snap_size).ok()?)?;
    let mcofs = |i: u64| buf_u16(&snaps, i * t.snap_size + t.snap_mcofs).map(u64::from);
    let (mut lo, mut hi) = (0, trace.nsnap);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if ofs < mcofs(mid)? {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo.checked_sub(1)
}

/// Where snapshot `snapno`'s entries are in the map, how many, and the
/// bytecode instruction it resumes at.
fn snapshot_map<M: Memory>(mem: &M, t: &TraceLayout, trace: &Trace, snapno: u64) -> Option<(u64, u8, u64)> {
    let snap = trace.snap.checked_add(snapno.checked_mul(t.snap_size)?)?;
    let mapofs = mem.read_u32(snap.checked_add(t.snap_mapofs)?)?;
    let nent = mem.read_u8(snap.checked_add(t.snap_nent)?)?;
    // The entries are followed by the 64-bit PC-and-base word (LJ_FR2).
    let words_after = 8 / t.snapentry_size;
    // The map read is at most 255 entries: nent is a u8.
    if u64::from(mapofs) + u64::from(nent) + words_after > u64::from(trace.nsnapmap) {
        return None;
    }
    let map_at = trace.snapmap.checked_add(u64::from(mapofs) * t.snapentry_size)?;
    // LJ_FR2: `(pc << 8) | (baseslot - 2)` (snapshot_framelinks).
    let pc = mem.read_u64(map_at.checked_add(u64::from(nent) * t.snapentry_size)?)? >> 8;
    Some((map_at, nent, pc))
}

/// The inlined frames of snapshot `snapno`, innermost first, and the bytecode
/// instruction it resumes at (the one being recorded when it was taken).
fn snapshot_frames<M: Memory>(mem: &M, t: &TraceLayout, trace: &Trace, snapno: u64) -> Option<(Vec<RawFrame>, u64)> {
    let (map_at, nent, pc) = snapshot_map(mem, t, trace, snapno)?;
    let map = mem.read_bytes(map_at, usize::from(nent) * usize::try_from(t.snapentry_size).ok()?)?;
    let entries: Vec<u32> = (0..u64::from(nent)).map(|i| buf_u32(&map, i * t.snapentry_size)).collect::<Option<_>>()?;
    let slot = |sn: u32| sn >> 24;
    let sref = |sn: u32| sn & 0xffff;

    let mut frames = Vec::new();
    // Entries are in slot order (snapshot_slots walks the slots upwards), so
    // walking them backwards meets the innermost frame first.
    for &sn in entries.iter().rev() {
        if sn & t.snap_frame == 0 || slot(sn) < FIRST_INLINED_SLOT {
            continue;
        }
        // A frame slot holds the raw link as a KNUM (`snapshot_slots` makes
        // one of every frame slot in LJ_FR2 mode): anything else is garbage.
        let link = match constant(mem, t, trace, sref(sn))? {
            Const::Num(link) => link,
            _ => return None,
        };
        // The function sits in the slot below (LJ_FR2 always snapshots it).
        // Recorded calls specialise it to a KGC constant, except a closure of
        // a prototype with many closures (PROTO_CLC_POLY), which is checked by
        // prototype and stays in a register: its GCfunc is not in the trace.
        // Such a frame is left out and the walk goes on; the frame it called
        // then gets no call-site name, since its return PC is in no frame we
        // return (`resolve` checks it lies in the caller's bytecode).
        let func_entry = entries.iter().find(|&&e| slot(e) + 1 == slot(sn));
        let func = match func_entry.map(|&e| sref(e)) {
            Some(r) if r < t.ref_bias => match constant(mem, t, trace, r)? {
                Const::Func(func) => Some(func),
                _ => return None,
            },
            _ => None,
        };
        if let Some(func) = func {
            frames.push(RawFrame { func, link });
            if frames.len() == MAX_INLINED {
                break;
            }
        }
    }
    Some((frames, pc))
}

enum Const {
    Num(u64),
    Func(u64),
    Other,
}

/// IR constant `r` of the trace. In GC64 a 64-bit constant (KNUM, KGC) keeps
/// its value in the whole instruction after it (`ir_knum`, `ir_kgc`).
fn constant<M: Memory>(mem: &M, t: &TraceLayout, trace: &Trace, r: u32) -> Option<Const> {
    if r < trace.nk || r.checked_add(1)? >= t.ref_bias {
        return None;
    }
    let at = trace.ir.wrapping_add(u64::from(r) * t.irins_size);
    let ins = mem.read_bytes(at, usize::try_from(2 * t.irins_size).ok()?)?;
    let op = buf_u8(&ins, t.ir_o)?;
    let value = buf_u64(&ins, t.irins_size)?;
    Some(if op == t.ir_knum {
        Const::Num(value)
    } else if op == t.ir_kgc && buf_u8(&ins, t.ir_t)? & t.irt_mask == t.irt_func {
        Const::Func(value)
    } else {
        Const::Other
    })
}

pub(super) fn buf_u16(buf: &[u8], off: u64) -> Option<u16> {
    let start = usize::try_from(off).ok()?;
    Some(u16::from_ne_bytes(buf.get(start..start.checked_add(2)?)?.try_into().ok()?))
}
