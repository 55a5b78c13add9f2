//! `cargo xtask dist`: the file users copy to a server. A static (musl) release
//! build of `ljprobe`, stripped, with the kernel programs embedded (cli/build.rs
//! does that for every build), written with its checksum, man pages and shell
//! completions under `target/dist/`:
//!
//! ```text
//! target/dist/ljprobe                 static x86-64 binary, no libc needed
//! target/dist/ljprobe.sha256          `sha256sum -c ljprobe.sha256`
//! target/dist/man/ljprobe*.1          one page per command
//! target/dist/completions/            ljprobe.bash, _ljprobe (zsh), ljprobe.fish
//! ```
//!
//! The man pages and completions come from the built binary itself (a hidden
//! `ljprobe generate DIR`): xtask must build before the BPF tool chain exists,
//! so it cannot link the ljprobe crate, and the binary's own clap definitions
//! cannot drift from what it documents.
//!
//! `cargo xtask dist --measure` then compares ljprobe's own cost, glibc release
//! build against this one: CPU time and peak RSS of `ljprobe cpu --stack mixed`
//! on the gateway's busy worker, interleaved rounds (docs/bench.md#static-build).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    cmd,
    gateway::{Config, LuaJitBuild, Running},
    load::Load,
    paths,
};

/// The target triple of the static build.
pub const TARGET: &str = "x86_64-unknown-linux-musl";

/// The cargo profile (workspace Cargo.toml): release without debug info, stripped.
pub const PROFILE: &str = "static";

pub fn dir() -> PathBuf {
    paths::target().join("dist")
}

/// `target/dist/ljprobe`.
pub fn binary() -> PathBuf {
    dir().join("ljprobe")
}

/// Where cargo leaves the static build before it is copied into `dir()`.
fn cargo_output() -> PathBuf {
    paths::target().join(TARGET).join(PROFILE).join("ljprobe")
}

#[derive(Debug)]
pub struct Built {
    pub binary: PathBuf,
    pub bytes: u64,
    pub sha256: String,
    pub version: String,
}

/// Builds `target/dist/` (cargo rebuilds only what changed: seconds when
/// nothing did, about 1.5 minutes from scratch on 2 cores).
pub fn build() -> Result<Built> {
    let root = paths::root();
    cmd::run(
        Command::new("cargo")
            .args(["build", "--locked", "--package", "ljprobe", "--profile", PROFILE, "--target", TARGET])
            .current_dir(&root),
    )
    .context("the static build failed (`cargo xtask setup` adds the musl target)")?;
    let built = cargo_output();
    check_static(&built)?;

    let dir = dir();
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Through a temporary name: a copy someone runs never sees half a file.
    let bin = binary();
    let tmp = dir.join(".ljprobe.tmp");
    fs::copy(&built, &tmp).with_context(|| format!("cannot copy {} to {}", built.display(), tmp.display()))?;
    fs::rename(&tmp, &bin)?;
    for sub in ["man", "completions"] {
        let _ = fs::remove_dir_all(dir.join(sub));
    }
    cmd::run(Command::new(&bin).arg("generate").arg(&dir))?;

    let sums = cmd::output(Command::new("sha256sum").arg("ljprobe").current_dir(&dir))?;
    fs::write(dir.join("ljprobe.sha256"), &sums)?;
    let sha256 = sums.split_whitespace().next().unwrap_or_default().to_string();
    let version = cmd::output(Command::new(&bin).arg("--version"))?.trim().to_string();
    let bytes = fs::metadata(&bin)?.len();
    Ok(Built { binary: bin, bytes, sha256, version })
}

/// The binary `build` made, built now if it is missing (the tests use it).
pub fn binary_built() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("LJPROBE_DIST").map(PathBuf::from) {
        if p.exists() {
            return Ok(p);
        }
    }
    Ok(build()?.binary)
}

/// A static executable has no program interpreter (PT_INTERP): it needs no
/// dynamic loader and no libc on the server.
fn check_static(path: &Path) -> Result<()> {
    let elf = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if elf.get(..4) != Some(b"\x7fELF".as_slice()) || elf.len() < 64 {
        bail!("{} is not an ELF file", path.display());
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let Some(p_type) = elf.get(at..at + 4) else { bail!("{}: truncated program headers", path.display()) };
        const PT_INTERP: u32 = 3;
        if u32::from_le_bytes(p_type.try_into().unwrap()) == PT_INTERP {
            bail!("{} asks for a dynamic loader (PT_INTERP): it is not static", path.display());
        }
    }
    Ok(())
}

pub fn print(built: &Built) {
    let dir = dir();
    println!("{}", built.version);
    println!("{}  {:.1} MB ({} bytes), static, stripped", built.binary.display(), built.bytes as f64 / 1e6, built.bytes);
    println!("{}  sha256 {}", dir.join("ljprobe.sha256").display(), built.sha256);
    for sub in ["man", "completions"] {
        let mut names: Vec<String> = fs::read_dir(dir.join(sub))
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        println!("{}/  {}", dir.join(sub).display(), names.join(" "));
    }
}

/// One measured run of `ljprobe cpu --stack mixed`: what the kernel charged it.
#[derive(Debug, Clone, Copy)]
struct Cost {
    /// User + system CPU time, all threads, start-up included (rusage).
    cpu: Duration,
    /// CPU time until it said "ljprobe: tracing" (programs loaded, symbols and
    /// unwind tables read), from its threads' schedstat.
    startup: Duration,
    /// Peak resident set (ru_maxrss), KiB.
    peak_rss_kib: u64,
    samples: u64,
}

impl Cost {
    /// Steady-state CPU time per recorded sample, microseconds.
    fn us_per_sample(&self) -> f64 {
        (self.cpu.saturating_sub(self.startup)).as_secs_f64() * 1e6 / self.samples.max(1) as f64
    }
}


/// Runs `bin cpu --stack mixed` on `pid` for `duration` and reads its rusage
/// from wait4: exact CPU time and peak RSS of that one process.
fn measure_once(bin: &Path, pid: u32, duration: Duration, freq: u32, out: &Path) -> Result<Cost> {
    use std::io::{BufRead, BufReader};
    let json = out.with_extension("json");
    let svg = out.with_extension("svg");
    let mut child = Command::new(bin)
        .args(["cpu", "--stack", "mixed", "--pid", &pid.to_string()])
        .args(["--duration", &format!("{}s", duration.as_secs()), "--freq", &freq.to_string()])
        .arg("--json")
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    let me = child.id();
    let err = child.stderr.take().context("no stderr")?;
    let reader = thread::spawn(move || {
        let mut startup = None;
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if startup.is_none() && line.starts_with("ljprobe: tracing") {
                startup = Some(ljprobe_host::proc::threads_cpu_time(me));
            }
        }
        startup
    });
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child, once; std's Child is not waited on after.
    let r = unsafe { libc::wait4(me as i32, &mut status, 0, &mut usage) };
    if r < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    let startup = reader.join().ok().flatten().unwrap_or_default();
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{} cpu --pid {pid} failed (status {status:#x})", bin.display());
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    let summary: serde_json::Value = serde_json::from_str(&fs::read_to_string(&json)?)?;
    Ok(Cost {
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        startup,
        peak_rss_kib: usage.ru_maxrss as u64,
        samples: summary["samples"].as_u64().unwrap_or(0),
    })
}

/// glibc release build against the static one, `rounds` interleaved pairs of
/// `duration` each on the busy worker of a one-worker gateway.
pub fn measure(duration: Duration, rounds: u32, freq: u32) -> Result<()> {
    let dist = build()?.binary;
    cmd::run(Command::new("cargo").args(["build", "--release", "--package", "ljprobe"]).current_dir(paths::root()))?;
    let glibc = paths::target().join("release/ljprobe");
    let builds = [("glibc (target/release)", glibc), ("static musl (target/dist)", dist)];

    let port = crate::gateway::free_port_pair(None)?;
    let config = Config {
        prefix: paths::target().join("dist-measure/gateway"),
        port,
        backend_port: port + 1,
        workers: 1,
        luajit: LuaJitBuild::Debug,
        ..Config::default()
    };
    let _ = config.down();
    let gw = Running::start(config)?;
    let out = paths::target().join("dist-measure");
    // Compiled Lua, about 1 ms of CPU a request, flat out: the worker is always busy.
    let load = Load {
        url: gw.config.url(),
        route: "/hot/jit?n=0.1".into(),
        duration: duration * (2 * rounds) + Duration::from_secs(30 * u64::from(rounds) + 30),
        connections: 4,
        rate: None,
    };
    let mut wrk = load.spawn()?;
    thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    let mut costs: Vec<Vec<Cost>> = vec![Vec::new(); builds.len()];
    for round in 0..rounds {
        // Alternate which goes first, so that drift hits both alike.
        let order: Vec<usize> = if round % 2 == 0 { vec![0, 1] } else { vec![1, 0] };
        for i in order {
            let (label, bin) = &builds[i];
            let c = measure_once(bin, gw.worker(), duration, freq, &out.join(format!("run-{round}-{i}")))?;
            eprintln!(
                "round {}: {label}: {:.2} s CPU ({:.2} s start-up, {:.0} us per sample after), peak RSS {:.1} MiB, {} samples",
                round + 1,
                c.cpu.as_secs_f64(),
                c.startup.as_secs_f64(),
                c.us_per_sample(),
                c.peak_rss_kib as f64 / 1024.0,
                c.samples
            );
            costs[i].push(c);
        }
    }
    let _ = wrk.kill();
    let _ = wrk.wait();
    drop(gw);

    println!(
        "\nljprobe cpu --stack mixed --freq {freq}, {} s on the busy worker of a one-worker gateway (/hot/jit, wrk -c4), {rounds} rounds interleaved, {:.0} s in all",
        duration.as_secs(),
        started.elapsed().as_secs_f64()
    );
    println!("| build | size | CPU time, s | of which start-up, s | after start-up, us per sample | peak RSS, MiB | samples |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let cell = |values: Vec<f64>, digits: usize| {
        let (m, lo, hi) = spread(&values);
        format!("{m:.digits$} ({lo:.digits$}-{hi:.digits$})")
    };
    for ((label, bin), c) in builds.iter().zip(&costs) {
        let size = fs::metadata(bin).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
        println!(
            "| {label} | {size:.1} MB | {} | {} | {} | {} | {} |",
            cell(c.iter().map(|c| c.cpu.as_secs_f64()).collect(), 2),
            cell(c.iter().map(|c| c.startup.as_secs_f64()).collect(), 2),
            cell(c.iter().map(Cost::us_per_sample).collect(), 0),
            cell(c.iter().map(|c| c.peak_rss_kib as f64 / 1024.0).collect(), 1),
            cell(c.iter().map(|c| c.samples as f64).collect(), 0),
        );
    }
    println!("(median, min-max in parentheses)");
    Ok(())
}

/// Median, minimum and maximum.
fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let mid = if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 };
    (mid, v[0], v[v.len() - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_median_min_max() {
        assert_eq!(spread(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(spread(&[4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
    }

    #[test]
    fn a_dynamic_executable_is_not_static() {
        // This test binary is linked against glibc: it has a PT_INTERP.
        let me = std::env::current_exe().unwrap();
        let err = check_static(&me).unwrap_err().to_string();
        assert!(err.contains("not static"), "{err}");
    }
}
