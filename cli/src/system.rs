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
const CAP_SYS_PTRACE: u32 = 19;

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

/// Refuses, in one sentence, a target the user running ljprobe could not trace
/// without ljprobe's own privileges: the kernel's rule for reading
/// `/proc/PID/mem` (`ptrace_may_access`: same user and group as every one of the
/// target's ids and the target dumpable, or `CAP_SYS_PTRACE`; Yama or another
/// LSM may add to it), which is also the rule perf applies before it samples a
/// process. Every tool calls this (through `Target::open`) before it reads a
/// byte of the target or loads a program: an ljprobe installed with file
/// capabilities (CAP_BPF, CAP_PERFMON) could otherwise sample any process.
///
/// Root, or a copy granted CAP_SYS_PTRACE, may trace every process, as the
/// kernel says. Otherwise the kernel itself is asked, with the user's own
/// credentials: a thread that has given up its effective capabilities opens
/// the target's `/proc/PID/mem` (opening reads nothing).
pub fn may_trace(pid: u32) -> anyhow::Result<()> {
    match open_mem_as_user(pid) {
        Ok(()) => Ok(()),
        // No such process: the caller says so in its own words.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) if !privileged() => anyhow::bail!("{NEED_PRIVILEGES}"),
        Err(e) => anyhow::bail!("{}", refusal(pid, &e)),
    }
}

/// `may_trace` for the tools that stop a process and read its memory and
/// load no eBPF program (`ljprobe heap`): ptrace's rule is all that counts.
pub fn may_stop(pid: u32) -> anyhow::Result<()> {
    match open_mem_as_user(pid) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => anyhow::bail!("{}", refusal(pid, &e)),
    }
}

/// Opens `/proc/PID/mem` with the user's own rights (or succeeds at once
/// with CAP_SYS_PTRACE).
fn open_mem_as_user(pid: u32) -> std::io::Result<()> {
    if has_cap(CAP_SYS_PTRACE) {
        return Ok(());
    }
    std::thread::spawn(move || -> std::io::Result<()> {
        drop_effective_caps()?;
        fs::File::open(format!("/proc/{pid}/mem")).map(drop)
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("the permission check panicked")))
}

/// Why the user may not trace `pid`, from what anyone may read of it.
fn refusal(pid: u32, e: &std::io::Error) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().filter_map(|n| n.parse().ok()).collect())
            .unwrap_or_default()
    };
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string();
    // SAFETY: getuid and getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let (uids, gids) = (field("Uid:"), field("Gid:"));
    let theirs = uids.get(1).copied().map_or_else(|| "another user".to_string(), user_name);
    let why = if uids.iter().take(3).any(|&u| u != uid) || gids.iter().take(3).any(|&g| g != gid) {
        format!("it runs as {theirs}, not as {}", user_name(uid))
    } else {
        // The ids agree: the kernel refused for another reason (not dumpable
        // after a setuid or capability exec or prctl(PR_SET_DUMPABLE, 0), more
        // capabilities than ours, an LSM).
        format!(
            "the kernel does not let {} read its memory (it is not dumpable, or holds capabilities; {})",
            user_name(uid),
            e.kind().to_string().to_lowercase()
        )
    };
    format!(
        "may not trace process {pid} ({comm}): {why}; without root, ljprobe traces only processes you could trace with gdb or perf yourself (run it with sudo for others)"
    )
}

fn user_name(uid: u32) -> String {
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            (f.nth(1)?.parse::<u32>().ok()? == uid).then(|| format!("{name} (uid {uid})"))
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

fn has_cap(bit: u32) -> bool {
    effective_caps() & (1u64 << bit) != 0
}

/// Clears the calling thread's effective capabilities (capabilities are per
/// thread: the rest of the process keeps its own).
fn drop_effective_caps() -> std::io::Result<()> {
    update_caps(|data| {
        data[0].effective = 0;
        data[1].effective = 0;
    })
}

const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_DAC_READ_SEARCH: u32 = 2;

/// First thing in `main`, before any thread exists: an ljprobe installed with
/// CAP_DAC_READ_SEARCH (for tracefs, which is root's alone) keeps it out of
/// its effective set, so that every other file it opens (the target's
/// libraries through /proc/PID/root, output files) is opened with the user's
/// own rights; `with_tracefs` raises it around tracefs reads. Root is left as it is.
pub fn lower_file_privileges() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        return;
    }
    let _ = update_caps(|data| {
        for bit in [CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH] {
            data[(bit / 32) as usize].effective &= !(1 << (bit % 32));
        }
    });
}

/// Runs `f` (which reads tracefs) with CAP_DAC_READ_SEARCH raised on this
/// thread when it is permitted and not already effective; lowers it after.
pub fn with_tracefs<T>(f: impl FnOnce() -> T) -> T {
    let bit = CAP_DAC_READ_SEARCH;
    let mut raised = false;
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        let _ = update_caps(|data| {
            let slot = &mut data[(bit / 32) as usize];
            let mask = 1 << (bit % 32);
            if slot.permitted & mask != 0 && slot.effective & mask == 0 {
                slot.effective |= mask;
                raised = true;
            }
        });
    }
    let out = f();
    if raised {
        let _ = update_caps(|data| data[(bit / 32) as usize].effective &= !(1 << (bit % 32)));
    }
    out
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// capget, `change`, capset on the calling thread.
fn update_caps(change: impl FnOnce(&mut [CapData; 2])) -> std::io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header { version: VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: a v3 header and two data slots, as capget/capset expect; pid 0 = this thread.
    unsafe {
        if libc::syscall(libc::SYS_capget, &mut header as *mut Header, data.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        change(&mut data);
        if libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
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

/// Where tracefs stands for this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tracefs {
    Readable(&'static Path),
    /// Mounted, but its files are root's (mode 0700) and we are not root:
    /// an ljprobe installed with capabilities needs CAP_DAC_READ_SEARCH.
    Unreadable(String),
    NotMounted,
}

/// What the running kernel offers ljprobe, found once; `doctor` prints it as
/// checks and as what each tool can do (docs/install.md has the same table).
#[derive(Debug, Clone)]
pub struct Kernel {
    pub privileged: bool,
    pub btf: bool,
    pub uprobe: bool,
    pub kprobe: bool,
    pub tracefs: Tracefs,
    pub sched_switch: bool,
    pub epoll: bool,
    pub perf: Result<(), String>,
    /// None: not checked (no privileges to create a map).
    pub ringbuf: Option<Result<(), String>>,
    /// /proc/kallsyms shows addresses: kernel frames (`--kernel`) can be named.
    pub kallsyms: bool,
    /// A hardware write watchpoint opens (`gc --exact`, `jit`, alloc's totals).
    pub watchpoint: Result<(), String>,
    /// The CPU flags say `hypervisor`.
    pub vm: bool,
}

impl Kernel {
    pub fn probe() -> Kernel {
        let privileged = privileged();
        let tracefs = match with_tracefs(tracefs_root) {
            Some(t) => Tracefs::Readable(t),
            None => match tracefs_mount() {
                Some(at) => Tracefs::Unreadable(at),
                None => Tracefs::NotMounted,
            },
        };
        let events = |rel: &str| match &tracefs {
            Tracefs::Readable(t) => with_tracefs(|| t.join("events").join(rel).join("id").exists()),
            _ => false,
        };
        Kernel {
            privileged,
            btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
            uprobe: Path::new("/sys/bus/event_source/devices/uprobe/type").exists(),
            kprobe: Path::new("/sys/bus/event_source/devices/kprobe/type").exists(),
            sched_switch: events("sched/sched_switch"),
            epoll: events("syscalls/sys_enter_epoll_wait"),
            tracefs,
            perf: crate::bpf::perf_link::cpu_clock_opens().map_err(|e| e.to_string()),
            ringbuf: privileged.then(ring_buffer),
            kallsyms: kallsyms_addresses(),
            watchpoint: crate::bpf::perf_link::watchpoint_opens().map_err(|e| e.to_string()),
            vm: crate::bpf::perf_link::on_a_vm(),
        }
    }

    pub fn checks(&self) -> Vec<Check> {
        let (tracefs_ok, tracefs_detail, tracefs_fix) = match &self.tracefs {
            Tracefs::Readable(t) => (true, format!("mounted at {}", t.display()), ""),
            Tracefs::Unreadable(at) => (
                false,
                format!("mounted at {at}, but not readable without root"),
                "run ljprobe as root, or install it with CAP_DAC_READ_SEARCH too (docs/install.md)",
            ),
            Tracefs::NotMounted => (false, "not mounted".into(), "mount it: mount -t tracefs nodev /sys/kernel/tracing"),
        };
        let tracepoints = if matches!(self.tracefs, Tracefs::Readable(_)) {
            format!("sched:sched_switch {}, syscalls:sys_enter_epoll_wait {}", yes_no(self.sched_switch), yes_no(self.epoll))
        } else {
            "cannot be listed: tracefs is not readable".into()
        };
        vec![
            Check::new(
                "privileges",
                self.privileged,
                if self.privileged { "root or CAP_BPF+CAP_PERFMON" } else { "not root, no CAP_BPF+CAP_PERFMON" },
                "run ljprobe as root (sudo), or install it with capabilities (docs/install.md)",
            ),
            Check::new(
                "BTF",
                self.btf,
                if self.btf { "/sys/kernel/btf/vmlinux present" } else { "/sys/kernel/btf/vmlinux missing" },
                "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distribution kernels since 5.4)",
            ),
            Check::new(
                "uprobes",
                self.uprobe,
                if self.uprobe { "uprobe PMU present" } else { "no uprobe PMU in /sys/bus/event_source/devices" },
                "use a kernel built with CONFIG_UPROBE_EVENTS=y",
            ),
            Check::new("tracefs", tracefs_ok, tracefs_detail, tracefs_fix),
            Check::new(
                "tracepoints",
                self.sched_switch && self.epoll,
                tracepoints,
                "mount tracefs, and use a kernel with CONFIG_FTRACE_SYSCALLS=y for the syscall tracepoints",
            ),
            Check::new(
                "perf events",
                self.perf.is_ok(),
                match &self.perf {
                    Ok(()) => "software cpu-clock event opens".to_string(),
                    Err(e) => format!("cannot open a cpu-clock perf event: {e}"),
                },
                "run as root, or lower /proc/sys/kernel/perf_event_paranoid",
            ),
            Check::new(
                "ring buffer",
                matches!(self.ringbuf, Some(Ok(()))),
                match &self.ringbuf {
                    Some(Ok(())) => "BPF ring buffer map created".to_string(),
                    Some(Err(e)) => format!("cannot create a BPF ring buffer map: {e}"),
                    None => "not checked: creating a map needs privileges".to_string(),
                },
                if self.ringbuf.is_none() {
                    "run ljprobe as root (sudo), or install it with capabilities (docs/install.md)"
                } else {
                    "use Linux 5.8 or later (BPF_MAP_TYPE_RINGBUF)"
                },
            ),
            // Only `--kernel` needs these: reported, never a failure.
            Check {
                name: "kernel symbols",
                ok: true,
                detail: if self.kallsyms {
                    "/proc/kallsyms shows addresses (for --kernel)".into()
                } else {
                    "/proc/kallsyms hides addresses: --kernel needs root, or CAP_SYSLOG (docs/install.md)".into()
                },
                fix: None,
            },
            // jit uses two; gc --exact and alloc's totals only where LuaJIT's
            // atomic phase is not found for a uprobe. On a VM the reader should
            // know what one has done (docs/gc.md#cost).
            Check {
                name: "watchpoints",
                ok: true,
                detail: match (&self.watchpoint, self.vm) {
                    (Ok(()), false) => "a hardware write watchpoint opens (jit; gc --exact and alloc's totals where \
                        no uprobe place is found)"
                        .into(),
                    (Ok(()), true) => "a hardware write watchpoint opens, but this is a virtual machine, where one has \
                        killed a target with SIGTRAP (docs/gc.md#cost): jit sets two; alloc and report take \
                        --no-watchpoint against the fallback"
                        .into(),
                    (Err(_), _) if !self.privileged => "not checked: a watchpoint in another process needs privileges".into(),
                    (Err(e), _) => format!(
                        "no hardware watchpoint ({e}): jit sees no aborts or exits; gc --exact and alloc need none \
                         where LuaJIT's atomic phase is found for a uprobe (every build tested)"
                    ),
                },
                fix: None,
            },
            // kprobes are optional: reported so nobody builds a tool that needs them here.
            Check {
                name: "kprobes",
                ok: true,
                detail: if self.kprobe { "available (not needed)" } else { "absent (not needed: ljprobe uses tracepoints)" }.into(),
                fix: None,
            },
        ]
    }

    /// What each tool needs of the kernel and lacks here, in words: the
    /// `tool` column of docs/install.md's table.
    pub fn missing_for(&self, tool: &str) -> Vec<String> {
        let mut missing = Vec::new();
        let mut need = |ok: bool, what: &str| {
            if !ok {
                missing.push(what.to_string());
            }
        };
        need(self.privileged, "privileges to load eBPF programs (root, or CAP_BPF and CAP_PERFMON)");
        need(self.btf, "kernel BTF (/sys/kernel/btf/vmlinux) for the task's saved user registers");
        if tool != "doctor" {
            need(!matches!(self.ringbuf, Some(Err(_))), "the BPF ring buffer (Linux 5.8)");
        }
        let tracefs_ok = matches!(self.tracefs, Tracefs::Readable(_));
        let tracefs_why = match self.tracefs {
            Tracefs::Unreadable(_) => "a readable tracefs (root, or CAP_DAC_READ_SEARCH)",
            _ => "tracefs mounted at /sys/kernel/tracing",
        };
        match tool {
            "doctor" => {
                need(self.perf.is_ok(), "software cpu-clock perf events");
                need(self.uprobe, "uprobes (CONFIG_UPROBE_EVENTS)");
            }
            "cpu" => need(self.perf.is_ok(), "software cpu-clock perf events"),
            "offcpu" => {
                need(tracefs_ok, tracefs_why);
                need(!tracefs_ok || self.sched_switch, "the sched:sched_switch tracepoint");
            }
            "epoll-loop" => {
                need(self.perf.is_ok(), "software cpu-clock perf events");
                need(tracefs_ok, tracefs_why);
                need(!tracefs_ok || self.sched_switch, "the sched:sched_switch tracepoint");
                need(!tracefs_ok || self.epoll, "the syscalls:sys_enter/exit_epoll_wait tracepoints (CONFIG_FTRACE_SYSCALLS)");
            }
            _ => {}
        }
        missing
    }
}

/// The tools `doctor` reports on, as `missing_for` names them.
pub const TOOLS: &[&str] = &["doctor", "cpu", "offcpu", "epoll-loop"];

pub fn checks() -> Vec<Check> {
    Kernel::probe().checks()
}

/// Where tracefs is mounted, from our mount table (readable by anyone).
fn tracefs_mount() -> Option<String> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "tracefs").then(|| left.split_whitespace().nth(4).map(str::to_string))?
    })
}

/// Whether /proc/kallsyms gives this process real addresses.
fn kallsyms_addresses() -> bool {
    use std::io::{BufRead, BufReader};
    let Ok(f) = fs::File::open("/proc/kallsyms") else { return false };
    BufReader::new(f)
        .lines()
        .take(1000)
        .map_while(Result::ok)
        .any(|l| l.split_whitespace().next().and_then(|a| u64::from_str_radix(a, 16).ok()).is_some_and(|a| a != 0))
}

/// Creates and closes a one-page BPF ring buffer map (BPF_MAP_TYPE_RINGBUF,
/// Linux 5.8): the map every tracing tool sends its records through.
fn ring_buffer() -> Result<(), String> {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_RINGBUF: u32 = 27;
    // The first fields of `union bpf_attr` for BPF_MAP_CREATE, zero-padded.
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        rest: [u32; 28],
    }
    let attr = MapCreate { map_type: BPF_MAP_TYPE_RINGBUF, key_size: 0, value_size: 0, max_entries: 4096, rest: [0; 28] };
    // SAFETY: attr is a zero-padded bpf_attr of the size given.
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, &attr as *const MapCreate, std::mem::size_of::<MapCreate>() as u32)
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    // SAFETY: fd was just returned to us and is closed once.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_there() -> Kernel {
        Kernel {
            privileged: true,
            btf: true,
            uprobe: true,
            kprobe: false,
            tracefs: Tracefs::Readable(Path::new("/sys/kernel/tracing")),
            sched_switch: true,
            epoll: true,
            perf: Ok(()),
            ringbuf: Some(Ok(())),
            kallsyms: true,
            watchpoint: Ok(()),
            vm: false,
        }
    }

    fn watchpoint_line(k: &Kernel) -> String {
        k.checks().into_iter().find(|c| c.name == "watchpoints").map(|c| c.detail).unwrap()
    }

    #[test]
    fn the_watchpoint_line_says_what_a_vm_has_done_and_what_privileges_hide() {
        assert!(!watchpoint_line(&all_there()).contains("virtual machine"));
        assert!(watchpoint_line(&Kernel { vm: true, ..all_there() }).contains("--no-watchpoint"));
        let refused = Kernel { watchpoint: Err("No such device".into()), ..all_there() };
        assert!(watchpoint_line(&refused).contains("jit sees no aborts or exits"));
        let unprivileged = Kernel { privileged: false, ..refused };
        assert!(watchpoint_line(&unprivileged).starts_with("not checked"));
    }

    #[test]
    fn each_tool_is_told_what_it_lacks() {
        for tool in TOOLS {
            assert!(all_there().missing_for(tool).is_empty(), "{tool}");
        }
        let no_tracefs = Kernel { tracefs: Tracefs::NotMounted, sched_switch: false, epoll: false, ..all_there() };
        assert!(no_tracefs.missing_for("cpu").is_empty());
        assert!(no_tracefs.missing_for("doctor").is_empty());
        assert_eq!(no_tracefs.missing_for("offcpu"), ["tracefs mounted at /sys/kernel/tracing"]);
        assert_eq!(no_tracefs.missing_for("epoll-loop"), ["tracefs mounted at /sys/kernel/tracing"]);
        let unreadable = Kernel { tracefs: Tracefs::Unreadable("/sys/kernel/tracing".into()), ..no_tracefs };
        assert!(unreadable.missing_for("offcpu")[0].contains("CAP_DAC_READ_SEARCH"));
        let old = Kernel { uprobe: false, ringbuf: Some(Err("Invalid argument".into())), epoll: false, ..all_there() };
        assert_eq!(old.missing_for("doctor"), ["uprobes (CONFIG_UPROBE_EVENTS)"]);
        assert_eq!(old.missing_for("cpu"), ["the BPF ring buffer (Linux 5.8)"]);
        assert_eq!(old.missing_for("epoll-loop").len(), 2);
        let unprivileged = Kernel { privileged: false, ringbuf: None, ..all_there() };
        assert!(unprivileged.missing_for("cpu")[0].starts_with("privileges"));
    }

    #[test]
    fn may_trace_itself_and_leaves_a_missing_pid_to_the_caller() {
        may_trace(std::process::id()).unwrap();
        may_trace(u32::MAX - 1).unwrap();
    }

    #[test]
    fn tracefs_is_found_in_the_mount_table() {
        // setup mounts it (and this machine kind has it): where tests run, it is there.
        assert!(tracefs_mount().is_some_and(|m| m.contains("tracing")));
    }
}
