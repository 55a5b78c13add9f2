//! Opening a target: the process (or an nginx master's workers), where LuaJIT lives
//! in it, what symbols and debug info it has, and which struct layout fits it.
//! Every tool opens its target through here.

pub mod aim;
pub mod elf;
pub mod follow;
pub mod known_builds;
pub mod layout;
pub mod layout_dwarf;
pub mod layout_gen;
pub mod luajit;
pub mod pause;
pub mod process;
pub mod vm_scan;

use anyhow::Result;
use serde::Serialize;

pub use luajit::LuaJit;
pub use process::Process;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Process,
    NginxMaster,
    NginxWorker,
}

#[derive(Debug, Serialize)]
pub struct TargetProcess {
    pub process: Process,
    pub role: Role,
    pub luajit: Option<LuaJit>,
}

/// What `--pid` named: one process, or an nginx master and its workers.
#[derive(Debug, Serialize)]
pub struct Target {
    pub pid: u32,
    pub processes: Vec<TargetProcess>,
}

impl Target {
    pub fn open(pid: u32) -> Result<Target> {
        // Before a byte of the target is read: may this user trace it at all?
        crate::system::may_trace(pid)?;
        let root = Process::open(pid)?;
        traceable(&root)?;
        let mut processes = Vec::new();
        if root.is_nginx_master() {
            for child in process::children(pid) {
                if let Ok(p) = Process::open(child) {
                    if p.is_nginx_worker() {
                        traceable(&p)?;
                        processes.push(inspect(p, Role::NginxWorker)?);
                    }
                }
            }
            processes.insert(0, inspect(root, Role::NginxMaster)?);
        } else {
            let role = if root.is_nginx_worker() { Role::NginxWorker } else { Role::Process };
            processes.push(inspect(root, role)?);
        }
        Ok(Target { pid, processes })
    }

    /// The processes that run Lua: an nginx master only hands requests to its
    /// workers, so it is left out when it has any.
    pub fn lua_processes(&self) -> Vec<&TargetProcess> {
        let has_workers = self.processes.iter().any(|p| p.role == Role::NginxWorker);
        self.processes
            .iter()
            .filter(|p| p.luajit.is_some() && !(has_workers && p.role == Role::NginxMaster))
            .collect()
    }
}

/// `system::may_trace` for a process already opened, then proof that its PID
/// still names it (same start time): a PID reused since is not let through.
pub fn traceable(p: &Process) -> Result<()> {
    crate::system::may_trace(p.pid)?;
    if !p.alive() {
        anyhow::bail!("process {} exited while ljprobe opened it ({})", p.pid, p.comm);
    }
    Ok(())
}

fn inspect(process: Process, role: Role) -> Result<TargetProcess> {
    let luajit = LuaJit::find(&process)?;
    Ok(TargetProcess { process, role, luajit })
}
