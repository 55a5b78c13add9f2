//! Files ljprobe writes as root: under sudo they belong to the user who ran it, and
//! a symbolic link planted at an output path is refused, before the run.

use std::{
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
};

use ljprobe_tests::*;

/// `yes`, busy on a CPU: a target for `cpu --stack c` that needs no gateway.
struct Yes(Child);

impl Yes {
    fn start() -> Yes {
        Yes(Command::new("yes").stdout(Stdio::null()).spawn().unwrap())
    }

    fn pid(&self) -> String {
        self.0.id().to_string()
    }
}

impl Drop for Yes {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A fresh directory under target/test-out with `mode`.
fn fresh_dir(name: &str, mode: u32) -> PathBuf {
    let d = out_dir().join(name);
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(mode)).unwrap();
    d
}

/// `ljprobe cpu --stack c` on `pid` for 1 s, as if run with `sudo` by uid/gid 65534 (nobody).
fn cpu_under_sudo(pid: &str, outputs: &[&str]) -> Output {
    Command::new(ljprobe_bin())
        .args(["cpu", "--stack", "c", "--pid", pid, "--duration", "1s"])
        .args(outputs)
        .env("SUDO_UID", "65534")
        .env("SUDO_GID", "65534")
        .output()
        .expect("ljprobe runs")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn under_sudo_the_outputs_belong_to_the_user_who_ran_it() {
    require_root();
    let dir = fresh_dir("output-files-sudo", 0o755);
    let (svg, folded, json) = (dir.join("x.svg"), dir.join("x.folded"), dir.join("x.json"));
    let yes = Yes::start();
    let o = cpu_under_sudo(&yes.pid(), &["--svg", s(&svg), "--folded", s(&folded), "--json", s(&json)]);
    assert!(o.status.success(), "ljprobe failed:\n{}", stderr(&o));
    for f in [&svg, &folded, &json] {
        let m = fs::metadata(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert_eq!((m.uid(), m.gid()), (65534, 65534), "{} belongs to {}:{}", f.display(), m.uid(), m.gid());
        assert!(m.len() > 0, "{} is empty", f.display());
    }
}

#[test]
fn a_symlink_planted_in_a_shared_directory_is_refused_and_its_target_kept() {
    require_root();
    let shared = fresh_dir("output-files-shared", 0o1777);
    let private = fresh_dir("output-files-private", 0o755);
    let victim = private.join("victim");
    fs::write(&victim, "precious\n").unwrap();
    let link = shared.join("x.svg");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    // Another user plants it: the link is theirs.
    std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).unwrap();

    let yes = Yes::start();
    let o = cpu_under_sudo(&yes.pid(), &["--svg", s(&link)]);
    assert_one_sentence(&o, &format!("refusing to write {}: it is a symbolic link", link.display()));
    // Refused before the run: no "tracing" line (assert_one_sentence counts them too).
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
    let m = fs::metadata(&victim).unwrap();
    assert_eq!(m.uid(), 0, "the victim changed owner");
    assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
}
