//! Turns the (func, link) pairs the kernel records per Lua frame into labels.

use std::collections::HashMap;

use super::{
    cache::Cache,
    frame::{RawFrame, FRAME_LUA, FRAME_TYPE, FRAME_TYPEP, FRAME_VARG},
    funcname::{self, SlotName},
    gcstr::chunk_label,
    layout::ObjLayout,
    mem::{buf_u64, buf_u8, Memory},
    proto::{ProtoDebug, ProtoHeader},
    trace::{self, Inlined},
    trace_call::{self, Found, TraceImage},
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LuaFrame {
    /// `line` is where the function is defined (`linedefined`); `at` the line
    /// it is executing, where known (see `resolve_at`).
    Lua { name: Option<String>, file: String, line: u32, at: Option<u32> },
    /// `addr` is the C entry point (`GCfuncC.f`).
    C { addr: u64, name: Option<String> },
    /// A fast function (`ffid` > 1), e.g. `pairs` or `string.gsub`.
    Builtin { ffid: u8, name: Option<String> },
}

/// The file of a Lua frame whose proto or chunkname cannot be read, and of a
/// frame whose GCfunc cannot be read (freed since the sample, or a bad walk).
pub const UNKNOWN_FILE: &str = "?";

/// A proto's file and definition line, and an instruction in it with its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub file: String,
    pub line: u32,
    pub pos: Option<u32>,
    pub at: Option<u32>,
}

/// A bytecode address and what it means: `Past` an instruction (a return
/// address, the interpreter's PC register) or `At` one (a snapshot's PC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pc {
    Past(u64),
    At(u64),
}

const DEFAULT_MAX_PROTOS: usize = 8192;
const DEFAULT_MAX_BYTES: usize = 64 << 20;
/// Call sites remembered per proto; a hot proto has few, garbage could make many.
const MAX_SITES: usize = 1024;

enum Func {
    Lua { proto: u64 },
    C { addr: u64 },
    Builtin { ffid: u8 },
}

struct ProtoEntry {
    header: ProtoHeader,
    file: String,
    line: u32,
    /// None when the colocated arrays could not be read: no call-site names.
    debug: Option<ProtoDebug>,
    sites: HashMap<u32, Option<SlotName>>,
}

/// Labels frames of one process. Protos are cached by address: a proto freed
/// and its address reused by another keeps the old label until evicted.
pub struct Resolver<M: Memory> {
    mem: M,
    layout: ObjLayout,
    protos: Cache<ProtoEntry>,
    /// Per (G, trace number): the trace object it was read from and its image.
    traces: HashMap<(u64, u32), (u64, Option<TraceImage>)>,
    /// Per (G, trace object, return address): where its FFI call was made.
    calls: HashMap<(u64, u64, u64), Found>,
}

/// Traces and call sites remembered per process before the caches start over:
/// a long run that compiles new traces keeps its memory bounded.
const MAX_TRACES: usize = 4096;
const MAX_CALLS: usize = 1 << 16;

impl<M: Memory> Resolver<M> {
    pub fn with_layout(mem: M, layout: ObjLayout) -> Self {
        Self::with_cache_limits(mem, layout, DEFAULT_MAX_PROTOS, DEFAULT_MAX_BYTES)
    }

    /// Limits are per cache generation (see `Cache`): up to twice as much is held.
    pub fn with_cache_limits(mem: M, layout: ObjLayout, max_protos: usize, max_bytes: usize) -> Self {
        Self { mem, layout, protos: Cache::new(max_protos, max_bytes), traces: HashMap::new(), calls: HashMap::new() }
    }

    pub fn memory(&self) -> &M {
        &self.mem
    }

    pub fn layout(&self) -> &ObjLayout {
        &self.layout
    }

    pub fn cached_protos(&self) -> usize {
        self.protos.len()
    }

    /// One label per frame, in input order, except that a vararg pseudo-frame
    /// followed by its function's real frame yields one label, as in LuaJIT.
    pub fn resolve(&mut self, frames: &[RawFrame]) -> Vec<LuaFrame> {
        self.resolve_frames(frames, None, false)
    }

    /// `resolve`, with the line each Lua frame is executing: for a frame that
    /// called another, the line of that call (the callee's link is the return
    /// PC); for the innermost, the line of `innermost` (the interpreter's PC
    /// register, or a snapshot's PC inside a trace) when it lies in its bytecode.
    pub fn resolve_at(&mut self, frames: &[RawFrame], innermost: Option<Pc>) -> Vec<LuaFrame> {
        self.resolve_frames(frames, innermost, true)
    }

    fn resolve_frames(&mut self, frames: &[RawFrame], innermost: Option<Pc>, lines: bool) -> Vec<LuaFrame> {
        let mut out = Vec::with_capacity(frames.len());
        // Where the frame being labelled stands: the return PC its callee left,
        // and how to read it (past the call, or at the instruction itself).
        let mut here = innermost;
        for (i, frame) in frames.iter().enumerate() {
            let outer = frames.get(i + 1);
            let next = (frame.link & FRAME_TYPE == FRAME_LUA).then_some(Pc::Past(frame.link));
            if frame.link & FRAME_TYPEP == FRAME_VARG && outer.is_some_and(|o| o.func == frame.func) {
                // The real frame of the same function comes next: it stands
                // where this pseudo-frame does.
                continue;
            }
            // Only a Lua caller leaves a call instruction to name us by; the
            // caller is the next frame out (or its vararg pseudo-frame: same func).
            let name = match outer {
                Some(o) if frame.link & FRAME_TYPE == FRAME_LUA => self.caller_name(o.func, frame.link),
                _ => None,
            };
            let at = here.filter(|_| lines).and_then(|pc| self.line_at(frame.func, pc));
            out.push(self.label(frame.func, name.map(|n| n.name), at));
            here = next;
        }
        out
    }

    /// The line of `pc` in the Lua function `func`, if it lies in its bytecode.
    fn line_at(&mut self, func: u64, pc: Pc) -> Option<u32> {
        let proto = self.func_proto(func)?;
        let layout = self.layout;
        let entry = self.entry(proto)?;
        let pos = match pc {
            Pc::Past(pc) => entry.header.call_pos(&layout, pc)?,
            Pc::At(pc) => entry.header.call_pos(&layout, pc.checked_add(layout.bcins_size)?)?,
        };
        entry.debug.as_ref()?.line(pos)
    }

    /// The Lua frames trace `traceno` has inlined above its root frame at the first of `addrs`
    /// that lies in its machine code, innermost first, as frames `resolve` can name (prepend them to
    /// the frames walked from `jit_base`). Empty when no address is in the trace or anything reads wrong.
    ///
    /// `g` is the `global_State`. `addrs` are taken as return addresses (words of the thread's
    /// stack); a sampled instruction pointer works too, give or take one instruction. The frames
    /// are those of the snapshot covering the address, i.e. where LuaJIT would resume the
    /// interpreter if the trace exited there (see `trace.rs` for what that can miss). A frame
    /// whose function the trace did not specialise to a constant is left out.
    pub fn inlined_frames(&mut self, g: u64, traceno: u32, addrs: &[u64]) -> Vec<RawFrame> {
        self.inlined_at(g, traceno, addrs).map(|i| i.frames).unwrap_or_default()
    }

    /// `inlined_frames` with where they were found: the address used and its snapshot.
    pub fn inlined_at(&mut self, g: u64, traceno: u32, addrs: &[u64]) -> Option<Inlined> {
        trace::inlined_frames(&self.mem, &self.layout, g, traceno, addrs)
    }

    /// Which Lua frames were live where trace `traceno` called a C function
    /// that returns to `ret` (the trace's root frame runs `root`): see
    /// `trace_call.rs`. Cached per call site, so a hot one costs two reads.
    pub fn ffi_call(&mut self, g: u64, traceno: u32, ret: u64, root: u64) -> Found {
        let Some(trace) = self.trace_object(g, traceno) else { return Found::NotFfi };
        if let Some(found) = self.calls.get(&(g, trace, ret)) {
            return found.clone();
        }
        let stale = self.traces.get(&(g, traceno)).is_none_or(|(t, _)| *t != trace);
        if stale {
            if self.traces.len() >= MAX_TRACES {
                self.traces.clear();
            }
            let image = TraceImage::read(&self.mem, &self.layout, g, traceno);
            self.traces.insert((g, traceno), (trace, image));
        }
        let found = match self.traces.get(&(g, traceno)) {
            Some((_, Some(image))) => trace_call::frames_at(&self.mem, &self.layout, image, root, ret),
            _ => Found::NotFfi,
        };
        if self.calls.len() >= MAX_CALLS {
            self.calls.clear();
        }
        self.calls.insert((g, trace, ret), found.clone());
        found
    }

    /// The GCtrace object trace `traceno` is now: a flushed and recompiled
    /// trace number is another object.
    fn trace_object(&self, g: u64, traceno: u32) -> Option<u64> {
        let t = &self.layout.trace;
        // Traces are read as GC64 builds lay out their IR (64-bit constants
        // in the next instruction); elsewhere a trace keeps its inlined
        // frames to itself rather than have them made up.
        if self.layout.gcref_size != 8 {
            return None;
        }
        let traces = self.mem.read_u64(g.checked_add(t.g2j)?.checked_add(t.j_trace)?)?;
        let slot = traces.checked_add(u64::from(traceno).checked_mul(self.layout.gcref_size)?)?;
        self.mem.read_u64(slot).filter(|&a| a != 0)
    }

    /// The GCproto of a Lua function.
    pub fn func_proto(&self, func: u64) -> Option<u64> {
        match self.read_func(func)? {
            Func::Lua { proto } => Some(proto),
            _ => None,
        }
    }

    /// A function as LuaJIT's `jit.v` names one in a message: a Lua
    /// function by its `file:line`, a fast function by its name, a C
    /// function by its address.
    pub fn func_label(&mut self, func: u64) -> Option<String> {
        match self.read_func(func)? {
            Func::Lua { proto } => self.place(proto, None).map(|p| format!("{}:{}", p.file, p.line)),
            Func::C { addr } => Some(format!("C:{addr:x}")),
            Func::Builtin { ffid } => self.layout.fast_function(ffid).map(str::to_string),
        }
    }

    /// A copy of a proto's bytecode (`bc[0]` is the FUNCF-style header).
    pub fn bytecode(&mut self, proto: u64) -> Option<Vec<u32>> {
        Some(self.entry(proto)?.debug.as_ref()?.bc.clone())
    }

    /// Where a proto is: its file and first line, and the line of the
    /// instruction at `pc` (an address inside its bytecode) if given; the
    /// index of that instruction too.
    pub fn place(&mut self, proto: u64, pc: Option<u64>) -> Option<Place> {
        let l = self.layout;
        let entry = self.entry(proto)?;
        let pos = pc.and_then(|pc| {
            let off = pc.checked_sub(entry.header.bc_start(&l))?;
            (off % l.bcins_size == 0 && off / l.bcins_size < u64::from(entry.header.sizebc))
                .then(|| u32::try_from(off / l.bcins_size).ok())
                .flatten()
        });
        let at = pos.and_then(|p| entry.debug.as_ref()?.line(p));
        Some(Place { file: entry.file.clone(), line: entry.line, pos, at })
    }

    /// `lj_debug_slotname` for `slot` at instruction `pos` of `proto`.
    pub fn slotname(&mut self, proto: u64, pos: u32, slot: u32) -> Option<SlotName> {
        let layout = self.layout;
        let entry = load_entry(&mut self.protos, &self.mem, &layout, proto)?;
        funcname::slotname(&self.mem, &layout, entry.debug.as_ref()?, pos, slot)
    }

    /// Name of the function called by the instruction at `pos` of `proto`.
    pub fn call_name(&mut self, proto: u64, pos: u32) -> Option<SlotName> {
        let layout = self.layout;
        let entry = load_entry(&mut self.protos, &self.mem, &layout, proto)?;
        if let Some(hit) = entry.sites.get(&pos) {
            return hit.clone();
        }
        let name = funcname::call_name(&self.mem, &layout, entry.debug.as_ref()?, pos);
        if entry.sites.len() >= MAX_SITES {
            entry.sites.clear();
        }
        entry.sites.insert(pos, name.clone());
        name
    }

    fn caller_name(&mut self, caller: u64, ret_pc: u64) -> Option<SlotName> {
        let proto = self.func_proto(caller)?;
        let layout = self.layout;
        let pos = self.entry(proto)?.header.call_pos(&layout, ret_pc)?;
        self.call_name(proto, pos)
    }

    fn label(&mut self, func: u64, name: Option<String>, at: Option<u32>) -> LuaFrame {
        let unknown = |name| LuaFrame::Lua { name, file: UNKNOWN_FILE.to_string(), line: 0, at: None };
        match self.read_func(func) {
            None => unknown(name),
            Some(Func::C { addr }) => LuaFrame::C { addr, name },
            // Without a call-site name (called from C: a callback of gsub,
            // a metamethod), the build's own name of the fast function.
            Some(Func::Builtin { ffid }) => {
                LuaFrame::Builtin { ffid, name: name.or_else(|| self.layout.fast_function(ffid).map(str::to_string)) }
            }
            Some(Func::Lua { proto }) => match self.entry(proto) {
                Some(e) => LuaFrame::Lua { name, file: e.file.clone(), line: e.line, at },
                None => unknown(name),
            },
        }
    }

    fn read_func(&self, func: u64) -> Option<Func> {
        let l = &self.layout;
        if func == 0 {
            return None;
        }
        let buf = self.mem.read_bytes(func, l.func_read)?;
        if buf_u8(&buf, l.gct)? != l.gct_func {
            return None;
        }
        let ffid = buf_u8(&buf, l.func_ffid)?;
        Some(if ffid == l.ffid_lua {
            Func::Lua { proto: l.buf_ref(&buf, l.func_pc)?.checked_sub(l.proto_size)? }
        } else if ffid == l.ffid_c {
            Func::C { addr: buf_u64(&buf, l.func_cfunc)? }
        } else {
            Func::Builtin { ffid }
        })
    }

    fn entry(&mut self, proto: u64) -> Option<&mut ProtoEntry> {
        load_entry(&mut self.protos, &self.mem, &self.layout, proto)
    }
}

fn load_entry<'c, M: Memory>(
    protos: &'c mut Cache<ProtoEntry>,
    mem: &M,
    l: &ObjLayout,
    proto: u64,
) -> Option<&'c mut ProtoEntry> {
    protos.get_or_load(proto, || {
        let header = ProtoHeader::read(mem, l, proto)?;
        let file = chunk_label(mem, l, header.chunkname, header.firstline).unwrap_or_else(|| UNKNOWN_FILE.to_string());
        let line = u32::try_from(header.firstline).unwrap_or(0);
        let debug = ProtoDebug::read(mem, l, &header);
        let weight = 256 + file.len() + debug.as_ref().map_or(0, ProtoDebug::weight);
        Some((ProtoEntry { header, file, line, debug, sites: HashMap::new() }, weight))
    })
}
