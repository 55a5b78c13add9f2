//! The file users copy to a server (`cargo xtask dist`): it needs no other file,
//! and installed with file capabilities it lets a user profile that user's own
//! processes and nothing else.

use std::{
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::Duration,
};

use ljprobe_tests::{assert_one_sentence, require_root, stderr, stdout, Background};
use serde_json::Value;

/// A LuaJIT program that stays busy in one known function.
const BUSY: &str = r#"
local function heavy(n)
  local x = 0
  for i = 1, n do x = (x + i * 3) % 1000003 end
  return x
end
local sink = 0
while true do sink = sink + heavy(200000) end
"#;

const NOBODY: u32 = 65534;

/// `target/dist/ljprobe`, built by `cargo xtask test` (LJPROBE_DIST) or now.
fn dist_binary() -> PathBuf {
    xtask::dist::binary_built().expect("the static build (cargo xtask dist)")
}

/// A directory of its own under /tmp (reachable by every user: the test user
/// must reach the binary and the script), removed when dropped WITHOUT ever
/// recursing: a mount left inside it would make removal fail, never delete
/// what is mounted there.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = PathBuf::from(format!("/tmp/ljprobe-test-{name}-{}", std::process::id()));
        let s = Scratch(dir);
        s.clean();
        fs::create_dir(&s.0).unwrap();
        fs::set_permissions(&s.0, fs::Permissions::from_mode(0o755)).unwrap();
        s
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    fn clean(&self) {
        if let Ok(meta) = fs::symlink_metadata(&self.0) {
            remove_tree(&self.0, meta.dev());
        }
    }
}

/// Removes `dir` and what it holds on device `dev`; a directory on another
/// device (a mount point) is unmounted and removed only once empty: removal
/// never crosses into a mounted /proc or /sys.
fn remove_tree(dir: &Path, dev: u64) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.filter_map(|e| e.ok()) {
            let p = e.path();
            let Ok(meta) = fs::symlink_metadata(&p) else { continue };
            if !meta.is_dir() {
                let _ = fs::remove_file(&p);
            } else if meta.dev() == dev {
                remove_tree(&p, dev);
            } else {
                let _ = Command::new("umount").arg("-R").arg(&p).status();
                let _ = fs::remove_dir(&p);
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.clean();
    }
}

/// `/usr/bin/luajit` running BUSY as `uid` (root when None), killed when dropped.
fn busy_luajit(script: &Path, uid: Option<u32>) -> Background {
    let mut cmd = match uid {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}")).arg(format!("--regid={uid}")).arg("--clear-groups").arg("/usr/bin/luajit");
            c
        }
        None => Command::new("/usr/bin/luajit"),
    };
    let child = cmd.arg(script).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("luajit starts");
    let kid = Background(child);
    // Until it has mapped LuaJIT and is in its loop (setpriv execs in place).
    for _ in 0..100 {
        let exe = fs::read_link(format!("/proc/{}/exe", kid.id())).unwrap_or_default();
        if exe == Path::new("/usr/bin/luajit") {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(300));
    kid
}

fn copy_executable(from: &Path, to: &Path) {
    fs::copy(from, to).unwrap();
    fs::set_permissions(to, fs::Permissions::from_mode(0o755)).unwrap();
}

fn write_readable(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
}

fn top_frame(summary: &Value) -> String {
    summary["top_frames"][0]["frame"].as_str().unwrap_or_default().to_string()
}

#[test]
fn the_static_binary_alone_in_an_empty_chroot_checks_and_profiles_a_live_luajit() {
    require_root();
    let bin = dist_binary();
    let version = Command::new(&bin).arg("--version").output().unwrap();
    let version = stdout(&version);
    assert!(version.contains("x86_64-unknown-linux-musl") && version.contains("commit "), "{version}");

    let scratch = Scratch::new("chroot");
    let script = scratch.path("busy.lua");
    write_readable(&script, BUSY);
    let target = busy_luajit(&script, None);
    let pid = target.id().to_string();

    // The root holds the binary and two empty mount points, nothing else.
    let root = scratch.path("root");
    fs::create_dir(&root).unwrap();
    copy_executable(&bin, &root.join("ljprobe"));
    for d in ["proc", "sys"] {
        fs::create_dir(root.join(d)).unwrap();
    }
    // The mounts live in a mount namespace of their own: they vanish with
    // its last process, whatever happens to this test.
    let in_chroot = |args: &[&str]| -> Output {
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(r#"set -e; r="$1"; shift; mount --bind /proc "$r/proc"; mount --rbind /sys "$r/sys"; exec chroot "$r" /ljprobe "$@""#)
            .arg("sh")
            .arg(&root)
            .args(args)
            .output()
            .unwrap()
    };

    let doctor = in_chroot(&["doctor", "--pid", &pid, "--wait", "10s"]);
    let text = stdout(&doctor);
    assert!(doctor.status.success(), "doctor failed in the chroot:\n{text}\n{}", stderr(&doctor));
    assert!(text.contains(&format!("Process {pid}")) && text.contains("global_State at"), "{text}");
    for tool in ["doctor --pid", "cpu", "offcpu", "epoll-loop"] {
        let line = text.lines().find(|l| l.contains(&format!("  {tool} "))).unwrap_or_else(|| panic!("no {tool} line:\n{text}"));
        assert!(line.trim_start().starts_with("ok"), "{line}");
    }

    let cpu = in_chroot(&["cpu", "--pid", &pid, "--duration", "2s", "--stack", "mixed", "--json", "/cpu.json", "--svg", "/cpu.svg"]);
    assert!(cpu.status.success(), "cpu failed in the chroot:\n{}\n{}", stdout(&cpu), stderr(&cpu));
    let summary: Value = serde_json::from_str(&fs::read_to_string(root.join("cpu.json")).unwrap()).unwrap();
    assert!(summary["samples"].as_u64().unwrap() > 0, "{summary}");
    assert!(top_frame(&summary).starts_with("heavy "), "the busy function is not on top: {summary}");
    assert!(fs::read_to_string(root.join("cpu.svg")).unwrap().contains("heavy"), "no heavy frame in the SVG");

    // Nothing else was needed: the root holds only what was put there and what ljprobe wrote.
    let mut names: Vec<String> =
        fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["cpu.json", "cpu.svg", "ljprobe", "proc", "sys"]);
}

/// `perf stat` counts of bpf() and perf_event_open() calls made by `cmd`
/// (and its children): what a refusal must not have made.
fn counting_bpf_calls(scratch: &Scratch, name: &str, cmd: &mut Command) -> (Output, u64, u64) {
    let counts = scratch.path(&format!("{name}.perf"));
    let mut perf = Command::new("perf");
    perf.args(["stat", "-x,", "-e", "syscalls:sys_enter_bpf,syscalls:sys_enter_perf_event_open", "-o"])
        .arg(&counts)
        .arg("--")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    if let Some(dir) = cmd.get_current_dir() {
        perf.current_dir(dir);
    }
    let out = perf.output().unwrap();
    let text = fs::read_to_string(&counts).unwrap_or_default();
    let count = |event: &str| -> u64 {
        text.lines()
            .find(|l| l.contains(event))
            .and_then(|l| l.split(',').next()?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {event} count from perf stat:\n{text}"))
    };
    let (bpf, perf_open) = (count("sys_enter_bpf"), count("sys_enter_perf_event_open"));
    (out, bpf, perf_open)
}

#[test]
fn a_capability_install_profiles_the_users_own_process_and_refuses_roots() {
    require_root();
    let bin = dist_binary();
    let scratch = Scratch::new("caps");
    let script = scratch.path("busy.lua");
    write_readable(&script, BUSY);
    // docs/install.md's set: load and attach (CAP_BPF, CAP_PERFMON), read tracefs (CAP_DAC_READ_SEARCH).
    let installed = scratch.path("ljprobe");
    copy_executable(&bin, &installed);
    let setcap = Command::new("setcap").arg("cap_bpf,cap_perfmon,cap_dac_read_search+ep").arg(&installed).output().unwrap();
    assert!(setcap.status.success(), "setcap: {}", stderr(&setcap));
    let out = scratch.path("out");
    fs::create_dir(&out).unwrap();
    std::os::unix::fs::chown(&out, Some(NOBODY), Some(NOBODY)).unwrap();

    let own = busy_luajit(&script, Some(NOBODY));
    let roots = busy_luajit(&script, None);
    let as_user = |args: &[&str]| -> Command {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={NOBODY}")).arg(format!("--regid={NOBODY}")).arg("--clear-groups").arg(&installed).args(args);
        c.current_dir(&out);
        c
    };

    // The user's own process: checked and profiled without root.
    let own_pid = own.id().to_string();
    let doctor = as_user(&["doctor", "--pid", &own_pid, "--wait", "10s"]).output().unwrap();
    assert!(doctor.status.success(), "doctor as the user:\n{}\n{}", stdout(&doctor), stderr(&doctor));
    assert!(stdout(&doctor).contains("global_State at"), "{}", stdout(&doctor));
    let (cpu, bpf_calls, perf_opens) =
        counting_bpf_calls(&scratch, "own", &mut as_user(&["cpu", "--pid", &own_pid, "--duration", "2s", "--stack", "mixed", "--json", "cpu.json"]));
    assert!(cpu.status.success(), "cpu as the user:\n{}\n{}", stdout(&cpu), stderr(&cpu));
    let summary: Value = serde_json::from_str(&fs::read_to_string(out.join("cpu.json")).unwrap()).unwrap();
    assert!(top_frame(&summary).starts_with("heavy "), "the busy function is not on top: {summary}");
    // The counting works: a run that traces makes both calls.
    assert!(bpf_calls > 0 && perf_opens > 0, "perf stat saw {bpf_calls} bpf() and {perf_opens} perf_event_open() calls");
    // Tracefs is read through CAP_DAC_READ_SEARCH, raised only for that.
    let offcpu = as_user(&["offcpu", "--pid", &own_pid, "--duration", "1s", "--json", "offcpu.json"]).output().unwrap();
    assert!(offcpu.status.success(), "offcpu as the user:\n{}\n{}", stdout(&offcpu), stderr(&offcpu));

    // Root's process: one sentence, before any program is loaded or attached.
    let root_pid = roots.id().to_string();
    for tool in ["cpu", "doctor"] {
        let mut cmd = as_user(&[tool, "--pid", &root_pid]);
        let (refused, bpf_calls, perf_opens) = counting_bpf_calls(&scratch, tool, &mut cmd);
        assert_one_sentence(&refused, &format!("may not trace process {root_pid} (luajit): it runs as root"));
        assert_eq!((bpf_calls, perf_opens), (0, 0), "{tool}: the refused run made bpf() or perf_event_open() calls");
    }
    drop(own);
    drop(roots);
}
