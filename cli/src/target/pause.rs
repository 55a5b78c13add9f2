//! Stopping a process for a few milliseconds, at a moment its Lua VM is idle,
//! so a copy of its memory is one consistent picture (`ljprobe heap`).
//!
//! `PTRACE_SEIZE` + `PTRACE_INTERRUPT` stop a thread without sending it a
//! signal, so nothing the target sees changes: a wait it was blocked in
//! restarts when it runs again. If ljprobe dies while the target is stopped,
//! the kernel detaches it and, since no stop signal was ever sent, it runs on.

use std::{
    fs,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

/// x86-64 `epoll_wait`, `epoll_pwait`, `epoll_pwait2`: an nginx worker with
/// nothing to do waits in one of them.
pub const EPOLL_WAITS: [i64; 3] = [232, 281, 441];

/// What the main thread was doing when it was stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Moment {
    /// Blocked in this system call (numbers as `/proc/PID/syscall` gives them).
    Waiting(i64),
    /// Running: no wait came within the time allowed.
    Running,
}

/// Every thread of a process, stopped; they all run again when this is dropped.
#[derive(Debug)]
pub struct Paused {
    tids: Vec<Tracee>,
    pub since: Instant,
    pub moment: Moment,
    /// How many times a thread was stopped and let go again because it was busy.
    pub tries: u32,
}

#[derive(Debug)]
struct Tracee {
    tid: i32,
    stopped: bool,
    /// A signal that arrived while we held the thread: delivered when we let go.
    signal: i32,
}

impl Paused {
    /// Stops `pid` at a moment its main thread is blocked in one of `waits`
    /// (any system call when empty), trying for at most `patience`; after that,
    /// wherever it is.
    pub fn when_waiting(pid: u32, waits: &[i64], patience: Duration) -> Result<Paused> {
        let tids = threads(pid)?;
        let mut paused = Paused { tids: Vec::new(), since: Instant::now(), moment: Moment::Running, tries: 0 };
        for tid in tids {
            // SAFETY: PTRACE_SEIZE takes no pointers.
            let r = unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0) };
            if r == 0 {
                paused.tids.push(Tracee { tid, stopped: false, signal: 0 });
            } else if tid == pid as i32 {
                let err = std::io::Error::last_os_error();
                bail!("could not stop process {pid} for a consistent snapshot ({err}): is another debugger attached to it?");
            }
        }
        let deadline = Instant::now() + patience;
        loop {
            let waiting = waiting_in(pid);
            let in_wait = waiting.is_some_and(|nr| waits.is_empty() || waits.contains(&nr));
            if in_wait || Instant::now() >= deadline {
                paused.stop_all();
                paused.since = Instant::now();
                if !paused.tids.iter().any(|t| t.tid == pid as i32 && t.stopped) {
                    bail!("process {pid} exited while ljprobe stopped it");
                }
                match paused.main_moment(pid) {
                    Some(nr) if waits.is_empty() || waits.contains(&nr) => {
                        paused.moment = Moment::Waiting(nr);
                        return Ok(paused);
                    }
                    _ if Instant::now() >= deadline => {
                        paused.moment = Moment::Running;
                        return Ok(paused);
                    }
                    _ => {
                        paused.tries += 1;
                        paused.resume_all();
                    }
                }
            }
            std::thread::sleep(Duration::from_micros(500));
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                bail!("process {pid} exited while ljprobe waited to stop it");
            }
        }
    }

    /// How long the target has been stopped.
    pub fn held(&self) -> Duration {
        self.since.elapsed()
    }

    fn stop_all(&mut self) {
        for t in &mut self.tids {
            // SAFETY: no pointers.
            if unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, t.tid, 0, 0) } != 0 {
                continue;
            }
            t.stopped = wait_stop(t);
        }
    }

    fn resume_all(&mut self) {
        for t in &mut self.tids {
            if t.stopped {
                // SAFETY: no pointers; the data argument is the signal to deliver.
                unsafe { libc::ptrace(libc::PTRACE_CONT, t.tid, 0, t.signal as libc::c_long) };
                t.stopped = false;
                t.signal = 0;
            }
        }
    }

    /// The system call the stopped main thread was blocked in and will restart,
    /// if it was blocked in one (not about to return from one, not running).
    fn main_moment(&self, pid: u32) -> Option<i64> {
        let t = self.tids.iter().find(|t| t.tid == pid as i32 && t.stopped)?;
        let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        // SAFETY: PTRACE_GETREGS writes one user_regs_struct to the pointer.
        let r = unsafe { libc::ptrace(libc::PTRACE_GETREGS, t.tid, 0, &mut regs as *mut _) };
        if r != 0 {
            return None;
        }
        let nr = regs.orig_rax as i64;
        // Interrupted waits return -EINTR or one of the kernel's restart codes.
        let restarting = matches!(regs.rax as i64, -4 | -512 | -513 | -514 | -516);
        (nr >= 0 && restarting).then_some(nr)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        for t in &mut self.tids {
            if !t.stopped {
                // PTRACE_DETACH needs a stopped tracee.
                // SAFETY: no pointers.
                if unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, t.tid, 0, 0) } != 0 {
                    continue;
                }
                if !wait_stop(t) {
                    continue;
                }
            }
            // SAFETY: no pointers; the data argument is the signal to deliver.
            unsafe { libc::ptrace(libc::PTRACE_DETACH, t.tid, 0, t.signal as libc::c_long) };
        }
    }
}

/// Waits for a tracee to stop; keeps a signal that arrived meanwhile so it is
/// delivered later. False if the thread is gone.
fn wait_stop(t: &mut Tracee) -> bool {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status int.
        let r = unsafe { libc::waitpid(t.tid, &mut status, libc::__WALL) };
        if r < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return false;
        }
        if !libc::WIFSTOPPED(status) {
            return false; // exited or killed
        }
        let event = status >> 16;
        let sig = libc::WSTOPSIG(status);
        if event == 0 && sig != libc::SIGTRAP {
            // A signal on its way to the thread: hold it, hand it back later.
            t.signal = sig;
        }
        return true;
    }
}

/// The system call `pid`'s main thread is blocked in, from `/proc/PID/syscall`
/// (its first field is the number, or "running").
fn waiting_in(pid: u32) -> Option<i64> {
    let text = fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    text.split_whitespace().next()?.parse().ok().filter(|&n: &i64| n >= 0)
}

fn threads(pid: u32) -> Result<Vec<i32>> {
    let mut tids: Vec<i32> = ljprobe_host::proc::threads(pid).into_iter().filter_map(|t| i32::try_from(t).ok()).collect();
    if tids.is_empty() {
        bail!("process {pid} does not exist");
    }
    // The main thread first: it is the one whose wait decides the moment.
    tids.sort_by_key(|&t| (t != pid as i32, t));
    Ok(tids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(pid: u32) -> char {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        stat.rsplit_once(") ").unwrap().1.chars().next().unwrap()
    }

    /// Needs root (or CAP_SYS_PTRACE over the child), as CI runs it.
    #[test]
    fn stops_in_a_wait_and_always_lets_go() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        std::thread::sleep(Duration::from_millis(50));
        {
            let paused = Paused::when_waiting(pid, &[], Duration::from_secs(1)).expect("stopped");
            // nanosleep (35) or clock_nanosleep (230): waiting, not running.
            assert!(matches!(paused.moment, Moment::Waiting(35 | 230)), "{:?}", paused.moment);
            assert_eq!(state(pid), 't', "stopped while held");
        }
        std::thread::sleep(Duration::from_millis(20));
        assert_ne!(state(pid), 't', "runs again once dropped");
        let _ = child.kill();
        let _ = child.wait();
        let err = Paused::when_waiting(pid, &[], Duration::from_millis(10)).unwrap_err().to_string();
        assert!(err.contains("does not exist") || err.contains("exited"), "{err}");
    }
}
