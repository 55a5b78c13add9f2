//! From a copy of the heap to the figures `ljprobe heap` reports: counts and
//! bytes by type, strings by length, roots, the biggest holders with their
//! paths, and the heap folded by path for the flame graph.

use std::collections::HashMap;

use serde::Serialize;

use super::snapshot::How;
use crate::lua::{
    heap::{Graph, Kind, Names, Objects, Vm, LEN_CLASSES, NONE},
    Memory, GC_STATES,
};

/// One process's snapshot, as reported.
#[derive(Serialize)]
pub struct HeapReport {
    pub pid: u32,
    pub comm: String,
    pub snapshot: How,
    pub walk_ms: f64,
    pub vm: VmTotals,
    pub walked: Walked,
    pub types: Vec<TypeRow>,
    pub strings_by_length: Vec<LenRow>,
    pub unreached: Counted,
    pub roots: Vec<RootRow>,
    pub biggest: Vec<Holder>,
    /// Paths (root first, the object's type last) with the bytes and the
    /// objects under them.
    #[serde(skip)]
    pub folded: Vec<(Vec<String>, u64, u64)>,
}

/// What the VM itself says, read from the same copy.
#[derive(Serialize)]
pub struct VmTotals {
    /// `gc.total`: every byte the VM has allocated and not freed.
    pub gc_total: u64,
    pub gc_estimate: u64,
    pub gc_state: &'static str,
    /// `str.num`: strings the VM counts.
    pub strings: u32,
    pub string_table_bytes: u64,
    /// `GG_State`, allocated with the VM (the main thread and the JIT state live in it).
    pub vm_state_bytes: u64,
}

#[derive(Serialize)]
pub struct Walked {
    pub objects: u64,
    pub bytes: u64,
    /// (objects + string table + `GG_State`) / `gc.total`: the rest is the
    /// VM's other buffers (the JIT's, string buffers, the FFI's type table).
    pub covered: f64,
    /// Lists that ended on something that was not an object: 0 in a consistent snapshot.
    pub broken_lists: u32,
}

#[derive(Serialize)]
pub struct TypeRow {
    #[serde(rename = "type")]
    pub kind: Kind,
    pub count: u64,
    pub bytes: u64,
}

#[derive(Serialize)]
pub struct LenRow {
    pub min_len: u64,
    pub max_len: u64,
    pub count: u64,
    pub bytes: u64,
}

#[derive(Serialize, Default)]
pub struct Counted {
    pub objects: u64,
    pub bytes: u64,
}

#[derive(Serialize)]
pub struct RootRow {
    pub name: &'static str,
    pub retained_bytes: u64,
    pub objects: u64,
}

#[derive(Serialize)]
pub struct Holder {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Where a Lua function is defined.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub defined: Option<String>,
    pub self_bytes: u64,
    pub retained_bytes: u64,
    pub objects: u64,
    pub address: String,
    #[serde(skip)]
    pub index: usize,
}

/// A holder one of whose children holds this much of what it retains is
/// shown as that child: the table to blame, not the module around it.
const PASS_THROUGH: f64 = 0.9;

/// A walked heap: its objects, who holds them, and the names read on the way.
pub struct Walk {
    pub objs: Objects,
    pub graph: Graph,
    pub names: Names,
}

pub fn walk<M: Memory>(vm: &Vm<'_, M>, gc_total: u64) -> Walk {
    let objs = vm.objects(gc_total);
    let mut names = Names::default();
    let graph = vm.graph(&objs, &mut names);
    Walk { objs, graph, names }
}

pub fn analyse<M: Memory>(vm: &Vm<'_, M>, pid: u32, comm: String, snapshot: How, top: usize) -> HeapReport {
    analyse_walk(vm, pid, comm, snapshot, top).0
}

/// `analyse`, keeping the walk (`ljprobe leak` pairs allocations with it).
pub fn analyse_walk<M: Memory>(vm: &Vm<'_, M>, pid: u32, comm: String, snapshot: How, top: usize) -> (HeapReport, Walk) {
    let started = std::time::Instant::now();
    let gc = vm.gc.read(vm.mem, vm.g);
    let gc_total = gc.map_or(0, |r| r.total);
    let Walk { objs, graph, mut names } = walk(vm, gc_total);
    let mut by_kind: HashMap<Kind, (u64, u64)> = HashMap::new();
    let mut bytes = 0u64;
    let mut unreached = Counted::default();
    for (i, o) in objs.objs.iter().enumerate() {
        let e = by_kind.entry(o.kind).or_default();
        e.0 += 1;
        e.1 += u64::from(o.size);
        bytes += u64::from(o.size);
        if !graph.reached[i] {
            unreached.objects += 1;
            unreached.bytes += u64::from(o.size);
        }
    }
    let types = Kind::ALL
        .iter()
        .map(|&k| {
            let (count, bytes) = by_kind.get(&k).copied().unwrap_or_default();
            TypeRow { kind: k, count, bytes }
        })
        .collect();
    let strings_by_length = (0..LEN_CLASSES)
        .filter(|&c| objs.str_count[c] > 0)
        .map(|c| LenRow {
            min_len: if c == 0 { 0 } else { 1 << c },
            max_len: (1u64 << (c + 1)) - 1,
            count: objs.str_count[c],
            bytes: objs.str_bytes[c],
        })
        .collect();
    // The VM's own roots (metamethod names, base metatables) are one row.
    let mut roots: Vec<RootRow> = Vec::new();
    for r in &graph.roots {
        let (bytes, n) = (graph.retained[r.index as usize], u64::from(graph.count[r.index as usize]));
        match roots.iter_mut().find(|x| x.name == r.name) {
            Some(x) => {
                x.retained_bytes += bytes;
                x.objects += n;
            }
            None => roots.push(RootRow { name: r.name, retained_bytes: bytes, objects: n }),
        }
    }
    let biggest = biggest(vm, &objs, &graph, &mut names, top);
    let folded = fold(&objs, &graph);
    let h = vm.h;
    let vm_totals = VmTotals {
        gc_total,
        gc_estimate: gc.map_or(0, |r| r.estimate),
        gc_state: gc.and_then(|r| GC_STATES.get(usize::from(r.state)).copied()).unwrap_or("unknown"),
        strings: objs.strnum,
        string_table_bytes: objs.strtab_bytes,
        vm_state_bytes: h.gg_size,
    };
    let covered = if gc_total > 0 { (bytes + objs.strtab_bytes + h.gg_size) as f64 / gc_total as f64 } else { 0.0 };
    let report = HeapReport {
        pid,
        comm,
        snapshot,
        walk_ms: started.elapsed().as_secs_f64() * 1e3,
        vm: vm_totals,
        walked: Walked { objects: objs.objs.len() as u64, bytes, covered, broken_lists: objs.broken_lists },
        types,
        strings_by_length,
        unreached,
        roots,
        biggest,
        folded,
    };
    (report, Walk { objs, graph, names })
}

fn biggest<M: Memory>(vm: &Vm<'_, M>, objs: &Objects, g: &Graph, names: &mut Names, top: usize) -> Vec<Holder> {
    let is_root: Vec<bool> = {
        let mut v = vec![false; objs.objs.len()];
        for r in &g.roots {
            v[r.index as usize] = true;
        }
        v
    };
    let mut candidates: Vec<usize> = (0..objs.objs.len())
        .filter(|&i| g.reached[i] && !is_root[i])
        .filter(|&i| (g.biggest_child[i] as f64) < PASS_THROUGH * g.retained[i] as f64)
        .collect();
    candidates.sort_unstable_by_key(|&i| std::cmp::Reverse(g.retained[i]));
    candidates
        .into_iter()
        .take(top)
        .map(|i| {
            let o = objs.objs[i];
            Holder {
                path: vm.path(objs, g, names, i),
                kind: o.kind,
                defined: (o.kind == Kind::LuaFunction).then(|| names.function_place(vm, &o)),
                self_bytes: u64::from(o.size),
                retained_bytes: g.retained[i],
                objects: u64::from(g.count[i]),
                address: format!("{:#x}", o.addr),
                index: i,
            }
        })
        .collect()
}

/// Bytes per (path node, type): each object's own size under the folded path
/// the walk reached it by.
fn fold(objs: &Objects, g: &Graph) -> Vec<(Vec<String>, u64, u64)> {
    let mut sums: HashMap<(u32, Kind), (u64, u64)> = HashMap::new();
    for (i, o) in objs.objs.iter().enumerate() {
        let e = sums.entry((g.node[i], o.kind)).or_default();
        e.0 += u64::from(o.size);
        e.1 += 1;
    }
    sums.into_iter()
        .filter(|&(_, (b, _))| b > 0)
        .map(|((node, kind), (b, count))| {
            let mut path = vec![format!("({})", kind.name())];
            let mut n = node;
            while n != 0 && n != NONE {
                let (parent, label) = &g.labels[n as usize];
                path.push(label.clone());
                n = *parent;
            }
            path.reverse();
            (path, b, count)
        })
        .collect()
}
