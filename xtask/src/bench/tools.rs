//! The profilers a bench compares, and how each tells how much it recorded.

use std::{fs, process::Command};

use xtask::gateway::Running;

use super::Bench;

#[derive(Clone, Copy)]
pub enum Tool {
    /// `ljprobe cpu --freq N` on the master (all workers).
    LjprobeCpu(u32),
    /// `ljprobe cpu --stack mixed --freq N` on the master.
    LjprobeCpuMixed(u32),
    /// `bpftrace -e 'profile:hz:N /pid == W/ { @[ustack] = count(); }'`: a
    /// per-CPU sampling BPF program with user stacks, the reference for ljprobe's.
    BpftraceProfile(u32),
    /// `perf record -e cpu-clock -F N --call-graph dwarf` on the worker.
    PerfCpu(u32),
    /// `perf record -e cpu-clock -F N` on the worker, no stacks: what the
    /// sampling timer and a sample cost by themselves.
    PerfCpuNoStacks(u32),
    /// `ljprobe offcpu --stack S` on the master.
    LjprobeOffcpu(&'static str),
    /// `ljprobe epoll-loop` on the master.
    LjprobeEpollLoop,
    /// `ljprobe epoll-loop --freq N` on the master: what its sampler costs.
    LjprobeEpollLoopAt(u32),
    /// `perf record -e sched:sched_switch --call-graph dwarf` on the worker:
    /// what an off-CPU profile costs with perf.
    PerfSwitch,
    /// `ljprobe alloc` on the master: sampled in windows, or `--all`.
    LjprobeAlloc { all: bool },
    /// `ljprobe gc` on the master (`--exact`: with its uprobe on the atomic phase).
    LjprobeGc { exact: bool },
    /// A bpftrace uprobe on the worker's `lj_alloc_f` that only counts calls:
    /// the least any per-allocation probe costs.
    BpftraceAllocCount,
    /// `ljprobe report` on the master: cpu, offcpu, epoll-loop, gc and alloc together.
    LjprobeReport,
    /// `ljprobe latency --freq 99` on the master, every request or `--sample PERCENT`.
    LjprobeLatency(Option<u32>),
    /// A bpftrace uprobe on the worker's `ngx_http_free_request` that only
    /// counts calls: the least a probe that sees every request costs.
    BpftraceRequestCount,
    /// `ljprobe heap` on the worker once a second: a snapshot (a pause of
    /// the worker for the copy) every second, the run through.
    LjprobeHeapEverySecond,
    /// `ljprobe leak` on the master: two snapshots, every allocation
    /// recorded for the last 2 s of the run.
    LjprobeLeak,
    /// `ljprobe jit` on the master: the sampler and the two watchpoints.
    LjprobeJit,
}

impl Tool {
    pub fn label(&self) -> String {
        match self {
            Tool::LjprobeCpu(hz) => format!("ljprobe {hz} Hz"),
            Tool::LjprobeCpuMixed(hz) => format!("ljprobe mixed {hz} Hz"),
            Tool::BpftraceProfile(hz) => format!("bpftrace ustack {hz} Hz"),
            Tool::PerfCpu(hz) => format!("perf {hz} Hz"),
            Tool::PerfCpuNoStacks(hz) => format!("perf {hz} Hz no stacks"),
            Tool::LjprobeOffcpu(stack) => format!("ljprobe offcpu {stack}"),
            Tool::LjprobeEpollLoop => "ljprobe epoll-loop".into(),
            Tool::LjprobeEpollLoopAt(hz) => format!("ljprobe epoll-loop {hz} Hz"),
            Tool::PerfSwitch => "perf sched_switch -g".into(),
            Tool::LjprobeAlloc { all: false } => "ljprobe alloc".into(),
            Tool::LjprobeAlloc { all: true } => "ljprobe alloc --all".into(),
            Tool::LjprobeGc { exact: false } => "ljprobe gc".into(),
            Tool::LjprobeGc { exact: true } => "ljprobe gc --exact".into(),
            Tool::BpftraceAllocCount => "bpftrace count allocf".into(),
            Tool::LjprobeReport => "ljprobe report".into(),
            Tool::LjprobeLatency(None) => "ljprobe latency".into(),
            Tool::LjprobeLatency(Some(p)) => format!("ljprobe latency --sample {p}"),
            Tool::BpftraceRequestCount => "bpftrace count free_request".into(),
            Tool::LjprobeHeapEverySecond => "ljprobe heap every 1 s".into(),
            Tool::LjprobeLeak => "ljprobe leak".into(),
            Tool::LjprobeJit => "ljprobe jit".into(),
        }
    }

    fn json(&self, bench: &Bench) -> std::path::PathBuf {
        let name = self.label().replace(' ', "-");
        bench.out.join(format!("{name}.json"))
    }

    /// The command, running for `secs`.
    pub fn command(&self, bench: &Bench, gw: &Running, secs: u64) -> Command {
        let master = gw.master().to_string();
        let duration = format!("{secs}s");
        let svg = bench.out.join(format!("{}.svg", self.label().replace(' ', "-")));
        let ljprobe = |args: &[&str]| {
            let mut c = Command::new(&bench.ljprobe);
            c.args(args).args(["--pid", &master, "--duration", &duration]).arg("--svg").arg(&svg);
            c.arg("--json").arg(self.json(bench));
            c
        };
        // perf takes the worker: `-p` covers only the threads of one process.
        let perf_with = |event: &str, freq: Option<u32>, stacks: bool| {
            let mut c = Command::new("perf");
            c.args(["record", "-e", event]);
            if let Some(hz) = freq {
                c.args(["-F", &hz.to_string()]);
            }
            if stacks {
                c.args(["-g", "--call-graph", "dwarf"]);
            }
            c.args(["-p", &gw.worker().to_string(), "-o"])
                .arg(bench.out.join("perf.data"))
                .args(["--", "sleep", &secs.to_string()]);
            c
        };
        let perf = |event: &str, freq: Option<u32>| perf_with(event, freq, true);
        match *self {
            Tool::LjprobeCpu(hz) => ljprobe(&["cpu", "--freq", &hz.to_string()]),
            Tool::LjprobeCpuMixed(hz) => ljprobe(&["cpu", "--stack", "mixed", "--freq", &hz.to_string()]),
            Tool::BpftraceProfile(hz) => {
                let script = format!("profile:hz:{hz} /pid == {}/ {{ @[ustack] = count(); }} interval:s:{secs} {{ exit(); }}", gw.worker());
                let mut c = Command::new("bpftrace");
                // The map of stacks printed at exit would be megabytes of no use here.
                c.args(["-q", "-e", &script]).env("BPFTRACE_MAX_MAP_KEYS", "65536");
                c
            }
            // cpu-clock is the event ljprobe uses; without a PMU perf falls back
            // to it anyway, with one it would otherwise take `cycles`.
            Tool::PerfCpu(hz) => perf("cpu-clock", Some(hz)),
            Tool::PerfCpuNoStacks(hz) => perf_with("cpu-clock", Some(hz), false),
            Tool::LjprobeOffcpu(stack) => ljprobe(&["offcpu", "--stack", stack]),
            Tool::LjprobeEpollLoop => ljprobe(&["epoll-loop"]),
            Tool::LjprobeEpollLoopAt(hz) => ljprobe(&["epoll-loop", "--freq", &hz.to_string()]),
            Tool::PerfSwitch => perf("sched:sched_switch", None),
            Tool::LjprobeAlloc { all } => ljprobe(if all { &["alloc", "--all"] } else { &["alloc"] }),
            Tool::LjprobeGc { exact } => ljprobe(if exact { &["gc", "--exact"] } else { &["gc"] }),
            Tool::LjprobeReport => {
                let mut c = Command::new(&bench.ljprobe);
                c.args(["report", "--pid", &master, "--duration", &duration, "--out"]).arg(bench.out.join("report"));
                c
            }
            Tool::LjprobeLatency(None) => ljprobe(&["latency"]),
            Tool::LjprobeLatency(Some(p)) => ljprobe(&["latency", "--sample", &p.to_string()]),
            Tool::BpftraceRequestCount => {
                let script = format!(
                    "uprobe:/usr/sbin/nginx:ngx_http_free_request /pid == {}/ {{ @requests = count(); }} interval:s:{secs} {{ exit(); }}",
                    gw.worker()
                );
                let mut c = Command::new("bpftrace");
                c.args(["-e", &script]);
                c
            }
            Tool::LjprobeLeak => ljprobe(&["leak"]),
            Tool::LjprobeJit => ljprobe(&["jit"]),
            Tool::LjprobeHeapEverySecond => {
                let heap = format!(
                    "{} heap --pid {} --svg {} --json {}",
                    bench.ljprobe.display(),
                    gw.worker(),
                    svg.display(),
                    self.json(bench).display()
                );
                let mut c = Command::new("sh");
                c.args(["-c", &format!("end=$(($(date +%s) + {secs})); n=0; while [ $(date +%s) -lt $end ]; do {heap} >/dev/null && n=$((n+1)); sleep 1; done; echo snapshots $n >&2")]);
                c
            }
            Tool::BpftraceAllocCount => {
                let worker = gw.worker();
                let lib = ljprobe_host::proc::maps(worker)
                    .ok()
                    .and_then(|m| m.iter().find_map(|m| m.file().filter(|f| f.contains("libluajit")).map(str::to_string)))
                    .unwrap_or_default();
                let script = format!(
                    "uprobe:{lib}:lj_alloc_f /pid == {worker}/ {{ @calls = count(); }} interval:s:{secs} {{ exit(); }}"
                );
                let mut c = Command::new("bpftrace");
                c.args(["-e", &script]);
                c
            }
        }
    }

    /// How many records it handled, from its JSON summary or perf's last line.
    pub fn events(&self, bench: &Bench, stderr: &str) -> Option<(u64, &'static str)> {
        let json = || -> Option<serde_json::Value> { serde_json::from_str(&fs::read_to_string(self.json(bench)).ok()?).ok() };
        match self {
            Tool::LjprobeCpu(_) | Tool::LjprobeCpuMixed(_) => Some((json()?["samples"].as_u64()?, "samples")),
            Tool::BpftraceProfile(_) => None,
            Tool::LjprobeOffcpu(_) => Some((json()?["blocks"].as_u64()?, "blocks")),
            Tool::LjprobeEpollLoop | Tool::LjprobeEpollLoopAt(_) => Some((json()?["iterations"].as_u64()?, "iterations")),
            Tool::PerfCpu(_) | Tool::PerfCpuNoStacks(_) | Tool::PerfSwitch => Some((perf_samples(stderr)?, "samples")),
            Tool::LjprobeAlloc { .. } => Some((json()?["events"].as_u64()?, "allocator calls while attached")),
            Tool::LjprobeGc { .. } => Some((json()?["samples"].as_u64()?, "samples")),
            Tool::BpftraceAllocCount | Tool::BpftraceRequestCount => None,
            Tool::LjprobeLeak => Some((json()?["addresses"].as_u64()?, "addresses")),
            Tool::LjprobeJit => Some((json()?["samples"].as_u64()?, "samples")),
            Tool::LjprobeHeapEverySecond => Some((stderr.rsplit_once("snapshots ")?.1.trim().parse().ok()?, "snapshots")),
            Tool::LjprobeLatency(_) => Some((json()?["requests"].as_u64()?, "requests")),
            Tool::LjprobeReport => {
                let cpu: serde_json::Value = serde_json::from_str(&fs::read_to_string(bench.out.join("report/cpu.json")).ok()?).ok()?;
                Some((cpu["samples"].as_u64()?, "cpu samples"))
            }
        }
    }
}

/// From perf's closing line: `[ perf record: Captured and wrote 1.1 MB perf.data (136 samples) ]`.
fn perf_samples(stderr: &str) -> Option<u64> {
    let tail = stderr.rsplit_once('(')?.1;
    tail.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_perf_sample_count() {
        let s = "[ perf record: Woken up 4 times to write data ]\n\
                 [ perf record: Captured and wrote 1.098 MB /tmp/p.data (136 samples) ]\n";
        assert_eq!(perf_samples(s), Some(136));
        assert_eq!(perf_samples("nothing"), None);
    }
}
