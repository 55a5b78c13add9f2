//! Which CPUs a process may run on: the bench's `--pin` and the tests that
//! put a neighbour on a worker's CPU.

/// Lets `pid` (0: the calling thread) run only on `cpus`.
pub fn pin(pid: u32, cpus: impl IntoIterator<Item = usize>) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET only writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for c in cpus {
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: the set outlives the call, which only reads it.
    if unsafe { libc::sched_setaffinity(pid as i32, std::mem::size_of_val(&set), &set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
