//! Perf events with a loaded program attached, owned and dropped at will:
//! a uprobe opened and closed many times a second for sampling in windows
//! (aya attaches through `&mut Ebpf` and keeps links for the program's life,
//! while a sampler thread needs a cheap, owned on/off switch), the tracepoints
//! and timer samples that go with them (`latency --sample`), and a hardware
//! watchpoint on one byte of a process's memory, which aya does not offer.
//! Dropping a `Link` closes its event.

use std::{
    ffi::CString,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::Path,
};

use anyhow::{anyhow, Context, Result};

/// `struct perf_event_attr` up to `config2` and the fields after it that must
/// be zero (PERF_ATTR_SIZE_VER5 = 112 bytes).
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    /// uprobe: the path of the file.
    config1: u64,
    /// uprobe: the file offset of the probed instruction.
    config2: u64,
    branch_sample_type: u64,
    sample_regs_user: u64,
    sample_stack_user: u32,
    clockid: i32,
    sample_regs_intr: u64,
    aux_watermark: u32,
    sample_max_stack: u16,
    reserved: u16,
}

const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
const PERF_TYPE_SOFTWARE: u32 = 1;
const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_COUNT_SW_CPU_CLOCK: u64 = 0;
/// `perf_event_attr` flag bits: threads started later are sampled too; `sample_period` is a frequency.
const ATTR_DISABLED: u64 = 1;
const ATTR_INHERIT: u64 = 1 << 1;
const ATTR_FREQ: u64 = 1 << 10;
const PERF_TYPE_BREAKPOINT: u32 = 5;
const HW_BREAKPOINT_W: u32 = 2;
const HW_BREAKPOINT_LEN_1: u64 = 1;
const PERF_EVENT_IOC_ENABLE: u32 = 0x2400;
const PERF_EVENT_IOC_DISABLE: u32 = 0x2401;
const PERF_EVENT_IOC_SET_BPF: u32 = 0x4004_2408;

/// What a window probes: one process, one instruction of one file.
#[derive(Debug, Clone)]
pub struct Site {
    pub pid: u32,
    pub path: CString,
    pub offset: u64,
}

impl Site {
    pub fn new(pid: u32, path: &Path, offset: u64) -> Result<Site> {
        let path = CString::new(path.as_os_str().as_encoded_bytes()).context("a path with a NUL byte")?;
        Ok(Site { pid, path, offset })
    }
}

/// The uprobe PMU's type number, from sysfs.
pub fn uprobe_pmu() -> Result<u32> {
    let text = std::fs::read_to_string("/sys/bus/event_source/devices/uprobe/type")
        .context("this kernel has no uprobe PMU (/sys/bus/event_source/devices/uprobe/type)")?;
    text.trim().parse().context("unreadable uprobe PMU type")
}

/// Which bit of `config` makes a uprobe a uretprobe (sysfs: `config:0`).
fn retprobe_bit() -> Result<u32> {
    let text = std::fs::read_to_string("/sys/bus/event_source/devices/uprobe/format/retprobe")
        .context("this kernel's uprobe PMU has no retprobe format (/sys/bus/event_source/devices/uprobe/format/retprobe)")?;
    text.trim().strip_prefix("config:").and_then(|b| b.parse().ok()).context("unreadable uprobe retprobe format")
}

/// One perf event with a program attached; closed on drop.
pub struct Link {
    _fd: OwnedFd,
}

impl Link {
    /// A uprobe at `site`, running the uprobe program `prog_fd`.
    pub fn uprobe(pmu: u32, site: &Site, prog_fd: RawFd) -> Result<Link> {
        let attr = PerfEventAttr {
            type_: pmu,
            size: std::mem::size_of::<PerfEventAttr>() as u32,
            config1: site.path.as_ptr() as u64,
            config2: site.offset,
            ..Default::default()
        };
        open(&attr, site.pid as i32, -1, prog_fd)
            .map_err(|e| anyhow!("cannot open a uprobe in process {}: {e}", site.pid))
    }

    /// The tracepoint numbered `id` (tracefs `events/CATEGORY/NAME/id`), for
    /// every process, running the tracepoint program `prog_fd`.
    pub fn tracepoint(id: u64, prog_fd: RawFd) -> Result<Link> {
        let attr = PerfEventAttr {
            type_: PERF_TYPE_TRACEPOINT,
            size: std::mem::size_of::<PerfEventAttr>() as u32,
            config: id,
            sample_period: 1,
            wakeup_events: 1,
            ..Default::default()
        };
        // Any one CPU: the kernel runs a tracepoint's programs wherever it fires.
        open(&attr, -1, 0, prog_fd).map_err(|e| anyhow!("cannot open tracepoint {id}: {e}"))
    }

    /// Timer samples of thread `tid` (and the threads it starts) `hz` times a
    /// second of its CPU time, running the perf-event program `prog_fd`.
    pub fn cpu_clock(tid: u32, hz: u64, prog_fd: RawFd) -> Result<Link> {
        let attr = PerfEventAttr {
            type_: PERF_TYPE_SOFTWARE,
            size: std::mem::size_of::<PerfEventAttr>() as u32,
            config: PERF_COUNT_SW_CPU_CLOCK,
            sample_period: hz,
            flags: ATTR_INHERIT | ATTR_FREQ,
            ..Default::default()
        };
        open(&attr, tid as i32, -1, prog_fd).map_err(|e| anyhow!("cannot open a cpu-clock event on thread {tid}: {e}"))
    }

    /// A uretprobe on the function at `site`: the program runs as it returns.
    pub fn uretprobe(pmu: u32, site: &Site, prog_fd: RawFd) -> Result<Link> {
        let attr = PerfEventAttr {
            type_: pmu,
            size: std::mem::size_of::<PerfEventAttr>() as u32,
            config: 1 << retprobe_bit()?,
            config1: site.path.as_ptr() as u64,
            config2: site.offset,
            ..Default::default()
        };
        open(&attr, site.pid as i32, -1, prog_fd)
            .map_err(|e| anyhow!("cannot open a uretprobe in process {}: {e}", site.pid))
    }

    /// A hardware watchpoint on the byte at `addr` in thread `tid`, running
    /// the perf-event program `prog_fd` after every write to it.
    pub fn write_watch(tid: u32, addr: u64, prog_fd: RawFd) -> Result<Link> {
        let link = open(&write_watch_attr(addr), tid as i32, -1, prog_fd)
            .map_err(|e| anyhow!("cannot watch address {addr:#x} of thread {tid} with a hardware breakpoint: {e}"))?;
        note_watchpoint_on_a_vm();
        Ok(link)
    }

    /// Turns the event off or on again without closing it: for a watchpoint
    /// this only reprograms a debug register, unlike closing and reopening a
    /// uprobe, which rewrites the target's code.
    pub fn set_enabled(&self, on: bool) -> std::io::Result<()> {
        let request = if on { PERF_EVENT_IOC_ENABLE } else { PERF_EVENT_IOC_DISABLE };
        // SAFETY: an ioctl on a perf event we own.
        if unsafe { libc::ioctl(self._fd.as_raw_fd(), request as _, 0) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

fn write_watch_attr(addr: u64) -> PerfEventAttr {
    PerfEventAttr {
        type_: PERF_TYPE_BREAKPOINT,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        sample_period: 1,
        bp_type: HW_BREAKPOINT_W,
        config1: addr,
        config2: HW_BREAKPOINT_LEN_1,
        ..Default::default()
    }
}

/// Whether the kernel gives this process a write watchpoint (a debug
/// register) on a byte of its own, as the tools ask for one in a target:
/// `doctor`'s check. Nothing writes the byte.
pub fn watchpoint_opens() -> std::io::Result<()> {
    static BYTE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
    opens_here(write_watch_attr(BYTE.as_ptr() as u64))
}

/// Whether a software cpu-clock counter opens on this process: the event
/// every sampling tool uses (this kind of VM has no hardware PMU); `doctor`'s check.
pub fn cpu_clock_opens() -> std::io::Result<()> {
    opens_here(PerfEventAttr {
        type_: PERF_TYPE_SOFTWARE,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        config: PERF_COUNT_SW_CPU_CLOCK,
        ..Default::default()
    })
}

/// Opens `attr` on the calling thread, disabled, and closes it at once: only
/// whether the kernel allows it matters.
fn opens_here(mut attr: PerfEventAttr) -> std::io::Result<()> {
    attr.flags |= ATTR_DISABLED;
    // SAFETY: a valid attr that outlives the call; pid 0 = us, cpu -1 = any, no group.
    let fd = unsafe { libc::syscall(libc::SYS_perf_event_open, &attr as *const PerfEventAttr, 0, -1, -1, PERF_FLAG_FD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; dropping closes it.
    drop(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
    Ok(())
}

/// The CPU flags say `hypervisor`: a virtual machine.
pub fn on_a_vm() -> bool {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo.lines().any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "hypervisor"))
}

/// Once a run, on a virtual machine: what a watchpoint did to a target in
/// this project's CI, so that whoever points ljprobe at a process that must
/// not die knows before it is too late (docs/gc.md#cost).
fn note_watchpoint_on_a_vm() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if on_a_vm() {
            eprintln!(
                "ljprobe: note: this sets a hardware watchpoint in the target, and on a virtual machine one has killed a target with SIGTRAP in testing (docs/gc.md#cost; alloc --no-watchpoint sets none)"
            );
        }
    });
}

fn open(attr: &PerfEventAttr, pid: i32, cpu: i32, prog_fd: RawFd) -> std::io::Result<Link> {
        let t0 = std::time::Instant::now();
        // SAFETY: a valid attr that outlives the call; no group.
        let fd = unsafe { libc::syscall(libc::SYS_perf_event_open, attr as *const PerfEventAttr, pid, cpu, -1, PERF_FLAG_FD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor to us.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        for (request, arg) in [(PERF_EVENT_IOC_SET_BPF, prog_fd as libc::c_ulong), (PERF_EVENT_IOC_ENABLE, 0)] {
            // SAFETY: ioctls on a perf event we own.
            // glibc takes the request as an unsigned long, musl as an int.
            if unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        log::trace!("perf link: open+attach {:?}", t0.elapsed());
        Ok(Link { _fd: fd })
}
