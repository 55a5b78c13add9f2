//! `cargo xtask test --cpu-cap PERCENT`: the test run held to a share of one
//! CPU by a cgroup CPU quota, to show that no test depends on how fast this
//! machine's CPU is.
//!
//! xtask moves itself into a fresh cgroup with the quota before it starts
//! `cargo test`; everything started from then on inherits the group: the
//! test processes, the gateways they start (nginx daemonizes, and stays in
//! its parent's cgroup), ljprobe and wrk. When the run ends xtask moves
//! itself back, moves out whatever is left (a gateway a killed test left
//! running) and removes the group.
//!
//! wrk is held to the quota too, with the rest: the point is the gateway's
//! worker and the test process on half a CPU, and on a machine that slow the
//! load generator would be as slow. It keeps the tests meaningful: they
//! measure what a request costs within the same run (under the same cap),
//! pace their loads in wall-clock time, and where they count what a
//! saturating load got through, derive the count from the worker's own CPU
//! time; a slower wrk changes how many requests get through, not what each
//! costs, how long an iteration is, or where the worker's time goes.
//!
//! cgroup v1 (this project's machines: the cpu controller at
//! /sys/fs/cgroup/cpu) writes `cpu.cfs_period_us` and `cpu.cfs_quota_us`;
//! cgroup v2 (when /sys/fs/cgroup/cgroup.controllers exists) writes
//! `cpu.max`, after enabling the cpu controller for the parent's children.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context, Result};

const V2_ROOT: &str = "/sys/fs/cgroup";
/// Where cgroup v1 mounts the cpu controller, alone or with cpuacct.
const V1_ROOTS: [&str; 3] = ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpuacct,cpu"];
const PREFIX: &str = "ljprobe-test-";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// A cgroup with a CPU quota that this process has moved into; dropping it
/// moves everything back to where this process was and removes the group.
pub struct CpuCap {
    version: Version,
    dir: PathBuf,
    /// The cgroup this process came from (and the new one's parent).
    parent: PathBuf,
    percent: u32,
    period: Duration,
}

impl CpuCap {
    /// Creates the group with a quota of `percent` of one CPU per `period`,
    /// and moves this process (so whatever it starts next) into it.
    pub fn enter(percent: u32, period: Duration) -> Result<CpuCap> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        if percent == 0 || percent > 100 * cpus {
            bail!("--cpu-cap {percent}: give a percentage of one CPU, 1 to {} on this machine", 100 * cpus);
        }
        let period_us = period.as_micros() as u64;
        if !(1_000..=1_000_000).contains(&period_us) {
            bail!("--cpu-cap-period {period:?}: the kernel takes 1 ms to 1 s");
        }
        let quota_us = period_us * percent as u64 / 100;
        let (version, parent) = find_own_cgroup()?;
        remove_stale_groups(&parent);
        let dir = parent.join(format!("{PREFIX}{}", std::process::id()));
        fs::create_dir(&dir).with_context(|| format!("cannot create the cgroup {}", dir.display()))?;
        let cap = CpuCap { version, dir, parent, percent, period };
        match version {
            Version::V1 => {
                write(&cap.dir.join("cpu.cfs_period_us"), &period_us.to_string())?;
                write(&cap.dir.join("cpu.cfs_quota_us"), &quota_us.to_string())?;
            }
            Version::V2 => write(&cap.dir.join("cpu.max"), &format!("{quota_us} {period_us}"))?,
        }
        write(&cap.dir.join("cgroup.procs"), &std::process::id().to_string())?;
        eprintln!(
            "cpu cap: {}% of one CPU ({quota_us} us every {period_us} us) for this run and all it starts, in {}",
            percent,
            cap.dir.display()
        );
        Ok(cap)
    }

    /// One line on how much the quota held the run back (`cpu.stat`).
    pub fn summary(&self) -> String {
        let stat = fs::read_to_string(self.dir.join("cpu.stat")).unwrap_or_default();
        let field = |name: &str| -> u64 {
            stat.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0)
        };
        let throttled = match self.version {
            Version::V1 => Duration::from_nanos(field("throttled_time ")),
            Version::V2 => Duration::from_micros(field("throttled_usec ")),
        };
        format!(
            "cpu cap {}% per {:?}: throttled in {} of {} periods, {:.1} s in all",
            self.percent,
            self.period,
            field("nr_throttled "),
            field("nr_periods "),
            throttled.as_secs_f64()
        )
    }
}

impl Drop for CpuCap {
    fn drop(&mut self) {
        let back = self.parent.join("cgroup.procs");
        if let Err(e) = write(&back, &std::process::id().to_string()) {
            eprintln!("cpu cap: {e:#}");
        }
        // Whatever is still in the group (a gateway a failed test left behind)
        // goes back with us, so the group can be removed.
        for pid in procs(&self.dir) {
            eprintln!("cpu cap: moving PID {pid}, still running, out of the capped group");
            let _ = write(&back, &pid.to_string());
        }
        if let Err(e) = fs::remove_dir(&self.dir) {
            eprintln!("cpu cap: cannot remove {}: {e}", self.dir.display());
        }
    }
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).with_context(|| format!("cannot write `{value}` to {}", path.display()))
}

fn procs(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// Which cgroup version controls the CPU here, and the directory of the
/// cgroup this process is in, where the capped group goes.
fn find_own_cgroup() -> Result<(Version, PathBuf)> {
    let own = fs::read_to_string("/proc/self/cgroup").context("cannot read /proc/self/cgroup")?;
    if Path::new(V2_ROOT).join("cgroup.controllers").exists() {
        let rel = own.lines().find_map(|l| l.strip_prefix("0::")).context("no cgroup v2 line in /proc/self/cgroup")?;
        let parent = Path::new(V2_ROOT).join(rel.trim_start_matches('/'));
        let available = fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
        if !available.split_whitespace().any(|c| c == "cpu") {
            bail!("the cgroup v2 controller `cpu` is not available in {}", parent.display());
        }
        // Children get the controller only if the parent hands it down (which
        // cgroup v2 refuses outside the root while the parent has processes).
        let control = parent.join("cgroup.subtree_control");
        let enabled = fs::read_to_string(&control).unwrap_or_default();
        if !enabled.split_whitespace().any(|c| c == "cpu") {
            write(&control, "+cpu").context("cannot enable the cpu controller for a child cgroup")?;
        }
        return Ok((Version::V2, parent));
    }
    let root = V1_ROOTS
        .iter()
        .map(Path::new)
        .find(|r| r.join("cpu.cfs_quota_us").exists())
        .context("no cgroup cpu controller mounted (looked for /sys/fs/cgroup/cgroup.controllers and /sys/fs/cgroup/cpu)")?;
    let rel = v1_cpu_path(&own).unwrap_or("/");
    let parent = root.join(rel.trim_start_matches('/'));
    // In a container the hierarchy may show only the container's part.
    Ok((Version::V1, if parent.is_dir() { parent } else { root.to_path_buf() }))
}

/// The cpu controller's path in `/proc/self/cgroup` under cgroup v1: the
/// `N:cpu,cpuacct:/path` line whose controllers include cpu.
fn v1_cpu_path(own: &str) -> Option<&str> {
    own.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers.split(',').any(|c| c == "cpu").then_some(path)
    })
}

/// Groups left by runs that were killed before they could remove theirs.
fn remove_stale_groups(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() && procs(&e.path()).is_empty() {
            let _ = fs::remove_dir(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cpu_controllers_path() {
        let own = "9:name=systemd:/\n2:cpuacct:/a\n1:cpu:/b/c\n0::/\n";
        assert_eq!(v1_cpu_path(own), Some("/b/c"));
        assert_eq!(v1_cpu_path("4:cpu,cpuacct:/x\n"), Some("/x"));
        assert_eq!(v1_cpu_path("3:cpuset:/\n0::/user.slice\n"), None);
    }
}
