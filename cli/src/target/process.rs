//! A live process as /proc shows it.

use std::{fs, io, path::PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub cmdline: String,
    pub exe: String,
}

#[derive(Debug, Clone)]
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

impl Process {
    pub fn open(pid: u32) -> Result<Process> {
        let stat = match fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
                "no process with PID {pid} (it may have exited): check the PID, e.g. with `pgrep -a nginx`"
            ),
            Err(e) => return Err(e).with_context(|| format!("cannot read /proc/{pid}/stat")),
        };
        // comm may hold spaces and parentheses; the fields after the last ')' do not.
        let (head, tail) = stat.rsplit_once(')').context("malformed /proc/PID/stat")?;
        let comm = head.split_once('(').map(|(_, c)| c.to_string()).unwrap_or_default();
        let ppid = tail.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " ").trim().to_string())
            .unwrap_or_default();
        let exe = fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Process { pid, ppid, comm, cmdline, exe })
    }

    pub fn alive(&self) -> bool {
        // A zombie still has /proc/PID; it runs no code, so it counts as gone.
        match fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, t)| !t.trim_start().starts_with('Z')),
            Err(_) => false,
        }
    }

    pub fn is_nginx_master(&self) -> bool {
        self.cmdline.starts_with("nginx: master process")
    }

    pub fn is_nginx_worker(&self) -> bool {
        self.cmdline.starts_with("nginx: worker process")
    }

    pub fn maps(&self) -> Result<Vec<Mapping>> {
        let pid = self.pid;
        let text = match fs::read_to_string(format!("/proc/{pid}/maps")) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => bail!(
                "cannot read the memory map of PID {pid}: permission denied; {}",
                crate::system::NEED_PRIVILEGES
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => bail!("process {pid} exited"),
            Err(e) => return Err(e).with_context(|| format!("cannot read /proc/{pid}/maps")),
        };
        Ok(text.lines().filter_map(parse_map_line).collect())
    }

    /// A path as the target sees it, reached through its root (containers).
    pub fn host_path(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{}", self.pid, path))
    }
}

/// One line of /proc/PID/maps: `address perms offset dev inode [path]`; the
/// path may contain spaces, so only the fixed fields are split off.
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

/// Direct children of `pid`, from every process's parent link.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    let mut kids: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| Process::open(child).is_ok_and(|p| p.ppid == pid))
        .collect();
    kids.sort_unstable();
    kids
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn opens_itself_and_rejects_a_missing_pid() {
        let me = Process::open(std::process::id()).unwrap();
        assert!(me.alive());
        assert!(!me.maps().unwrap().is_empty());
        let err = Process::open(u32::MAX - 1).unwrap_err().to_string();
        assert!(err.contains("no process with PID"), "{err}");
    }
}
