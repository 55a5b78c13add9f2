//! Who holds what: a breadth-first walk from the VM's roots gives every
//! reachable object the nearest path to it and a parent; an object's retained
//! size is what its subtree of that walk holds (an object held from two places
//! counts under the one nearer a root). The same walk folds paths into a
//! small tree of labels for a flame graph of the heap.

use std::collections::{HashMap, VecDeque};

use super::{
    edges::tv_gc,
    label::Names,
    objects::{Kind, Objects, Vm},
};
use crate::lua::Memory;

pub const NONE: u32 = u32::MAX;
/// Paths deeper than this fold into their ancestor at this depth in the graph.
const MAX_DEPTH: usize = 24;
/// A table with more hash slots than this shows its string keys as `[*]`.
const BIG_TABLE: u32 = 256;
/// The label of what no root reaches.
pub const UNREACHED: &str = "(not reached from a root)";

/// One root the walk starts from.
#[derive(Debug, Clone)]
pub struct Root {
    pub name: &'static str,
    pub index: u32,
}

pub struct Graph {
    pub roots: Vec<Root>,
    /// Per object: who reached it first (NONE for roots and the unreached).
    pub parent: Vec<u32>,
    pub reached: Vec<bool>,
    pub retained: Vec<u64>,
    /// Objects in each subtree, the object included.
    pub count: Vec<u32>,
    /// The largest retained size among each object's children.
    pub biggest_child: Vec<u64>,
    /// Labels of the folded path tree, and each object's node in it.
    pub labels: Vec<(u32, String)>,
    pub node: Vec<u32>,
}

/// Label tree nodes: `(parent node, label)`; node 0 is the invisible top.
struct Trie {
    nodes: Vec<(u32, String)>,
    depth: Vec<u16>,
    index: HashMap<(u32, String), u32>,
}

impl Trie {
    fn new() -> Trie {
        Trie { nodes: vec![(NONE, String::new())], depth: vec![0], index: HashMap::new() }
    }

    fn child(&mut self, parent: u32, label: String) -> u32 {
        if label.is_empty() || self.depth[parent as usize] as usize >= MAX_DEPTH {
            return parent;
        }
        if let Some(&n) = self.index.get(&(parent, label.clone())) {
            return n;
        }
        let n = self.nodes.len() as u32;
        self.nodes.push((parent, label.clone()));
        self.depth.push(self.depth[parent as usize] + 1);
        self.index.insert((parent, label), n);
        n
    }
}

impl<M: Memory> Vm<'_, M> {
    /// The VM's roots as `gc_mark_start` marks them, most telling first so
    /// that paths start where a reader looks: the globals, the loaded modules,
    /// the registry, the main coroutine's stack, the VM's own roots.
    pub fn roots(&self, objs: &Objects) -> Vec<Root> {
        let mut roots = Vec::new();
        let mut add = |name, addr: Option<u64>| {
            if let Some(i) = addr.and_then(|a| objs.index(a)) {
                if !roots.iter().any(|r: &Root| r.index == i as u32) {
                    roots.push(Root { name, index: i as u32 });
                }
            }
        };
        let main = objs.mainthread;
        add("_G", self.mem.read_u64(main + self.h.th_env));
        let registry = self.mem.read_u64(self.g + self.h.g_registrytv).and_then(tv_gc);
        add("package.loaded", registry.and_then(|r| self.string_field(r, "_LOADED")));
        add("registry", registry);
        add("main thread", Some(main));
        for i in 0..self.h.gcroot_count {
            add("VM roots", self.mem.read_u64(self.g + self.h.g_gcroot + 8 * i));
        }
        roots
    }

    /// `t[name]` for a table `t` and a string key, if it holds a GC object.
    fn string_field(&self, t: u64, name: &str) -> Option<u64> {
        let l = self.l;
        let node = self.mem.read_u64(t + l.tab_node)?;
        let hmask = self.mem.read_u32(t + l.tab_hmask)?;
        for i in 0..=u64::from(hmask).min(1 << 20) {
            let n = node + i * l.node_size;
            let key = self.mem.read_u64(n + l.node_key)?;
            if tv_gc(key).filter(|_| super::edges::tv_itype(key) == 0xFFFF_FFFB).and_then(|s| crate::lua::gcstr::read_str(self.mem, l, s)).as_deref() == Some(name) {
                return self.mem.read_u64(n + l.node_val).and_then(tv_gc);
            }
        }
        None
    }

    /// Walks from the roots over every reference, then sums subtrees.
    pub fn graph(&self, objs: &Objects, names: &mut Names) -> Graph {
        let n = objs.objs.len();
        let roots = self.roots(objs);
        let mut parent = vec![NONE; n];
        let mut reached = vec![false; n];
        let mut node = vec![0u32; n];
        let mut trie = Trie::new();
        let mut order: Vec<u32> = Vec::with_capacity(n);
        let mut queue = VecDeque::new();
        for r in &roots {
            reached[r.index as usize] = true;
            node[r.index as usize] = trie.child(0, r.name.to_string());
            queue.push_back(r.index);
        }
        while let Some(p) = queue.pop_front() {
            order.push(p);
            let po = objs.objs[p as usize];
            let big = po.kind == Kind::Table && self.mem.read_u32(po.addr + self.l.tab_hmask).unwrap_or(0) >= BIG_TABLE;
            let mut found = Vec::new();
            self.edges(&po, &mut |child, edge| found.push((child, edge)));
            for (child, edge) in found {
                let Some(c) = objs.index(child) else { continue };
                if reached[c] {
                    continue;
                }
                reached[c] = true;
                parent[c] = p;
                let label = names.label(self, &po, edge, false, big);
                node[c] = trie.child(node[p as usize], label);
                queue.push_back(c as u32);
            }
        }
        let unreached = trie.child(0, UNREACHED.to_string());
        for (i, r) in reached.iter().enumerate() {
            if !r {
                node[i] = unreached;
            }
        }
        let mut retained: Vec<u64> = objs.objs.iter().map(|o| u64::from(o.size)).collect();
        let mut count = vec![1u32; n];
        let mut biggest_child = vec![0u64; n];
        for &i in order.iter().rev() {
            let p = parent[i as usize];
            if p != NONE {
                let (r, c) = (retained[i as usize], count[i as usize]);
                retained[p as usize] += r;
                count[p as usize] = count[p as usize].saturating_add(c);
                biggest_child[p as usize] = biggest_child[p as usize].max(r);
            }
        }
        Graph { roots, parent, reached, retained, count, biggest_child, labels: trie.nodes, node }
    }

    /// The path from a root to object `i`, edge by edge as `label` writes them.
    pub fn path(&self, objs: &Objects, g: &Graph, names: &mut Names, i: usize) -> String {
        let mut chain = vec![i];
        while let Some(&last) = chain.last() {
            let p = g.parent[last];
            if p == NONE || chain.len() > 64 {
                break;
            }
            chain.push(p as usize);
        }
        chain.reverse();
        let root = chain[0];
        let mut out = match g.roots.iter().find(|r| r.index as usize == root) {
            Some(r) => r.name.to_string(),
            None => return UNREACHED.to_string(),
        };
        for w in chain.windows(2) {
            let (p, c) = (objs.objs[w[0]], objs.objs[w[1]].addr);
            let mut edge = None;
            self.edges(&p, &mut |child, e| {
                if edge.is_none() && child == c {
                    edge = Some(e);
                }
            });
            match edge {
                Some(e) => out.push_str(&names.label(self, &p, e, true, false)),
                None => out.push_str("<?>"),
            }
        }
        out
    }
}
