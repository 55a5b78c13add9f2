//! The clocks the kernel programs stamp events with, read from user space.

fn read(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC)
}

/// Wall-clock time minus monotonic time: turns a wall-clock stamp (nginx's
/// own) into the probes' clock.
pub fn realtime_offset_ns() -> u64 {
    let before = monotonic_ns();
    let wall = read(libc::CLOCK_REALTIME);
    let after = monotonic_ns();
    wall.saturating_sub(before / 2 + after / 2)
}
