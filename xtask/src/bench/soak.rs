//! `cargo xtask bench soak`: ljprobe left running on a busy gateway. Does its own
//! CPU stay small, does its memory stay flat, does it keep up (no lost records)?
//!
//! `ljprobe cpu --stack mixed` and `ljprobe offcpu` run TOGETHER on the one worker,
//! each for the whole soak: a soak is about time, and running them one after the
//! other would double it (20 minutes for the default 10) without telling more;
//! each is its own process, so its CPU time and RSS are its own either way. Their
//! kernel programs do add up in the worker, which is why the gateway's figures
//! printed beside them are not an overhead measurement (`bench cpu|offcpu` are).
//!
//! Every `--every` (5 s) the bench reads each ljprobe's `/proc/PID/stat`
//! (utime + stime, all threads) and `VmRSS`. Start-up (from spawn to its
//! "ljprobe: tracing" line: loading the BPF programs, reading symbols and unwind
//! tables) is reported on its own; the steady state starts a settling time after
//! that (a tenth of the duration, 5-30 s: first stacks, symbol caches filling)
//! and ends with the tracing window, before the report is written.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::Command,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use ljprobe_host::proc;
use xtask::load::{requests_per_sec, Load};

use super::{check_interrupted, prepare, wrk, Kid};

/// The load, all of it for the whole soak, one `wrk -t1` each: (route, connections, requests/sec or flat out).
const LOADS: [(&str, u32, Option<u32>); 3] = [
    // Compiled Lua, about 1 ms of CPU a request, as fast as it goes: the worker is always busy.
    ("/hot/jit?n=0.1", 4, None),
    // Cheap: middleware and a cache hit (ids cycle 1..100).
    ("/api/products/1", 4, Some(1000)),
    // Blocks the worker 1 ms in usleep: what offcpu records.
    ("/block/sleep?ms=1", 2, Some(50)),
];

/// One reading of a process: when (seconds since the soak started), CPU time
/// so far (clock ticks) and resident memory (KiB).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    at: f64,
    ticks: u64,
    rss_kib: u64,
    /// Peak RSS so far (VmHWM).
    hwm_kib: u64,
}

fn sample(pid: u32, t0: Instant) -> Option<Sample> {
    let at = t0.elapsed().as_secs_f64();
    let stat = proc::stat(pid).ok()?;
    let (rss_kib, hwm_kib) = proc::rss_kb(pid)?;
    Some(Sample { at, ticks: stat.utime + stat.stime, rss_kib, hwm_kib })
}

fn cpu_secs(ticks: u64) -> f64 {
    ticks as f64 / proc::ticks_per_sec() as f64
}

/// One ljprobe under watch.
struct Probe {
    label: &'static str,
    json: PathBuf,
    kid: Kid,
    pid: u32,
    /// Seconds after the soak started.
    spawned_at: f64,
    /// Set from its stderr reader at the "ljprobe: tracing" line.
    tracing: Arc<Mutex<Option<Sample>>>,
    stderr: Option<thread::JoinHandle<String>>,
    samples: Vec<Sample>,
}

impl Probe {
    fn spawn(label: &'static str, mut c: Command, json: PathBuf, t0: Instant) -> Result<Probe> {
        let spawned_at = t0.elapsed().as_secs_f64();
        let mut kid = Kid::spawn({
            c.arg("--json").arg(&json);
            c
        })?;
        let child = kid.0.as_mut().unwrap();
        let pid = child.id();
        let err = child.stderr.take().context("stderr not piped")?;
        let tracing = Arc::new(Mutex::new(None));
        let seen = tracing.clone();
        let stderr = thread::spawn(move || {
            let mut text = String::new();
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.starts_with("ljprobe: tracing") {
                    *seen.lock().unwrap() = sample(pid, t0);
                }
                text += &line;
                text.push('\n');
            }
            text
        });
        Ok(Probe { label, json, kid, pid, spawned_at, tracing, stderr: Some(stderr), samples: vec![] })
    }

    fn tracing(&self) -> Option<Sample> {
        *self.tracing.lock().unwrap()
    }
}

/// What one probe's samples say.
#[derive(Debug, PartialEq)]
struct Figures {
    /// Steady window actually covered by samples.
    from: f64,
    to: f64,
    samples: usize,
    cpu_share: f64,
    /// The highest share over one sampling interval.
    busiest_share: f64,
    first_rss_kib: u64,
    last_rss_kib: u64,
    peak_rss_kib: u64,
    /// Least-squares slope of RSS over the window.
    rss_kib_per_min: f64,
}

/// The figures of the samples taken in [from, to]; None with fewer than two.
fn analyse(samples: &[Sample], from: f64, to: f64) -> Option<Figures> {
    let s: Vec<&Sample> = samples.iter().filter(|s| s.at >= from && s.at <= to).collect();
    let (first, last) = (**s.first()?, **s.last()?);
    if s.len() < 2 || last.at <= first.at {
        return None;
    }
    let share = |a: &Sample, b: &Sample| cpu_secs(b.ticks.saturating_sub(a.ticks)) / (b.at - a.at);
    let busiest_share = s.windows(2).map(|w| share(w[0], w[1])).fold(0.0, f64::max);
    let n = s.len() as f64;
    let mx = s.iter().map(|p| p.at).sum::<f64>() / n;
    let my = s.iter().map(|p| p.rss_kib as f64).sum::<f64>() / n;
    let sxy: f64 = s.iter().map(|p| (p.at - mx) * (p.rss_kib as f64 - my)).sum();
    let sxx: f64 = s.iter().map(|p| (p.at - mx).powi(2)).sum();
    Some(Figures {
        from: first.at,
        to: last.at,
        samples: s.len(),
        cpu_share: share(&first, &last),
        busiest_share,
        first_rss_kib: first.rss_kib,
        last_rss_kib: last.rss_kib,
        peak_rss_kib: s.iter().map(|p| p.rss_kib).max().unwrap_or(0),
        rss_kib_per_min: if sxx > 0.0 { sxy / sxx * 60.0 } else { 0.0 },
    })
}

/// The settling time after start-up that the steady state leaves out.
fn settle(duration: Duration) -> f64 {
    (duration.as_secs_f64() / 10.0).clamp(5.0, 30.0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// One finished probe: everything its row of the table needs.
struct Done {
    label: &'static str,
    spawned_at: f64,
    tracing: Option<Sample>,
    figures: Option<Figures>,
    status: std::process::ExitStatus,
    user: f64,
    sys: f64,
    wall: f64,
    max_rss_kib: u64,
    summary: Option<serde_json::Value>,
    stderr: String,
}

pub fn run(duration: Duration, every: Duration) -> Result<()> {
    let (bench, gw) = prepare()?;
    let secs = duration.as_secs().max(1);
    let worker = gw.worker();
    let url = gw.config.url();
    let load = |route: &str, connections: u32, rate: Option<u32>, d: Duration| Load {
        url: url.clone(),
        route: route.into(),
        duration: d,
        connections,
        rate,
    };

    // Unmeasured: traces compiled, caches filled.
    eprintln!("soak: warm-up");
    wrk(&load(LOADS[0].0, LOADS[0].1, None, Duration::from_secs(3)))?;
    check_interrupted()?;

    // The load outlasts the probes (start-up and report included); it is
    // stopped with SIGINT once they are done, and wrk then reports.
    let load_for = duration + Duration::from_secs(300);
    let mut loads = Vec::new();
    for (route, connections, rate) in LOADS {
        let l = load(route, connections, rate, load_for);
        loads.push((route, Kid(Some(l.spawn()?))));
    }

    let t0 = Instant::now();
    let worker_start = sample(worker, t0).context("the gateway worker is gone")?;
    let ljprobe = |args: &[&str], name: &str| {
        let mut c = Command::new(&bench.ljprobe);
        c.args(args).args(["--pid", &worker.to_string(), "--duration", &format!("{secs}s")]);
        c.arg("--svg").arg(bench.out.join(format!("{name}.svg")));
        c
    };
    let mut probes = vec![
        Probe::spawn("cpu --stack mixed", ljprobe(&["cpu", "--stack", "mixed"], "soak-cpu"), bench.out.join("soak-cpu.json"), t0)?,
        Probe::spawn("offcpu", ljprobe(&["offcpu"], "soak-offcpu"), bench.out.join("soak-offcpu.json"), t0)?,
    ];
    eprintln!("soak: {secs} s of tracing, /proc read every {:.1} s", every.as_secs_f64());

    // Sample until both have exited (a zombie is not alive: not reaped yet, so
    // wait4 below still gets its rusage).
    let limit = duration + Duration::from_secs(600);
    let mut next = Instant::now();
    let mut worker_end = worker_start;
    let mut last_progress = Instant::now();
    while probes.iter().any(|p| proc::alive(p.pid)) {
        if t0.elapsed() > limit {
            bail!("ljprobe still runs {} s after a {secs} s soak began", limit.as_secs());
        }
        for p in &mut probes {
            if let Some(s) = proc::alive(p.pid).then(|| sample(p.pid, t0)).flatten() {
                p.samples.push(s);
            }
        }
        if let Some(s) = sample(worker, t0) {
            worker_end = s;
        }
        if last_progress.elapsed() >= Duration::from_secs(60) {
            last_progress = Instant::now();
            let rss: Vec<String> =
                probes.iter().filter_map(|p| Some(format!("{} {:.1} MiB", p.label, mib(p.samples.last()?.rss_kib)))).collect();
            eprintln!("soak: {:.0} s; RSS {}", t0.elapsed().as_secs_f64(), rss.join(", "));
        }
        next += every;
        while Instant::now() < next && probes.iter().any(|p| proc::alive(p.pid)) {
            check_interrupted()?;
            thread::sleep(Duration::from_millis(100));
        }
    }

    let mut done = Vec::new();
    for mut p in probes {
        let tracing = p.tracing();
        let spawned_at = p.spawned_at;
        let (status, ru, _) = p.kid.wait4()?;
        // ru_maxrss and VmHWM are both the high-water mark, counted at different
        // times (RSS counters are per-CPU caches): take the higher.
        let max_rss_kib = (ru.ru_maxrss as u64).max(p.samples.iter().map(|s| s.hwm_kib).max().unwrap_or(0));
        let wall = t0.elapsed().as_secs_f64();
        let stderr = p.stderr.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
        let summary: Option<serde_json::Value> =
            fs::read_to_string(&p.json).ok().and_then(|t| serde_json::from_str(&t).ok()).filter(|_| status.success());
        let figures = tracing.and_then(|t| analyse(&p.samples, t.at + settle(duration), t.at + secs as f64));
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        done.push(Done {
            label: p.label,
            spawned_at,
            tracing,
            figures,
            status,
            user: tv(ru.ru_utime),
            sys: tv(ru.ru_stime),
            wall,
            max_rss_kib,
            summary,
            stderr,
        });
        write_samples(&bench.out, p.label, &p.samples)?;
    }

    let mut rates = Vec::new();
    for (route, kid) in loads {
        if let Some(child) = kid.0.as_ref() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        }
        let out = kid.output()?;
        rates.push((route, requests_per_sec(&String::from_utf8_lossy(&out.stdout))));
    }
    check_interrupted()?;

    print!("{}", table(duration, every, &done, &rates, worker_start, worker_end));
    println!("samples of /proc: {}", bench.out.join("soak-samples.csv").display());
    for d in &done {
        if !d.status.success() {
            bail!("ljprobe {} failed ({}): {}", d.label, d.status, d.stderr.trim());
        }
        if d.tracing.is_none() {
            bail!("ljprobe {} never said it was tracing: {}", d.label, d.stderr.trim());
        }
    }
    Ok(())
}

/// Appends to target/bench/soak-samples.csv (rewritten by the first probe).
fn write_samples(out: &std::path::Path, label: &str, samples: &[Sample]) -> Result<()> {
    let path = out.join("soak-samples.csv");
    let mut text = if label.starts_with("cpu") { "secs,tool,cpu_ticks,rss_kib\n".to_string() } else { fs::read_to_string(&path)? };
    for s in samples {
        writeln!(text, "{:.1},{label},{},{}", s.at, s.ticks, s.rss_kib)?;
    }
    fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn table(
    duration: Duration,
    every: Duration,
    done: &[Done],
    rates: &[(&str, Option<f64>)],
    worker_start: Sample,
    worker_end: Sample,
) -> String {
    let secs = duration.as_secs().max(1);
    let mut o = String::new();
    let uname = xtask::cmd::output(Command::new("uname").arg("-r")).unwrap_or_default();
    let _ = writeln!(o, "\nsoak: ljprobe cpu --stack mixed and ljprobe offcpu together on one nginx worker (debug LuaJIT), {secs} s each");
    let _ = writeln!(o, "machine: {} CPUs online, kernel {}{}", super::online_cpus(), uname.trim(), super::pinned_note());
    let bench = super::bench_command();
    let _ = writeln!(o, "reproduce: {bench} soak --duration {} --every {:.0}s", human(duration), every.as_secs_f64());
    let load: Vec<String> = LOADS
        .iter()
        .zip(rates)
        .map(|((route, c, rate), (_, got))| {
            let asked = rate.map_or("flat out".to_string(), |r| format!("paced {r}/s"));
            format!("{route} -c{c} {asked}: {}", got.map_or("? req/s".into(), |g| format!("{g:.0} req/s")))
        })
        .collect();
    let _ = writeln!(o, "load (wrk -t1 each, whole run): {}", load.join("; "));
    let worker_share = cpu_secs(worker_end.ticks.saturating_sub(worker_start.ticks)) / (worker_end.at - worker_start.at).max(1e-9);
    let _ = writeln!(o, "nginx worker: {:.0}% of one CPU over the run", worker_share * 100.0);
    let _ = writeln!(
        o,
        "steady state: from {:.0} s after start-up (settling) to the end of tracing; CPU share = (utime+stime) / wall, of one CPU\n",
        settle(duration)
    );

    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |name: &str, f: &dyn Fn(&Done) -> String| rows.push((name.to_string(), done.iter().map(f).collect()));
    row("ljprobe", &|d| d.label.to_string());
    row("start-up (spawn to tracing)", &|d| {
        d.tracing.map_or("never traced".into(), |t| {
            format!("{:.1} s, {:.2} s CPU, RSS {:.1} MiB", t.at - d.spawned_at, cpu_secs(t.ticks), mib(t.rss_kib))
        })
    });
    row("steady window", &|d| {
        d.figures.as_ref().map_or("-".into(), |f| format!("{:.0} s, {} readings", f.to - f.from, f.samples))
    });
    row("CPU share, steady", &|d| d.figures.as_ref().map_or("-".into(), |f| format!("{:.2}%", f.cpu_share * 100.0)));
    let every_s = every.as_secs_f64();
    row(&format!("CPU share, busiest {every_s:.0} s"), &|d| {
        d.figures.as_ref().map_or("-".into(), |f| format!("{:.1}%", f.busiest_share * 100.0))
    });
    row("CPU, whole run (wait4)", &|d| format!("{:.2} s user + {:.2} s sys in {:.0} s", d.user, d.sys, d.wall - d.spawned_at));
    row("RSS, steady first -> last", &|d| {
        d.figures.as_ref().map_or("-".into(), |f| format!("{:.1} -> {:.1} MiB", mib(f.first_rss_kib), mib(f.last_rss_kib)))
    });
    row("RSS growth, steady", &|d| {
        d.figures.as_ref().map_or("-".into(), |f| {
            let g = f.last_rss_kib as f64 - f.first_rss_kib as f64;
            format!("{:+.1} MiB ({:+.1}%), {:+.2} MiB/min", g / 1024.0, g / f.first_rss_kib.max(1) as f64 * 100.0, f.rss_kib_per_min / 1024.0)
        })
    });
    row("peak RSS, steady / whole run", &|d| {
        let steady = d.figures.as_ref().map_or("-".into(), |f| format!("{:.1}", mib(f.peak_rss_kib)));
        format!("{steady} / {:.1} MiB", mib(d.max_rss_kib))
    });
    // offcpu's kernel program sums blocks per stack: a record is a new stack, so
    // blocks are the work done.
    row("records (and blocks)", &|d| {
        d.summary.as_ref().map_or("?".into(), |s| {
            let t = s["duration_secs"].as_f64().unwrap_or(0.0).max(1e-9);
            let n = s["samples"].as_u64().unwrap_or(0);
            let mut text = format!("{n} ({:.1}/s)", n as f64 / t);
            if let Some(b) = s["blocks"].as_u64() {
                text += &format!(", {b} blocks ({:.1}/s)", b as f64 / t);
            }
            text
        })
    });
    row("lost records", &|d| {
        d.summary.as_ref().map_or("?".into(), |s| {
            let lost = s["lost_samples"].as_u64().unwrap_or(0);
            let n = s["samples"].as_u64().unwrap_or(0);
            format!("{lost} ({:.3}%)", lost as f64 / (lost + n).max(1) as f64 * 100.0)
        })
    });
    row("host steal", &|d| {
        d.summary.as_ref().and_then(|s| s["steal_pct"].as_f64()).map_or("?".into(), |p| format!("{p:.1}%"))
    });
    row("exit", &|d| if d.status.success() { "ok".into() } else { d.status.to_string() });

    let w = rows.iter().flat_map(|(_, c)| c.iter().map(String::len)).max().unwrap_or(20) + 3;
    for (name, cells) in rows {
        let cells: String = cells.iter().map(|c| format!("{c:<w$}")).collect();
        let _ = writeln!(o, "{name:<32}{}", cells.trim_end());
    }
    o
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(at: f64, ticks: u64, rss_kib: u64) -> Sample {
        Sample { at, ticks, rss_kib, hwm_kib: rss_kib }
    }

    #[test]
    fn steady_figures_leave_start_up_and_report_out() {
        let samples = [
            s(0.0, 0, 1000),     // start-up: left out
            s(5.0, 200, 60000),  // start-up: left out
            s(10.0, 210, 61440), // first steady
            s(15.0, 215, 61440),
            s(20.0, 230, 62464), // last steady
            s(25.0, 400, 90000), // report: left out
        ];
        let f = analyse(&samples, 10.0, 20.0).unwrap();
        assert_eq!((f.from, f.to, f.samples), (10.0, 20.0, 3));
        // 20 ticks = 0.2 s of CPU in 10 s.
        assert!((f.cpu_share - 0.02).abs() < 1e-9, "{f:?}");
        // Busiest: 15 ticks in 5 s.
        assert!((f.busiest_share - 0.03).abs() < 1e-9, "{f:?}");
        assert_eq!((f.first_rss_kib, f.last_rss_kib, f.peak_rss_kib), (61440, 62464, 62464));
        // Least squares through (10, 61440), (15, 61440), (20, 62464): 102.4 KiB/s.
        assert!((f.rss_kib_per_min - 102.4 * 60.0).abs() < 1e-6, "{f:?}");
    }

    #[test]
    fn too_few_readings_give_no_figures() {
        assert_eq!(analyse(&[s(10.0, 1, 1)], 0.0, 100.0), None);
        assert_eq!(analyse(&[], 0.0, 100.0), None);
    }

    #[test]
    fn settling_is_a_tenth_within_bounds() {
        assert_eq!(settle(Duration::from_secs(600)), 30.0);
        assert_eq!(settle(Duration::from_secs(120)), 12.0);
        assert_eq!(settle(Duration::from_secs(10)), 5.0);
        assert_eq!(human(Duration::from_secs(600)), "10m");
        assert_eq!(human(Duration::from_secs(90)), "90s");
    }
}
