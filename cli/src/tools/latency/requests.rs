//! The requests as they end: grouped (by location, URI or status), their
//! times kept for percentiles, their parts summed, the slowest kept whole.
//! Stacks arrive while a request runs and are held until it ends.

use std::collections::{BTreeMap, HashMap};

use ljprobe_common::{
    latency::{LatEnd, LatHead, LatStack, KIND_BLOCKED, KIND_CPU, KIND_PREEMPTED, LAT_END, LAT_KINDS, LAT_PHASES, LAT_NO_MS, LAT_OFF_CPU, LAT_ON_CPU, LAT_SLOTS, REQ_NGINX_START},
    STACK_NOT_IN_LUA, STACK_NO_VM,
};
use ljprobe_flamegraph::{Frame, Log2Histogram};

use crate::stacks::{culprit_frame, wait_frame, StackBuilder};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupBy {
    Location,
    Uri,
    Status,
}

/// What the stacks of one running request said.
#[derive(Default)]
struct Held {
    lua_samples: u64,
    c_samples: u64,
    /// Time on the worker (sampled on the CPU, or blocked) per innermost Lua
    /// function, and per phase and innermost Lua function.
    by_function: HashMap<Frame, u64>,
    by_phase: HashMap<(u32, Frame), u64>,
}

/// One request that ended.
pub struct Request {
    pub worker: u32,
    pub method: String,
    pub uri: String,
    pub location: String,
    pub status: u32,
    pub total_ns: u64,
    pub ns: [u64; LAT_SLOTS],
    pub lua_samples: u64,
    pub c_samples: u64,
    /// The function that held most of its time on the worker, and that time.
    pub held_by: Option<(Frame, u64)>,
    /// nginx's own timings of its last upstream try, ms.
    pub upstream: Option<Upstream>,
}

#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Upstream {
    pub tries: u32,
    pub connect_ms: Option<u64>,
    pub header_ms: Option<u64>,
    pub response_ms: Option<u64>,
}

#[derive(Default)]
pub struct Group {
    pub latencies_ns: Vec<u64>,
    pub hist: Log2Histogram,
    pub ns: [u64; LAT_SLOTS],
    pub lua_samples: u64,
    pub c_samples: u64,
    /// Sums over the requests with an upstream timing of each kind, and how many.
    pub upstream_ms: [(u64, u64); 3],
    /// Per phase, the time its stacks stood for, per innermost Lua function:
    /// which Lua code each phase ran.
    pub lua_by_phase: HashMap<(u32, Frame), u64>,
}

impl Group {
    pub fn count(&self) -> u64 {
        self.latencies_ns.len() as u64
    }

    /// The q-quantile (nearest rank) of the sorted latencies.
    pub fn quantile_ns(&self, q: f64) -> u64 {
        let n = self.latencies_ns.len();
        if n == 0 {
            return 0;
        }
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        self.latencies_ns[rank - 1]
    }
}

pub struct Requests {
    builder: StackBuilder,
    by: GroupBy,
    min_ns: u64,
    slowest_kept: usize,
    /// Requests that began before the probes were all in place are left out.
    attached_ns: u64,
    held: HashMap<(u32, u64), Held>,
    pub groups: BTreeMap<String, Group>,
    /// Slowest first.
    pub slowest: Vec<Request>,
    pub ended: u64,
    /// In flight when the run began: their start was not seen.
    pub began_before: u64,
    /// Shorter than `--min`.
    pub under_min: u64,
    /// Described with fields that do not look like a request's: the layout
    /// does not fit (see `plausible`).
    pub implausible: u64,
    /// Told of each process that joins the run (`--sample`'s windows).
    pub on_join: Option<std::sync::mpsc::Sender<u32>>,
}

impl crate::collect::Sink for Requests {
    fn record(&mut self, bytes: &[u8]) {
        Requests::record(self, bytes);
    }

    fn joined(&mut self, p: &crate::target::Process) -> anyhow::Result<()> {
        if let Some(tx) = &self.on_join {
            let _ = tx.send(p.pid);
        }
        self.builder.add_process(p)
    }
}

impl Requests {
    pub fn new(builder: StackBuilder, by: GroupBy, min_ns: u64, slowest_kept: usize, attached_ns: u64) -> Requests {
        Requests {
            builder,
            by,
            min_ns,
            slowest_kept,
            attached_ns,
            held: HashMap::new(),
            groups: BTreeMap::new(),
            slowest: Vec::new(),
            ended: 0,
            began_before: 0,
            under_min: 0,
            implausible: 0,
            on_join: None,
        }
    }

    pub fn record(&mut self, bytes: &[u8]) {
        if bytes.len() < std::mem::size_of::<LatHead>() {
            return;
        }
        // SAFETY: every record starts with a LatHead; read_unaligned copes with
        // the ring buffer's alignment.
        let head: LatHead = unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const _) };
        match head.kind {
            LAT_END if bytes.len() >= std::mem::size_of::<LatEnd>() => {
                // SAFETY: as above, a whole LatEnd.
                self.ended(&unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const LatEnd) })
            }
            LAT_ON_CPU | LAT_OFF_CPU if bytes.len() >= std::mem::size_of::<LatStack>() => {
                // SAFETY: as above, a whole LatStack.
                let s: LatStack = unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const _) };
                self.stack(&s);
            }
            _ => {}
        }
    }

    fn stack(&mut self, s: &LatStack) {
        let held = self.held.entry((s.head.tgid, s.head.r)).or_default();
        let outside_lua = s.lua.flags & (STACK_NO_VM | STACK_NOT_IN_LUA) != 0;
        if s.head.kind == LAT_ON_CPU {
            if outside_lua {
                held.c_samples += 1;
            } else {
                held.lua_samples += 1;
            }
        }
        let wait = (s.head.kind == LAT_OFF_CPU).then(|| wait_frame(s.syscall, false));
        let stack = self.builder.build(&s.lua, None, wait);
        if outside_lua {
            *held.by_function.entry(Frame::Vm("[nginx C code, no Lua running]".into())).or_default() += s.ns;
            return;
        }
        let frame = culprit_frame(&stack);
        *held.by_phase.entry((s.head.phase, frame.clone())).or_default() += s.ns;
        *held.by_function.entry(frame).or_default() += s.ns;
    }

    fn ended(&mut self, e: &LatEnd) {
        let held = self.held.remove(&(e.head.tgid, e.head.r)).unwrap_or_default();
        self.ended += 1;
        if e.flags & REQ_NGINX_START != 0 && e.start_ns < self.attached_ns {
            self.began_before += 1;
            return;
        }
        let total_ns = e.end_ns.saturating_sub(e.start_ns);
        if total_ns < self.min_ns {
            self.under_min += 1;
            return;
        }
        let text = |b: &[u8], n: u32| String::from_utf8_lossy(&b[..(n as usize).min(b.len())]).into_owned();
        let by_phase = held.by_phase;
        let r = Request {
            worker: e.head.tgid,
            method: text(&e.method, e.method_len),
            uri: text(&e.uri, e.uri_len),
            location: text(&e.location, e.location_len),
            status: e.status,
            total_ns,
            ns: e.ns,
            lua_samples: held.lua_samples,
            c_samples: held.c_samples,
            // A sample stands for a whole period (10 ms at 99 Hz): a request
            // held no longer than it ran.
            held_by: held.by_function.into_iter().max_by_key(|(_, ns)| *ns).map(|(f, ns)| (f, ns.min(on_worker(&e.ns)))),
            upstream: (e.upstreams > 0).then(|| {
                let ms = |v: u64| (v != LAT_NO_MS).then_some(v);
                Upstream { tries: e.upstreams, connect_ms: ms(e.connect_ms), header_ms: ms(e.header_ms), response_ms: ms(e.response_ms) }
            }),
        };
        if !plausible(&r) {
            self.implausible += 1;
            return;
        }
        let key = match self.by {
            GroupBy::Location => r.location.clone(),
            GroupBy::Uri => r.uri.clone(),
            GroupBy::Status => r.status.to_string(),
        };
        let g = self.groups.entry(key).or_default();
        g.latencies_ns.push(total_ns);
        g.hist.add(total_ns / 1000, 1);
        for (sum, ns) in g.ns.iter_mut().zip(r.ns) {
            *sum += ns;
        }
        g.lua_samples += r.lua_samples;
        for (k, ns) in by_phase {
            *g.lua_by_phase.entry(k).or_default() += ns;
        }
        g.c_samples += r.c_samples;
        if let Some(u) = r.upstream {
            for (slot, v) in g.upstream_ms.iter_mut().zip([u.connect_ms, u.header_ms, u.response_ms]) {
                if let Some(v) = v {
                    slot.0 += v;
                    slot.1 += 1;
                }
            }
        }
        self.keep_if_slow(r);
    }

    fn keep_if_slow(&mut self, r: Request) {
        if self.slowest_kept == 0 {
            return;
        }
        if self.slowest.len() == self.slowest_kept {
            if self.slowest.last().is_some_and(|l| l.total_ns >= r.total_ns) {
                return;
            }
            self.slowest.pop();
        }
        let at = self.slowest.partition_point(|s| s.total_ns >= r.total_ns);
        self.slowest.insert(at, r);
    }

    /// Sorts each group's latencies for the percentiles.
    pub fn finish(&mut self) {
        for g in self.groups.values_mut() {
            g.latencies_ns.sort_unstable();
        }
    }

    pub fn inlined_summary(&self) -> serde_json::Value {
        self.builder.inlined_summary()
    }
}

/// A request described through a layout that fits: an HTTP method in
/// capitals (or nothing, for a request line never read) and a URI that is a
/// path. A wrong layout reads other bytes there.
fn plausible(r: &Request) -> bool {
    let method_ok = r.method.is_empty() || r.method.bytes().all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_');
    let uri_ok = r.uri.is_empty() || r.uri.starts_with('/') || r.uri == "*";
    method_ok && uri_ok && r.status < 1000
}

/// Time the worker spent running the request (on the CPU, blocked, preempted).
fn on_worker(ns: &[u64; LAT_SLOTS]) -> u64 {
    (0..LAT_PHASES).flat_map(|p| [KIND_CPU, KIND_BLOCKED, KIND_PREEMPTED].map(|k| ns[slot(p, k as usize)])).sum()
}

/// Slot of (phase, kind) in the sums.
pub fn slot(phase: usize, kind: usize) -> usize {
    phase * LAT_KINDS + kind
}
