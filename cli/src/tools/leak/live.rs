//! Which allocations of the run are still live at its end: each address the
//! allocator returned in the recorded seconds is looked up in the end
//! snapshot; it is live when a reachable object (or a reachable table's array or hash part) of the
//! same size starts there. Each live one is charged to the stack that made it
//! and to the holder that keeps it: its nearest ancestor among the snapshot's
//! biggest holders. What only a coroutine's stack holds is in use by code
//! that is running or suspended (a request in flight), not left behind: it
//! is counted apart.

use std::collections::HashMap;

use ljprobe_common::AllocAddr;
use ljprobe_flamegraph::{Folded, Frame};

use crate::{
    lua::{
        heap::{Kind, Vm, NONE},
        Memory,
    },
    stacks::culprit_frame,
    tools::{alloc::tally::Tally, heap::analysis::{HeapReport, Walk}},
};

/// One process's end snapshot, ready for lookups.
pub struct End<'a, M: Memory> {
    pub vm: Vm<'a, M>,
    pub walk: Walk,
    pub report: HeapReport,
    /// Table parts (array or hash) by address: (table index, bytes).
    parts: HashMap<u64, (usize, u64)>,
    /// Holder index -> its path.
    holders: HashMap<usize, String>,
}

impl<'a, M: Memory> End<'a, M> {
    pub fn new(vm: Vm<'a, M>, walk: Walk, report: HeapReport) -> Self {
        let (l, h) = (vm.l, vm.h);
        let mut parts = HashMap::new();
        for (i, o) in walk.objs.objs.iter().enumerate() {
            if o.kind != Kind::Table || !walk.graph.reached[i] {
                continue;
            }
            let read = |off: u64| vm.mem.read_u64(o.addr + off);
            let colo = vm.mem.read_u8(o.addr + h.tab_colo).unwrap_or(0) as i8;
            let asize = vm.mem.read_u32(o.addr + h.tab_asize).unwrap_or(0);
            let hmask = vm.mem.read_u32(o.addr + l.tab_hmask).unwrap_or(0);
            if asize > 0 && colo <= 0 {
                if let Some(a) = read(h.tab_array) {
                    parts.insert(a, (i, u64::from(asize) * h.tvalue_size));
                }
            }
            if hmask > 0 {
                if let Some(n) = read(l.tab_node) {
                    parts.insert(n, (i, (u64::from(hmask) + 1) * l.node_size));
                }
            }
        }
        let holders = report.biggest.iter().map(|b| (b.index, b.path.clone())).collect();
        End { vm, walk, report, parts, holders }
    }

    /// The reachable object (or the table owning the part) that the block
    /// of `bytes` at `addr` still is, if any.
    fn live(&self, addr: u64, bytes: u64) -> Option<usize> {
        if let Some(i) = self.walk.objs.index(addr) {
            let o = self.walk.objs.objs[i];
            return (self.walk.graph.reached[i] && u64::from(o.size) == bytes).then_some(i);
        }
        self.parts.get(&addr).filter(|&&(_, size)| size == bytes).map(|&(t, _)| t)
    }

    /// Held through a coroutine's stack (a request's, or the main thread's):
    /// in use by code that runs or will run again, not left behind.
    fn on_a_stack(&self, i: usize) -> bool {
        let mut at = i;
        for _ in 0..256 {
            if self.walk.objs.objs[at].kind == Kind::Thread {
                return true;
            }
            let p = self.walk.graph.parent[at];
            if p == NONE {
                return false;
            }
            at = p as usize;
        }
        false
    }

    /// The path of the holder that keeps object `i`: its nearest ancestor
    /// among the biggest holders, else its parent.
    fn holder(&mut self, i: usize) -> String {
        let mut at = i;
        for _ in 0..64 {
            if let Some(p) = self.holders.get(&at) {
                return p.clone();
            }
            let p = self.walk.graph.parent[at];
            if p == NONE {
                break;
            }
            at = p as usize;
        }
        let parent = self.walk.graph.parent[i];
        let at = if parent == NONE { i } else { parent as usize };
        let path = self.vm.path(&self.walk.objs, &self.walk.graph, &mut self.walk.names, at);
        self.holders.insert(at, path.clone());
        path
    }
}

/// Live bytes made by one function (the innermost Lua frame of the stacks).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Maker {
    pub function: String,
    pub bytes: f64,
    pub objects: f64,
    /// Who holds them, biggest first: (path, bytes).
    pub holders: Vec<(String, f64)>,
}

pub struct Paired {
    /// Live bytes by allocation stack, with the holder on top.
    pub by_bytes: Folded,
    pub by_count: Folded,
    pub makers: Vec<Maker>,
    pub live_bytes: f64,
    pub live_objects: f64,
    /// Live, but held only through a coroutine's stack: not counted above.
    pub on_stacks_bytes: f64,
    /// Addresses recorded, and those found live.
    pub recorded: u64,
    pub found_live: u64,
}

/// Pairs the recorded addresses with the end snapshots (`ends` by PID);
/// every live one stands for `scale` of its kind.
pub fn pair<M: Memory>(events: &[AllocAddr], ends: &mut HashMap<u32, End<'_, M>>, tally: &Tally, scale: f64) -> Paired {
    let unknown = [Frame::Vm("[stack not received]".into())];
    let mut out = Paired {
        by_bytes: Folded::default(),
        by_count: Folded::default(),
        makers: Vec::new(),
        live_bytes: 0.0,
        live_objects: 0.0,
        on_stacks_bytes: 0.0,
        recorded: events.len() as u64,
        found_live: 0,
    };
    let mut makers: HashMap<String, (f64, f64, HashMap<String, f64>)> = HashMap::new();
    let several = ends.len() > 1;
    // A block freed and its address given out again: only the last
    // allocation at an address can be what lives there (one thread's events
    // arrive in order).
    let mut seen = std::collections::HashSet::new();
    for e in events.iter().rev() {
        // Made after the copy: not in it.
        let after = ends.get(&e.pid).is_some_and(|end| e.ns > end.report.snapshot.stopped_at_ns);
        if after || !seen.insert((e.pid, e.addr)) {
            continue;
        }
        let Some(end) = ends.get_mut(&e.pid) else { continue };
        let Some(i) = end.live(e.addr, u64::from(e.bytes)) else { continue };
        out.found_live += 1;
        if end.on_a_stack(i) {
            out.on_stacks_bytes += f64::from(e.bytes) * scale;
            continue;
        }
        let holder = end.holder(i);
        let stack = tally.stack(e.key).unwrap_or(&unknown);
        let (b, n) = (f64::from(e.bytes) * scale, scale);
        let mut frames = Vec::with_capacity(stack.len() + 2);
        if several {
            frames.push(Frame::Vm(format!("worker {}", e.pid)));
        }
        frames.extend_from_slice(stack);
        frames.push(Frame::Vm(format!("held by {holder}")));
        out.by_bytes.add(&frames, b.round() as u64);
        out.by_count.add(&frames, n.round() as u64);
        out.live_bytes += b;
        out.live_objects += n;
        let m = makers.entry(culprit_frame(stack).label()).or_default();
        m.0 += b;
        m.1 += n;
        *m.2.entry(holder).or_default() += b;
    }
    out.makers = makers
        .into_iter()
        .map(|(function, (bytes, objects, holders))| {
            let mut holders: Vec<(String, f64)> = holders.into_iter().collect();
            holders.sort_by(|a, b| b.1.total_cmp(&a.1));
            Maker { function, bytes, objects, holders }
        })
        .collect();
    out.makers.sort_by(|a, b| b.bytes.total_cmp(&a.bytes));
    out
}
