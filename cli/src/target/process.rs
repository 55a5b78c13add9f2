//! A live process as /proc shows it.

use std::{fs, io, path::PathBuf};

use anyhow::{bail, Context, Result};
use ljprobe_host::proc;
use serde::Serialize;

pub use ljprobe_host::proc::{children, parse_map_line, Mapping};

#[derive(Debug, Clone, Serialize)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub cmdline: String,
    pub exe: String,
    /// With the PID, tells this process from a later one that reuses its PID.
    #[serde(skip)]
    pub starttime: u64,
}

impl Process {
    pub fn open(pid: u32) -> Result<Process> {
        let stat = match proc::stat(pid) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
                "no process with PID {pid} (it may have exited): check the PID, e.g. with `pgrep -a nginx`"
            ),
            Err(e) => return Err(e).with_context(|| format!("cannot read /proc/{pid}/stat")),
        };
        let cmdline = proc::cmdline(pid).unwrap_or_default();
        let exe = fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Process { pid, ppid: stat.ppid, comm: stat.comm, cmdline, exe, starttime: stat.starttime })
    }

    /// Still running, and still the process that was opened (not a reused PID).
    pub fn alive(&self) -> bool {
        proc::stat(self.pid).is_ok_and(|s| s.state != 'Z' && s.starttime == self.starttime)
    }

    pub fn is_nginx_master(&self) -> bool {
        proc::is_nginx_master(&self.cmdline)
    }

    pub fn is_nginx_worker(&self) -> bool {
        proc::is_nginx_worker(&self.cmdline)
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
        Ok(text.lines().filter_map(proc::parse_map_line).collect())
    }

    /// A path as the target sees it, reached through its root (containers).
    pub fn host_path(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{}", self.pid, path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_itself_and_rejects_a_missing_pid() {
        let me = Process::open(std::process::id()).unwrap();
        assert!(me.alive());
        assert!(!me.maps().unwrap().is_empty());
        let err = Process::open(u32::MAX - 1).unwrap_err().to_string();
        assert!(err.contains("no process with PID"), "{err}");
    }
}
