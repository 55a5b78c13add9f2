//! What the running kernel and our privileges allow. Every tool checks this before
//! loading a program, so that a refusal reads as advice instead of an errno.

use std::{fs, path::Path};

/// One line of `doctor`'s kernel report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    /// What to do when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn new(name: &'static str, ok: bool, detail: impl Into<String>, fix: &str) -> Check {
        let fix = (!ok).then(|| fix.to_string());
        Check { name, ok, detail: detail.into(), fix }
    }
}

const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;
const CAP_SYS_ADMIN: u32 = 21;

/// True when we may load BPF programs and open perf events for other users' processes.
pub fn privileged() -> bool {
    let caps = effective_caps();
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

pub const NEED_PRIVILEGES: &str =
    "this needs root (or CAP_BPF and CAP_PERFMON) to load eBPF programs: run ljprobe with sudo";

pub fn require_privileges() -> anyhow::Result<()> {
    if privileged() {
        Ok(())
    } else {
        anyhow::bail!("{NEED_PRIVILEGES}")
    }
}

fn effective_caps() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0)
}

pub fn tracefs_root() -> Option<&'static Path> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("events").is_dir())
}

pub fn checks() -> Vec<Check> {
    let privileged = privileged();
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    let uprobe = Path::new("/sys/bus/event_source/devices/uprobe/type").exists();
    let kprobe = Path::new("/sys/bus/event_source/devices/kprobe/type").exists();
    let tracefs = tracefs_root();
    let sched_switch = tracefs.is_some_and(|t| t.join("events/sched/sched_switch/id").exists());
    let epoll = tracefs.is_some_and(|t| t.join("events/syscalls/sys_enter_epoll_wait/id").exists());
    let perf = perf_cpu_clock();
    vec![
        Check::new(
            "privileges",
            privileged,
            if privileged { "root or CAP_BPF+CAP_PERFMON" } else { "not root, no CAP_BPF+CAP_PERFMON" },
            "run ljprobe as root (sudo), or grant it CAP_BPF and CAP_PERFMON",
        ),
        Check::new(
            "BTF",
            btf,
            if btf { "/sys/kernel/btf/vmlinux present" } else { "/sys/kernel/btf/vmlinux missing" },
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distribution kernels since 5.4)",
        ),
        Check::new(
            "uprobes",
            uprobe,
            if uprobe { "uprobe PMU present" } else { "no uprobe PMU in /sys/bus/event_source/devices" },
            "use a kernel built with CONFIG_UPROBE_EVENTS=y",
        ),
        Check::new(
            "tracefs",
            tracefs.is_some(),
            tracefs.map_or("not mounted".into(), |t| format!("mounted at {}", t.display())),
            "mount it: mount -t tracefs nodev /sys/kernel/tracing",
        ),
        Check::new(
            "tracepoints",
            sched_switch && epoll,
            format!(
                "sched:sched_switch {}, syscalls:sys_enter_epoll_wait {}",
                yes_no(sched_switch),
                yes_no(epoll)
            ),
            "mount tracefs, and use a kernel with CONFIG_FTRACE_SYSCALLS=y for the syscall tracepoints",
        ),
        Check::new(
            "perf events",
            perf.is_ok(),
            match &perf {
                Ok(()) => "software cpu-clock event opens".to_string(),
                Err(e) => format!("cannot open a cpu-clock perf event: {e}"),
            },
            "run as root, or lower /proc/sys/kernel/perf_event_paranoid",
        ),
        // kprobes are optional: reported so nobody builds a tool that needs them here.
        Check {
            name: "kprobes",
            ok: true,
            detail: if kprobe { "available (not needed)" } else { "absent (not needed: ljprobe uses tracepoints)" }.into(),
            fix: None,
        },
    ]
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Opens and closes a software cpu-clock counter on ourselves: the event every
/// sampling tool uses (this kind of VM has no hardware PMU).
fn perf_cpu_clock() -> Result<(), std::io::Error> {
    const PERF_TYPE_SOFTWARE: u32 = 1;
    const PERF_COUNT_SW_CPU_CLOCK: u64 = 0;
    const PERF_ATTR_SIZE_VER0: u32 = 64;
    const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
    // perf_event_attr's first 64 bytes (VER0): type, size, config, ..., flags.
    #[repr(C)]
    struct AttrV0 {
        type_: u32,
        size: u32,
        config: u64,
        rest: [u64; 3],
        flags: u64,
        tail: [u64; 2],
    }
    let attr = AttrV0 {
        type_: PERF_TYPE_SOFTWARE,
        size: PERF_ATTR_SIZE_VER0,
        config: PERF_COUNT_SW_CPU_CLOCK,
        rest: [0; 3],
        flags: 1, // disabled: we only need to know it opens
        tail: [0; 2],
    };
    // SAFETY: attr is a valid VER0 perf_event_attr; pid 0 = us, cpu -1 = any, no group.
    let fd = unsafe {
        libc::syscall(libc::SYS_perf_event_open, &attr as *const AttrV0, 0, -1, -1, PERF_FLAG_FD_CLOEXEC)
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned to us and is closed once.
    unsafe { libc::close(fd as i32) };
    Ok(())
}
