//! Port of `lj_debug_slotname` / `debug_varname` and the call-site part of
//! `lj_debug_funcname` (lj_debug.c): how LuaJIT names a called function.

use super::{
    bc::{self, AMode, Mm, Op},
    gcstr::read_str,
    layout::ObjLayout,
    mem::Memory,
    proto::{ProtoDebug, Var},
};

/// MOV copies followed back to the slot's source. Real code copies a function
/// once or twice before calling it; garbage bytecode full of `MOV a, a` would
/// otherwise repeat the varinfo scan once per instruction (quadratic).
pub const MAX_MOV_HOPS: u32 = 64;

/// The `namewhat` LuaJIT reports with a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    Local,
    Global,
    Field,
    Method,
    Upvalue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotName {
    pub kind: SlotKind,
    pub name: String,
}

/// `debug_varname`: the `slot`-th variable live at `pc`.
pub fn varname(vars: &[Var], pc: u32, mut slot: u32) -> Option<&str> {
    for v in vars {
        if v.start > pc {
            break;
        }
        if pc < v.end {
            if slot == 0 {
                return Some(&v.name);
            }
            slot -= 1;
        }
    }
    None
}

/// Name of the function called by the instruction at `pos`, as
/// `lj_debug_funcname` derives it. Metamethod calls are not named.
pub fn call_name<M: Memory>(mem: &M, l: &ObjLayout, dbg: &ProtoDebug, pos: u32) -> Option<SlotName> {
    let ins = *dbg.bc.get(pos as usize)?;
    let op = l.op(ins)?;
    if op.mm() != Mm::Call {
        return None;
    }
    let mut slot = bc::a(ins);
    if op == Op::Iterc {
        // The iterator function sits three slots below ITERC's base.
        slot = slot.checked_sub(3)?;
    }
    slotname(mem, l, dbg, pos, slot)
}

/// `lj_debug_slotname`: what `slot` holds at instruction `pos`, found by
/// walking the bytecode backwards to the instruction that filled it.
pub fn slotname<M: Memory>(mem: &M, l: &ObjLayout, dbg: &ProtoDebug, pos: u32, mut slot: u32) -> Option<SlotName> {
    let bcs = &dbg.bc;
    if pos as usize >= bcs.len() {
        return None;
    }
    let mut ip = pos as usize;
    let mut hops = 0;
    // Each restart continues below the MOV that caused it, so `ip` only
    // decreases: the walk is bounded by `pos` steps (the bytecode read, at
    // most `MAX_PROTO_BYTES`), and the varinfo scans by `MAX_MOV_HOPS`.
    'restart: loop {
        if let Some(name) = varname(dbg.vars(), ip as u32, slot) {
            return Some(SlotName { kind: SlotKind::Local, name: name.to_string() });
        }
        // bc[0] is the function header (FUNCF etc.): never looked at.
        while ip > 1 {
            ip -= 1;
            let ins = *bcs.get(ip)?;
            let op = l.op(ins)?;
            let ra = bc::a(ins);
            match op.a_mode() {
                // A multi-slot write at or below our slot (KNIL: covering it) replaced its value.
                AMode::Base if slot >= ra && (op != Op::Knil || slot <= bc::d(ins)) => return None,
                AMode::Dst if ra == slot => {
                    return match op {
                        Op::Mov => {
                            hops += 1;
                            if hops > MAX_MOV_HOPS {
                                return None;
                            }
                            slot = bc::d(ins);
                            continue 'restart;
                        }
                        Op::Gget => named(SlotKind::Global, kstr(mem, l, dbg, bc::d(ins))),
                        Op::Tgets => {
                            let name = kstr(mem, l, dbg, bc::c(ins));
                            // `obj:m()` copies obj above the callee slot first.
                            let prev = *bcs.get(ip.checked_sub(1)?)?;
                            let is_method = l.op(prev) == Some(Op::Mov)
                                && bc::a(prev) == ra.saturating_add(1).saturating_add(l.fr2)
                                && bc::d(prev) == bc::b(ins);
                            named(if is_method { SlotKind::Method } else { SlotKind::Field }, name)
                        }
                        Op::Uget => named(SlotKind::Upvalue, dbg.uvname(bc::d(ins)).map(str::to_string)),
                        _ => None,
                    };
                }
                _ => {}
            }
        }
        return None;
    }
}

fn named(kind: SlotKind, name: Option<String>) -> Option<SlotName> {
    name.map(|name| SlotName { kind, name })
}

/// String constant `~idx` of the proto.
fn kstr<M: Memory>(mem: &M, l: &ObjLayout, dbg: &ProtoDebug, idx: u32) -> Option<String> {
    read_str(mem, l, dbg.kgc(idx)?)
}
