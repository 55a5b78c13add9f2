//! The target set over a run: an nginx master's workers come and go (`nginx -s
//! reload` starts new ones and retires the old, a crashed worker is respawned),
//! and any target may exit or exec another program. Polled from the collector's
//! tick; every change becomes an event the report lists.

use std::time::Instant;

use ljprobe_host::proc;
use serde::Serialize;

use super::Process;

/// What happened to the target set, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Seconds after tracing started.
    pub at_secs: f64,
    pub pid: u32,
    pub what: EventKind,
    /// For `exec`: the program it runs now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// For `skipped`: why the worker is not followed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A new worker of the master, followed from here on.
    Joined,
    /// A new worker that could not be followed (no LuaJIT, or another one).
    Skipped,
    Exited,
    /// Replaced its program: its Lua VM is gone, so it is no longer looked at.
    Exec,
}

/// A change the collector must act on.
pub enum Change {
    /// Aim the kernel program at it and add it to the stack builder.
    Joined(Process),
    /// Stop looking at it.
    Left(u32),
}

pub struct Follow {
    /// The process asked for; its workers are followed when it is an nginx master.
    root: Process,
    follows_workers: bool,
    /// The object a joining worker must map to be read with the same layout.
    luajit_path: Option<String>,
    live: Vec<Process>,
    /// Every PID ever looked at, in order of joining.
    seen: Vec<u32>,
    /// New PIDs already looked at and refused, so they are reported once.
    refused: Vec<(u32, u64)>,
    started: Instant,
    pub events: Vec<Event>,
}

impl Follow {
    /// The clock of the events starts now: make it when tracing starts.
    pub fn new(root: &Process, processes: &[Process], luajit_path: Option<&str>) -> Follow {
        Follow {
            root: root.clone(),
            follows_workers: root.is_nginx_master(),
            luajit_path: luajit_path.map(str::to_string),
            live: processes.to_vec(),
            seen: processes.iter().map(|p| p.pid).collect(),
            refused: Vec::new(),
            started: Instant::now(),
            events: Vec::new(),
        }
    }

    pub fn live(&self) -> &[Process] {
        &self.live
    }

    pub fn seen(&self) -> &[u32] {
        &self.seen
    }

    /// Nothing left to look at, and nothing will come: every target is gone and
    /// there is no living master to start new workers.
    pub fn all_gone(&self) -> bool {
        self.live.is_empty() && !(self.follows_workers && self.root.alive())
    }

    /// True when some target exec'd another program during the run.
    pub fn any_exec(&self) -> bool {
        self.events.iter().any(|e| e.what == EventKind::Exec)
    }

    /// Compares the target set with /proc and says what changed.
    pub fn poll(&mut self) -> Vec<Change> {
        let mut changes = Vec::new();
        let at_secs = self.started.elapsed().as_secs_f64();
        let mut kept = Vec::with_capacity(self.live.len());
        for p in std::mem::take(&mut self.live) {
            if !p.alive() {
                self.event(at_secs, p.pid, EventKind::Exited, None);
                changes.push(Change::Left(p.pid));
            } else if let Some(exe) = exec_since(&p) {
                self.event(at_secs, p.pid, EventKind::Exec, Some(exe));
                changes.push(Change::Left(p.pid));
            } else {
                kept.push(p);
            }
        }
        self.live = kept;
        if self.follows_workers && self.root.alive() {
            for pid in proc::nginx_workers(self.root.pid) {
                if self.live.iter().any(|p| p.pid == pid) {
                    continue;
                }
                let Ok(p) = Process::open(pid) else { continue };
                if self.refused.contains(&(pid, p.starttime)) {
                    continue;
                }
                // A worker this user may not trace is skipped, unread.
                let refusal = match super::traceable(&p) {
                    Err(_) => Some("this user may not trace it"),
                    Ok(_) if !self.maps_our_luajit(&p) => Some("it does not map the LuaJIT the others do"),
                    Ok(_) => None,
                };
                if refusal.is_none() {
                    self.event(at_secs, pid, EventKind::Joined, None);
                    if !self.seen.contains(&pid) {
                        self.seen.push(pid);
                    }
                    self.live.push(p.clone());
                    changes.push(Change::Joined(p));
                } else {
                    self.event(at_secs, pid, EventKind::Skipped, refusal.map(str::to_string));
                    self.refused.push((pid, p.starttime));
                }
            }
        }
        changes
    }

    fn maps_our_luajit(&self, p: &Process) -> bool {
        let Some(path) = &self.luajit_path else { return true };
        p.maps().is_ok_and(|maps| maps.iter().any(|m| m.file() == Some(path.as_str())))
    }

    /// Records a change and says it on stderr as it happens. `detail` is the
    /// new program of an exec, or why a worker is skipped.
    fn event(&mut self, at_secs: f64, pid: u32, what: EventKind, detail: Option<String>) {
        let detail_or = |d: &Option<String>| d.clone().unwrap_or_else(|| "?".into());
        let line = match what {
            EventKind::Joined => format!("new worker {pid} (reload or respawn): following it"),
            EventKind::Skipped => format!("new worker {pid} is not followed: {}", detail_or(&detail)),
            EventKind::Exited => format!("process {pid} exited"),
            EventKind::Exec => format!(
                "process {pid} replaced its program ({}): its Lua VM is gone, no longer looking at it",
                detail_or(&detail)
            ),
        };
        eprintln!("ljprobe: {at_secs:.1}s: {line}");
        let (exe, why) = if what == EventKind::Exec { (detail, None) } else { (None, detail) };
        self.events.push(Event { at_secs, pid, what, exe, why });
    }
}

/// The program a process runs now, if it is not the one it ran when opened.
/// An exec keeps the PID and start time but changes the executable and, unless
/// it runs the same file, the command name.
fn exec_since(p: &Process) -> Option<String> {
    let exe = std::fs::read_link(format!("/proc/{}/exe", p.pid)).ok()?.to_string_lossy().into_owned();
    let comm = proc::stat(p.pid).ok()?.comm;
    (exe != p.exe || comm != p.comm).then_some(exe)
}
