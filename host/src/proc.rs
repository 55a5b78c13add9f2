//! Another process as `/proc` shows it: its stat line, command line, memory map,
//! children and counters. One parser for each file, used by ljprobe and xtask.

use std::{fs, io};

/// The fields of `/proc/PID/stat` that ljprobe and its benchmarks read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub comm: String,
    /// `R`, `S`, `D`, `Z`, ...
    pub state: char,
    pub ppid: u32,
    /// CPU time in clock ticks (`ticks_per_sec`).
    pub utime: u64,
    pub stime: u64,
    /// Ticks after boot when the process started: with the PID, names one
    /// process even after its PID is reused.
    pub starttime: u64,
}

/// Parses a stat line. `comm` may hold spaces and parentheses; the fields after
/// the last ')' do not.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let (head, tail) = text.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let f: Vec<&str> = tail.split_whitespace().take(20).collect();
    let num = |i: usize| f.get(i)?.parse::<u64>().ok();
    Some(Stat {
        comm,
        state: f.first()?.chars().next()?,
        ppid: u32::try_from(num(1)?).ok()?,
        utime: num(11)?,
        stime: num(12)?,
        starttime: num(19)?,
    })
}

/// `/proc/PID/stat`; a file that does not parse is `InvalidData`.
pub fn stat(pid: u32) -> io::Result<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("malformed /proc/{pid}/stat")))
}

/// Whether `pid` runs: a zombie still has /proc/PID but runs no code, so it
/// counts as gone.
pub fn alive(pid: u32) -> bool {
    stat(pid).is_ok_and(|s| s.state != 'Z')
}

/// The command line with its NULs as spaces (nginx rewrites its own to
/// `nginx: worker process`); `None` when the process is gone.
pub fn cmdline(pid: u32) -> Option<String> {
    let bytes = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&bytes).replace('\0', " ").trim().to_string())
}

/// Living direct children of `pid`, in PID order. The kernel lists each
/// thread's children in `/proc/PID/task/TID/children` (CONFIG_PROC_CHILDREN):
/// one small read per thread, where scanning every process's parent link
/// costs a read per process on the machine, twice a second while a master's
/// workers are followed. Without that file, the scan.
pub fn children(pid: u32) -> Vec<u32> {
    let mut kids = listed_children(pid).unwrap_or_else(|| {
        let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&child| stat(child).is_ok_and(|s| s.ppid == pid))
            .collect()
    });
    kids.retain(|&k| stat(k).is_ok_and(|s| s.state != 'Z' && s.ppid == pid));
    kids.sort_unstable();
    kids.dedup();
    kids
}

fn listed_children(pid: u32) -> Option<Vec<u32>> {
    let mut kids = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let text = fs::read_to_string(task.ok()?.path().join("children")).ok()?;
        kids.extend(text.split_whitespace().filter_map(|k| k.parse::<u32>().ok()));
    }
    Some(kids)
}

pub fn is_nginx_master(cmdline: &str) -> bool {
    cmdline.starts_with("nginx: master process")
}

pub fn is_nginx_worker(cmdline: &str) -> bool {
    cmdline.starts_with("nginx: worker process")
}

/// The living nginx workers of a master, in PID order.
pub fn nginx_workers(master: u32) -> Vec<u32> {
    children(master).into_iter().filter(|&p| cmdline(p).is_some_and(|c| is_nginx_worker(&c))).collect()
}

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    /// File offset of `start`.
    pub offset: u64,
    pub dev: String,
    pub inode: u64,
    /// A file path, or a pseudo-path such as `[vdso]` or `[stack]`.
    pub path: Option<String>,
}

impl Mapping {
    pub fn executable(&self) -> bool {
        self.perms.contains('x')
    }

    /// The mapped file's path, for mappings backed by a file.
    pub fn file(&self) -> Option<&str> {
        self.path.as_deref().filter(|p| p.starts_with('/'))
    }
}

/// `address perms offset dev inode [path]`; the path may contain spaces, so only
/// the fixed fields are split off.
pub fn parse_map_line(line: &str) -> Option<Mapping> {
    let mut it = line.splitn(6, ' ');
    let (start, end) = it.next()?.split_once('-')?;
    let perms = it.next()?.to_string();
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let dev = it.next()?.to_string();
    let inode = it.next()?.parse().ok()?;
    let path = it.next().map(str::trim).filter(|p| !p.is_empty()).map(str::to_string);
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms,
        offset,
        dev,
        inode,
        path,
    })
}

/// Every parseable line of `/proc/PID/maps`.
pub fn maps(pid: u32) -> io::Result<Vec<Mapping>> {
    Ok(fs::read_to_string(format!("/proc/{pid}/maps"))?.lines().filter_map(parse_map_line).collect())
}

/// A `Name:   value kB` (or plain number) line of `/proc/PID/status`.
pub fn status_field(status: &str, name: &str) -> Option<u64> {
    status.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.split_whitespace().next()?.parse().ok())
}

/// Voluntary plus involuntary context switches of `pid` so far.
pub fn context_switches(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field(&status, "voluntary_ctxt_switches")?.checked_add(status_field(&status, "nonvoluntary_ctxt_switches")?)
}

/// Resident set size now and at its peak, in KiB.
pub fn rss_kb(pid: u32) -> Option<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some((status_field(&status, "VmRSS")?, status_field(&status, "VmHWM")?))
}

/// Context switches of the whole machine since boot (`ctxt` in /proc/stat).
pub fn machine_context_switches() -> Option<u64> {
    fs::read_to_string("/proc/stat").ok()?.lines().find_map(|l| l.strip_prefix("ctxt ")?.trim().parse().ok())
}

/// Clock ticks per second, the unit of `Stat::utime` and `stime`.
pub fn ticks_per_sec() -> u64 {
    // Linux has reported 100 to user space on every architecture since 2.6.
    100
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn parses_a_stat_line_whose_comm_has_spaces_and_parens() {
        let line = "4242 (nginx: (w) x) S 4200 4200 4200 0 -1 4194560 10 0 0 0 7 3 0 0 20 0 1 0 98765 1 2 3";
        let s = parse_stat(line).unwrap();
        assert_eq!((s.comm.as_str(), s.state, s.ppid), ("nginx: (w) x", 'S', 4200));
        assert_eq!((s.utime, s.stime, s.starttime), (7, 3, 98765));
        assert_eq!(parse_stat("4242 (x) S 1 2"), None);
    }

    #[test]
    fn parses_a_maps_line_with_and_without_path() {
        let m = parse_map_line(
            "7f0a1c000000-7f0a1c021000 r-xp 00002000 fe:01 123 /usr/lib/x86_64-linux-gnu/libluajit-5.1.so.2.1.0",
        )
        .unwrap();
        assert_eq!((m.start, m.end, m.offset, m.inode), (0x7f0a1c000000, 0x7f0a1c021000, 0x2000, 123));
        assert!(m.executable());
        assert_eq!(m.file(), Some("/usr/lib/x86_64-linux-gnu/libluajit-5.1.so.2.1.0"));
        let stack = parse_map_line("7ffd1000-7ffd2000 rw-p 00000000 00:00 0                          [stack]").unwrap();
        assert_eq!((stack.path.as_deref(), stack.file()), (Some("[stack]"), None));
        let anon = parse_map_line("7ffd3000-7ffd4000 rw-p 00000000 00:00 0 ").unwrap();
        assert_eq!(anon.path, None);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(alive(me));
        assert!(!maps(me).unwrap().is_empty());
        assert!(stat(me).unwrap().ppid > 0);
        assert!(context_switches(me).is_some());
        let (rss, peak) = rss_kb(me).unwrap();
        assert!(rss > 0 && peak >= rss);
        assert!(!alive(u32::MAX - 1));
        assert_eq!(stat(u32::MAX - 1).unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn finds_a_child_and_forgets_it_once_reaped() {
        let mut kid = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        assert!(children(std::process::id()).contains(&kid.id()));
        kid.kill().unwrap();
        kid.wait().unwrap();
        assert!(!children(std::process::id()).contains(&kid.id()));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        // /proc text comes from another process (its comm, its file names):
        // any bytes parse or are refused, never panic.
        #[test]
        fn any_text_parses_or_is_refused(text in ".{0,300}") {
            let _ = parse_stat(&text);
            let _ = parse_map_line(&text);
            let _ = status_field(&text, "VmRSS");
        }

        #[test]
        fn any_comm_round_trips(comm in "[^\n]{0,16}", ppid in 1u32..) {
            let line = format!("7 ({comm}) R {ppid} 7 7 0 -1 0 0 0 0 0 11 12 0 0 20 0 1 0 13 0 0");
            let s = parse_stat(&line).unwrap();
            prop_assert_eq!((s.comm, s.ppid, s.utime, s.stime, s.starttime), (comm, ppid, 11, 12, 13));
        }
    }
}

/// CPU time the scheduler has charged to `pid`'s main thread (all there is
/// of an nginx worker or a luajit), in nanoseconds exact, from
/// `/proc/PID/schedstat`; None once the process is reaped. Time spent waiting
/// for a CPU is not in it.
pub fn cpu_time(pid: u32) -> Option<std::time::Duration> {
    let text = fs::read_to_string(format!("/proc/{pid}/schedstat")).ok()?;
    let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(std::time::Duration::from_nanos(ns))
}

/// The same for every thread of `pid`, summed (zero once it is gone).
/// The thread ids of process `pid` (empty if it is gone).
pub fn threads(pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return vec![] };
    tasks.filter_map(|t| t.ok()?.file_name().to_str()?.parse().ok()).collect()
}

pub fn threads_cpu_time(pid: u32) -> std::time::Duration {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return std::time::Duration::ZERO };
    let ns: u64 = tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    std::time::Duration::from_nanos(ns)
}
