//! One consistent picture of a process's Lua heap: stop it while its main
//! thread waits (in `epoll_wait` for an nginx worker), copy the private
//! writable memory that holds the heap, let it run. The walk then reads the
//! copy, however long it takes, and the target only pays for the copy.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::Result;
use serde::Serialize;

use crate::{
    lua::{MemCopy, Memory, ProcMem},
    target::{
        pause::{Moment, Paused, EPOLL_WAITS},
        Process,
    },
};

/// Bytes copied per read of `/proc/PID/mem`.
const CHUNK: usize = 8 << 20;
/// How long to wait for the target to sit in a wait before stopping it anyway.
const PATIENCE: Duration = Duration::from_secs(1);

pub struct Snapshot {
    pub mem: MemCopy,
    pub how: How,
}

/// How the copy was made, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct How {
    /// "waiting in epoll_wait", "waiting in system call N", "running".
    pub stopped_while: String,
    pub paused_ms: f64,
    /// Every byte was copied while the target stood still.
    pub consistent: bool,
    pub copied_bytes: u64,
    /// Bytes copied after `--max-pause` let the target run again.
    pub copied_live_bytes: u64,
    pub copy_ms: f64,
    /// Times the target was stopped and let go again because it was busy.
    pub retries: u32,
    /// CLOCK_MONOTONIC when the target was stopped for the copy.
    #[serde(skip)]
    pub stopped_at_ns: u64,
}

pub fn take(p: &Process, max_pause: Duration) -> Result<Snapshot> {
    let waits: &[i64] = if p.is_nginx_worker() { &EPOLL_WAITS } else { &[] };
    let regions = heap_regions(p)?;
    let src = ProcMem::open(p.pid)?;
    // Buffers written now, so no page of ljprobe's faults in while the target waits.
    let mut ready: HashMap<(u64, u64), Vec<u8>> = regions
        .iter()
        .map(|&(start, end)| {
            let mut v = Vec::with_capacity((end - start) as usize);
            v.resize((end - start) as usize, 1u8);
            ((start, end), v)
        })
        .collect();
    let paused = Paused::when_waiting(p.pid, waits, PATIENCE)?;
    // The map again, stopped: the allocator may have mapped more meanwhile.
    let regions = heap_regions(p).unwrap_or(regions);
    let buffers: Vec<(u64, Vec<u8>)> = regions
        .iter()
        .map(|&(start, end)| (start, ready.remove(&(start, end)).unwrap_or_else(|| vec![0; (end - start) as usize])))
        .collect();
    let mut paused = Some(paused);
    let stopped_while = match &paused.as_ref().expect("just set").moment {
        Moment::Waiting(nr) => match usize::try_from(*nr).ok().and_then(syscalls::Sysno::new) {
            Some(sys) => format!("waiting in {}", sys.name()),
            None => format!("waiting in system call {nr}"),
        },
        Moment::Running => "running (it never waited within a second)".to_string(),
    };
    let retries = paused.as_ref().map_or(0, |p| p.tries);
    let stopped_at_ns = crate::clock::monotonic_ns();
    let copy_started = Instant::now();
    let mut mem = MemCopy::default();
    let mut live = 0u64;
    let mut paused_for = Duration::ZERO;
    for (start, mut bytes) in buffers {
        for (i, chunk) in bytes.chunks_mut(CHUNK).enumerate() {
            let at = start + (i * CHUNK) as u64;
            if let Some(p) = &paused {
                if p.held() >= max_pause {
                    paused_for = p.held();
                    paused = None;
                }
            }
            if paused.is_none() {
                live += chunk.len() as u64;
            }
            if !read_remote(p.pid, at, chunk) && !src.read(at, chunk) {
                // A mapping that went away or cannot be read: what was read stays zero.
                chunk.fill(0);
            }
        }
        mem.add(start, bytes);
    }
    if let Some(p) = paused.take() {
        paused_for = p.held();
    }
    // Buffers of mappings that changed: freed once the target runs.
    drop(ready);
    Ok(Snapshot {
        how: How {
            stopped_while,
            paused_ms: paused_for.as_secs_f64() * 1e3,
            consistent: live == 0,
            copied_bytes: mem.bytes(),
            copied_live_bytes: live,
            copy_ms: copy_started.elapsed().as_secs_f64() * 1e3,
            retries,
            stopped_at_ns,
        },
        mem,
    })
}

/// The process's private writable memory, where LuaJIT's allocator (and the
/// system's) put the heap: anonymous mappings and `[heap]`.
fn heap_regions(p: &Process) -> Result<Vec<(u64, u64)>> {
    Ok(p.maps()?
        .iter()
        .filter(|m| m.perms.starts_with("rw") && m.perms.ends_with('p') && matches!(m.path.as_deref(), None | Some("[heap]")))
        .map(|m| (m.start, m.end))
        .collect())
}

/// `process_vm_readv`: the kernel copies page by page straight into `buf`,
/// several times faster than `/proc/PID/mem` for big copies.
fn read_remote(pid: u32, addr: u64, buf: &mut [u8]) -> bool {
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: `local` covers exactly `buf`, which outlives the call; the
    // remote address is only read by the kernel, in the other process.
    let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    n == buf.len() as isize
}
