//! The trace compiler's own state (`jit_State`, lj_jit.h), read live: the
//! traces alive, the penalty cache of recent aborts, whether the JIT is on,
//! and which bytecode it gave up on (blacklisted: patched to the
//! interpreter-only variant). Like everything in `lua`, each read is checked
//! and a value that does not fit gives nothing rather than a guess.

use ljprobe_common::jit::JitLayout;

use super::{
    bc::Op,
    layout::ObjLayout,
    mem::{buf_u32, buf_u64, buf_u8, Memory},
    proto::ProtoHeader,
    trace::{self, buf_u16, Trace, MAX_TRACES},
};

/// Where one build keeps the compiler's state beyond what the kernel reads.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JitStateLayout {
    /// What `probes-ebpf/src/jit.rs` reads.
    pub probe: JitLayout,
    /// `jit_State.flags` (u32) and `JIT_F_ON`.
    pub j_flags: u64,
    pub jit_f_on: u32,
    /// `jit_State.penalty[PENALTY_SLOTS]`: `{ MRef pc; uint16_t val; uint16_t reason; }`.
    pub j_penalty: u64,
    pub penalty_slots: u64,
    pub penalty_size: u64,
    pub penalty_val: u64,
    pub penalty_reason: u64,
    /// `GCtrace` fields beside `TraceLayout`'s: where it started, what it
    /// links to and how, its root trace (0 for a root trace).
    pub trace_startpt: u64,
    pub trace_startpc: u64,
    pub trace_link: u64,
    pub trace_root: u64,
    pub trace_linktype: u64,
    /// `GCproto.flags` and its `PROTO_NOJIT` (`jit.off(f)`) and `PROTO_ILOOP`
    /// (bytecode patched by blacklisting) bits.
    pub proto_flags: u64,
    pub proto_nojit: u8,
    pub proto_iloop: u8,
}

/// One trace alive in the VM.
#[derive(Debug, Clone)]
pub struct TraceInfo {
    pub traceno: u32,
    /// The root trace of a side trace; 0 for a root trace.
    pub root: u32,
    /// The trace it continues in (itself for a loop, 0 for none).
    pub link: u32,
    pub linktype: u8,
    /// IR instructions and constants, as `jit.util.traceinfo` counts them.
    pub ir_ins: u32,
    pub ir_consts: u32,
    pub mcode_bytes: u32,
    pub startpt: u64,
    pub startpc: u64,
    /// The bytecode its last snapshot resumes at: where it ends.
    pub endpc: Option<u64>,
    /// Its snapshots, i.e. exit numbers `0..snapshots`.
    pub snapshots: u64,
}

/// Whether the `jit_State` next to `g` reads as one: its state machine in a
/// known state (`LJ_TRACE_IDLE`, or `LJ_TRACE_ACTIVE` up to `LJ_TRACE_ERR`)
/// and its trace array no larger than trace numbers go.
pub fn fits<M: Memory>(mem: &M, l: &ObjLayout, jl: &JitStateLayout, g: u64) -> bool {
    let Some(j) = g.checked_add(l.trace.g2j) else {
        return false;
    };
    let state = mem.read_u32(j + u64::from(jl.probe.j_state));
    let size = mem.read_u32(j + l.trace.j_sizetrace);
    matches!(state, Some(0 | 0x10..=0x16)) && size.is_some_and(|n| n <= MAX_TRACES)
}

/// Whether the JIT compiler is on (`jit.on()` / `jit.off()`).
pub fn enabled<M: Memory>(mem: &M, l: &ObjLayout, jl: &JitStateLayout, g: u64) -> Option<bool> {
    let flags = mem.read_u32(g.checked_add(l.trace.g2j)?.checked_add(jl.j_flags)?)?;
    Some(flags & jl.jit_f_on != 0)
}

/// Every trace in the VM's trace array, by number.
pub fn traces<M: Memory>(mem: &M, l: &ObjLayout, jl: &JitStateLayout, g: u64) -> Vec<TraceInfo> {
    traces_inner(mem, l, jl, g).unwrap_or_default()
}

fn traces_inner<M: Memory>(mem: &M, l: &ObjLayout, jl: &JitStateLayout, g: u64) -> Option<Vec<TraceInfo>> {
    let t = &l.trace;
    let j = g.checked_add(t.g2j)?;
    let array = mem.read_u64(j.checked_add(t.j_trace)?)?;
    let size = mem.read_u32(j.checked_add(t.j_sizetrace)?)?;
    if size > MAX_TRACES {
        return None;
    }
    let refs = mem.read_bytes(array, usize::try_from(u64::from(size) * l.gcref_size).ok()?)?;
    let mut out = Vec::new();
    for traceno in 1..size {
        let addr = buf_u64(&refs, u64::from(traceno) * l.gcref_size)?;
        if addr == 0 {
            continue;
        }
        if let Some((info, _)) = trace_info(mem, l, jl, traceno, addr) {
            out.push(info);
        }
    }
    Some(out)
}

fn trace_info<M: Memory>(mem: &M, l: &ObjLayout, jl: &JitStateLayout, traceno: u32, addr: u64) -> Option<(TraceInfo, Trace)> {
    let (trace, buf) = trace::trace_at(mem, l, addr, traceno)?;
    let u16_at = |off| buf_u16(&buf, off).map(u32::from);
    let bias = l.trace.ref_bias;
    let info = TraceInfo {
        traceno,
        root: u16_at(jl.trace_root)?,
        link: u16_at(jl.trace_link)?,
        linktype: buf_u8(&buf, jl.trace_linktype)?,
        ir_ins: trace.nins - bias - 1,
        ir_consts: bias - trace.nk,
        mcode_bytes: u32::try_from(trace.szmcode).ok()?,
        startpt: buf_u64(&buf, jl.trace_startpt)?,
        startpc: buf_u64(&buf, jl.trace_startpc)?,
        endpc: trace::resume_pc(mem, l, &trace, trace.nsnap - 1),
        snapshots: trace.nsnap,
    };
    Some((info, trace))
}

/// Trace `traceno` and where the interpreter resumes after its exit
/// `exitno` (None past its snapshots: the stack check's exit number).
pub fn trace_exit<M: Memory>(mem: &M, l: &ObjLayout, jl: &JitStateLayout, g: u64, traceno: u32, exitno: u32) -> Option<(TraceInfo, Option<u64>)> {
    let j = g.checked_add(l.trace.g2j)?;
    let array = mem.read_u64(j.checked_add(l.trace.j_trace)?)?;
    let size = mem.read_u32(j.checked_add(l.trace.j_sizetrace)?)?;
    if traceno == 0 || traceno >= size {
        return None;
    }
    let addr = mem.read_u64(array.checked_add(u64::from(traceno) * l.gcref_size)?)?;
    let (info, trace) = trace_info(mem, l, jl, traceno, addr)?;
    let pc = trace::resume_pc(mem, l, &trace, u64::from(exitno));
    Some((info, pc))
}

/// One slot of the penalty cache: a trace start (`pc`) that aborted, how
/// long the VM now waits before trying again there, and the last reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Penalty {
    pub pc: u64,
    pub val: u16,
    pub reason: u16,
}

pub fn penalties<M: Memory>(mem: &M, l: &ObjLayout, jl: &JitStateLayout, g: u64) -> Vec<Penalty> {
    let Some(at) = g.checked_add(l.trace.g2j).and_then(|j| j.checked_add(jl.j_penalty)) else {
        return Vec::new();
    };
    let Some(buf) = usize::try_from(jl.penalty_slots * jl.penalty_size).ok().and_then(|n| mem.read_bytes(at, n)) else {
        return Vec::new();
    };
    (0..jl.penalty_slots)
        .filter_map(|i| {
            let s = i * jl.penalty_size;
            let p = Penalty { pc: buf_u64(&buf, s)?, val: buf_u16(&buf, s + jl.penalty_val)?, reason: buf_u16(&buf, s + jl.penalty_reason)? };
            (p.pc != 0).then_some(p)
        })
        .collect()
}

/// The opcodes LuaJIT patches a loop or function to when it blacklists it
/// (`blacklist_pc`: the op plus one), or that a function has from the start
/// when the JIT is off for it.
pub fn interpreter_only(op: Op) -> bool {
    matches!(op, Op::Iforl | Op::Iiterl | Op::Iloop | Op::Ifuncf | Op::Ifuncv)
}

/// The interpreter-only instructions of a proto's bytecode, by index.
pub fn interpreter_only_at(l: &ObjLayout, bc: &[u32]) -> Vec<(u32, Op)> {
    bc.iter()
        .enumerate()
        .filter_map(|(i, &ins)| {
            let op = l.op(ins)?;
            interpreter_only(op).then_some((u32::try_from(i).ok()?, op))
        })
        .collect()
}

/// The interpreter-only instructions of the proto at `proto`, read now
/// (blacklisting patches bytecode in place, so no cached copy will do).
pub fn interpreter_only_in<M: Memory>(mem: &M, l: &ObjLayout, proto: u64) -> Option<Vec<(u32, Op)>> {
    let h = ProtoHeader::read(mem, l, proto)?;
    let bytes = mem.read_bytes(h.bc_start(l), usize::try_from(u64::from(h.sizebc) * l.bcins_size).ok()?)?;
    let bc: Vec<u32> = bytes.chunks_exact(4).filter_map(|c| c.try_into().ok()).map(u32::from_ne_bytes).collect();
    Some(interpreter_only_at(l, &bc))
}

/// `GCproto.flags` of the proto at `proto`.
pub fn proto_flags<M: Memory>(mem: &M, jl: &JitStateLayout, proto: u64) -> Option<u8> {
    mem.read_u8(proto.checked_add(jl.proto_flags)?)
}

/// Bytes looked back from a PC for its proto's header: a proto's bytecode is
/// rarely longer (a 64 KiB function has ~16k instructions).
const PROTO_SEARCH: u64 = 64 << 10;
/// Read a page at a time: a proto near the start of its mapping must not
/// fail for the unmapped bytes a larger read would cross.
const PAGE: u64 = 4096;

/// The proto whose bytecode holds `pc`: the header lies right before the
/// first instruction, which is a function header op (`FUNCF`, `FUNCV` or
/// their variants). Found by looking back from `pc`, checked as a proto.
pub fn proto_of_pc<M: Memory>(mem: &M, l: &ObjLayout, pc: u64) -> Option<u64> {
    if !pc.is_multiple_of(l.bcins_size) || pc < l.proto_size {
        return None;
    }
    let lowest = pc.saturating_sub(PROTO_SEARCH).max(l.proto_size);
    let mut at = pc;
    let mut page_end = pc + l.bcins_size;
    while at >= lowest {
        let page_start = (at & !(PAGE - 1)).max(lowest & !(l.bcins_size - 1));
        let page = mem.read_bytes(page_start, usize::try_from(page_end - page_start).ok()?)?;
        while at >= page_start {
            let ins = buf_u32(&page, at - page_start)?;
            if matches!(l.op(ins), Some(Op::Funcf | Op::Ifuncf | Op::Jfuncf | Op::Funcv | Op::Ifuncv | Op::Jfuncv)) {
                let proto = at - l.proto_size;
                let is_proto = mem.read_u8(proto + l.gct) == Some(l.gct_proto);
                if let Some(h) = ProtoHeader::read(mem, l, proto).filter(|_| is_proto) {
                    if pc < h.bc_start(l) + u64::from(h.sizebc) * l.bcins_size {
                        return Some(proto);
                    }
                }
            }
            at = at.checked_sub(l.bcins_size)?;
        }
        page_end = page_start;
    }
    None
}
