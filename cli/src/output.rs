//! Creating the files ljprobe writes (SVG, folded stacks, JSON), safely as root.
//!
//! ljprobe runs as root, usually under `sudo`, and writes wherever the user says,
//! often `/tmp`. Two things follow:
//!
//! - **Symbolic links at an output path are refused, in every directory.** A root
//!   process that opens `/tmp/x.svg` with `O_CREAT|O_TRUNC` follows a link another
//!   user planted there and truncates `/etc/shadow`. Plain tools (`perf record -o`,
//!   `tcpdump -w`) just open the path and rely on the kernel's
//!   `fs.protected_symlinks`, which only covers sticky world-writable directories
//!   and can be off (it is off on this project's test machines). Refusing only in
//!   "directories others can write" would need a check that is easy to get wrong
//!   (group membership, ACLs, a parent directory another user can rename, bind
//!   mounts), and a rule that depends on the directory is hard to predict. A link as
//!   the output path of a new profile is almost never meant, and the way round is
//!   one step: give the path it points to. So: `O_NOFOLLOW` on the last component,
//!   always; directories on the way are followed as usual (`/var/run -> /run`).
//! - **Existing files in a directory other users can write** (mode `g+w` or `o+w`,
//!   like `/tmp`) are rewritten only if they belong to root or to the user who ran
//!   `sudo` (a second run over the first run's output), and have no other hard link.
//!   A file another user made there is theirs to plant (a hard link to a root file
//!   where `fs.protected_hardlinks` is off); the kernel's `fs.protected_regular`
//!   refuses the same case for `O_CREAT` opens when it is on. ljprobe applies the
//!   rule whatever the sysctls say, and says so in one sentence.
//!
//! New files are created with `O_CREAT|O_EXCL` (which never follows a link and fails
//! if anything appeared in between), existing ones are opened without `O_CREAT`
//! (so `protected_regular` does not refuse the sudo user's own file) and truncated
//! after the checks, on the open descriptor. Non-regular files (`/dev/null`, a
//! named pipe someone reads) are written as they are.
//!
//! Under `sudo` (root, with `SUDO_UID`/`SUDO_GID`), every file ljprobe CREATES is
//! given to the invoking user with `fchown`: they asked for it, they can delete it.
//! Existing files keep their owner (ljprobe never takes a file away from anyone).

use std::{
    fs::{self, File, OpenOptions},
    io::{ErrorKind, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::Path,
};

use anyhow::{anyhow, bail, Result};

/// Writes `bytes` to `path` (see the module comment for the rules).
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = create(path)?;
    f.write_all(bytes).map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

/// Opens `path` for writing, empty, created if missing and then owned by the
/// user who ran sudo.
pub fn create(path: &Path) -> Result<File> {
    create_for(path, invoking_user())
}

/// Checks `path` before a run starts, so that a refusal comes before minutes of
/// tracing rather than after. `create` checks again when it writes.
pub fn check(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => Err(symlink_refusal(path)),
        Ok(meta) if meta.is_dir() => bail!("cannot write {}: it is a directory; give a file name", path.display()),
        Ok(meta) => shared_dir_check(path, &meta, invoking_user()),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let dir = parent(path);
            if !dir.is_dir() {
                bail!("cannot write {}: directory {} does not exist", path.display(), dir.display());
            }
            Ok(())
        }
        Err(e) => bail!("cannot write {}: {e}", path.display()),
    }
}

/// `check` for a tool's SVG and, unless it goes to standard output ("-"),
/// its JSON summary.
pub fn check_svg_json(svg: &Path, json: Option<&Path>) -> Result<()> {
    check(svg)?;
    match json {
        Some(path) if path.as_os_str() != "-" => check(path),
        _ => Ok(()),
    }
}

/// The user who ran `sudo`: (uid, gid), when ljprobe is root and both
/// `SUDO_UID` and `SUDO_GID` are numbers (other than root's).
pub fn invoking_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    sudo_user(euid, std::env::var("SUDO_UID").ok().as_deref(), std::env::var("SUDO_GID").ok().as_deref())
}

fn sudo_user(euid: u32, uid: Option<&str>, gid: Option<&str>) -> Option<(u32, u32)> {
    if euid != 0 {
        return None;
    }
    let (uid, gid) = (uid?.trim().parse::<u32>().ok()?, gid?.trim().parse::<u32>().ok()?);
    // u32::MAX is chown's "leave unchanged" value, never a real user.
    (uid != 0 && uid != u32::MAX && gid != u32::MAX).then_some((uid, gid))
}

fn create_for(path: &Path, owner: Option<(u32, u32)>) -> Result<File> {
    // A few tries: something may appear or vanish at the path between the two opens.
    for _ in 0..3 {
        // Existing file: no O_CREAT, no O_TRUNC yet (the checks come first);
        // O_NONBLOCK so that a named pipe without a reader fails instead of hanging.
        let existing = OpenOptions::new().write(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path);
        match existing {
            Ok(f) => {
                let meta = f.metadata().map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
                if meta.file_type().is_file() {
                    shared_dir_check(path, &meta, owner)?;
                    f.set_len(0).map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
                }
                clear_nonblock(&f);
                return Ok(f);
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(open_error(path, e)),
        }
        // New file: O_EXCL never follows a link and fails if anything is there now.
        match OpenOptions::new().write(true).create_new(true).mode(0o666).open(path) {
            Ok(f) => {
                if let Some((uid, gid)) = owner {
                    // SAFETY: fchown on a descriptor we own.
                    if unsafe { libc::fchown(std::os::fd::AsRawFd::as_raw_fd(&f), uid, gid) } != 0 {
                        let e = std::io::Error::last_os_error();
                        log::warn!("could not give {} to uid {uid} (the user who ran sudo): {e}", path.display());
                    }
                }
                return Ok(f);
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                bail!("cannot write {}: directory {} does not exist", path.display(), parent(path).display())
            }
            Err(e) => return Err(open_error(path, e)),
        }
    }
    bail!("refusing to write {}: something keeps replacing it while ljprobe opens it; choose another path", path.display())
}

/// An existing regular file in a directory other users can write must be root's
/// or the sudo user's, with no other hard link.
fn shared_dir_check(path: &Path, meta: &fs::Metadata, owner: Option<(u32, u32)>) -> Result<()> {
    if !meta.file_type().is_file() {
        return Ok(());
    }
    let dir = parent(path);
    let Ok(dir_meta) = fs::metadata(dir) else { return Ok(()) };
    if dir_meta.mode() & 0o022 == 0 {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let ours = meta.uid() == me || owner.is_some_and(|(uid, _)| meta.uid() == uid);
    if !ours {
        bail!(
            "refusing to write {}: it already exists in {}, a directory other users can write, and belongs to \
             uid {}, not to you; remove it or choose another path",
            path.display(),
            dir.display(),
            meta.uid()
        );
    }
    if meta.nlink() > 1 {
        bail!(
            "refusing to write {}: it has {} hard links and sits in {}, a directory other users can write; \
             remove it or choose another path",
            path.display(),
            meta.nlink(),
            dir.display()
        );
    }
    Ok(())
}

fn symlink_refusal(path: &Path) -> anyhow::Error {
    let to = fs::read_link(path).map(|t| format!(" to {}", t.display())).unwrap_or_default();
    anyhow!(
        "refusing to write {}: it is a symbolic link{to}, and ljprobe (running as root) does not follow links at \
         output paths; remove it, or give the path of the file itself",
        path.display()
    )
}

fn open_error(path: &Path, e: std::io::Error) -> anyhow::Error {
    match e.raw_os_error() {
        // O_NOFOLLOW on a link (ELOOP; EMLINK on some BSDs, never here).
        Some(libc::ELOOP) if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) => symlink_refusal(path),
        Some(libc::ENXIO) => anyhow!("cannot write {}: it is a named pipe that nobody reads", path.display()),
        // fs.protected_regular: an O_CREAT open of another user's file in a sticky directory.
        Some(libc::EACCES) | Some(libc::EPERM) => match fs::symlink_metadata(path) {
            Ok(m) => anyhow!(
                "cannot write {}: the kernel refuses it (it belongs to uid {} and sits in a shared directory); \
                 remove it or choose another path",
                path.display(),
                m.uid()
            ),
            Err(_) => anyhow!("cannot write {}: permission denied", path.display()),
        },
        _ => anyhow!("cannot write {}: {e}", path.display()),
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes block again once the file is open (a pipe's reader may be slow).
fn clear_nonblock(f: &File) {
    let fd = std::os::fd::AsRawFd::as_raw_fd(f);
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt};

    use super::*;

    /// A fresh directory under the system's temp dir, with `mode`.
    fn dir(name: &str, mode: u32) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("ljprobe-output-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(mode)).unwrap();
        d
    }

    fn root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    fn chown(p: &Path, uid: u32, gid: u32) {
        std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
    }

    #[test]
    fn creates_a_new_file() {
        let d = dir("new", 0o755);
        let p = d.join("x.svg");
        write(&p, b"<svg/>").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"<svg/>");
        // Rewriting our own file truncates it.
        write(&p, b"ab").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"ab");
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn refuses_a_symlink_and_leaves_its_target_alone() {
        for (name, mode) in [("link-private", 0o755), ("link-shared", 0o1777)] {
            let d = dir(name, mode);
            let victim = d.join("victim");
            fs::write(&victim, "precious").unwrap();
            let p = d.join("x.svg");
            symlink(&victim, &p).unwrap();
            let err = format!("{:#}", create_for(&p, None).unwrap_err());
            assert!(err.starts_with(&format!("refusing to write {}: it is a symbolic link", p.display())), "{err}");
            assert!(err.contains("give the path of the file itself"), "{err}");
            assert!(!err.contains('\n'), "{err}");
            let early = format!("{:#}", check(&p).unwrap_err());
            assert_eq!(early, err);
            assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
            // A dangling link too: O_EXCL does not create its target.
            let p2 = d.join("y.svg");
            symlink(d.join("nothing-here"), &p2).unwrap();
            assert!(format!("{:#}", create_for(&p2, None).unwrap_err()).contains("symbolic link"));
            assert!(!d.join("nothing-here").exists());
            fs::remove_dir_all(d).unwrap();
        }
    }

    #[test]
    fn gives_new_files_to_the_sudo_user() {
        assert!(root(), "unit tests of chown need root");
        let d = dir("chown", 0o755);
        let p = d.join("x.svg");
        drop(create_for(&p, Some((65534, 65534))).unwrap());
        let m = fs::metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534));
        // An existing file keeps its owner.
        let q = d.join("root.svg");
        fs::write(&q, "old").unwrap();
        drop(create_for(&q, Some((65534, 65534))).unwrap());
        let m = fs::metadata(&q).unwrap();
        assert_eq!((m.uid(), m.len()), (0, 0));
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn existing_files_in_shared_directories() {
        assert!(root(), "unit tests of chown need root");
        let d = dir("shared", 0o1777);
        // Another user's file: refused, untouched, whatever protected_regular says.
        let p = d.join("theirs.svg");
        fs::write(&p, "theirs").unwrap();
        chown(&p, 65534, 65534);
        let err = format!("{:#}", create_for(&p, None).unwrap_err());
        assert!(err.contains("belongs to uid 65534, not to you"), "{err}");
        assert_eq!(format!("{:#}", check(&p).unwrap_err()), err);
        assert_eq!(fs::read_to_string(&p).unwrap(), "theirs");
        // ... unless that user ran sudo: a second run over their first run's file.
        drop(create_for(&p, Some((65534, 65534))).unwrap());
        assert_eq!(fs::read_to_string(&p).unwrap(), "");
        assert_eq!(fs::metadata(&p).unwrap().uid(), 65534);
        // A hard link to a file elsewhere: refused.
        let outside = dir("outside", 0o755).join("secret");
        fs::write(&outside, "secret").unwrap();
        let h = d.join("hard.svg");
        fs::hard_link(&outside, &h).unwrap();
        let err = format!("{:#}", create_for(&h, None).unwrap_err());
        assert!(err.contains("has 2 hard links"), "{err}");
        assert_eq!(fs::read_to_string(&outside).unwrap(), "secret");
        // A private directory: our files are ours to rewrite.
        fs::remove_dir_all(outside.parent().unwrap()).unwrap();
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn devices_and_missing_directories() {
        write(Path::new("/dev/null"), b"nothing").unwrap();
        let err = format!("{:#}", write(Path::new("/nonexistent-dir/x.svg"), b"").unwrap_err());
        assert_eq!(err, "cannot write /nonexistent-dir/x.svg: directory /nonexistent-dir does not exist");
        assert_eq!(format!("{:#}", check(Path::new("/nonexistent-dir/x.svg")).unwrap_err()), err);
        let err = format!("{:#}", check(Path::new("/tmp")).unwrap_err());
        assert_eq!(err, "cannot write /tmp: it is a directory; give a file name");
    }

    #[test]
    fn reads_sudo_variables() {
        assert_eq!(sudo_user(0, Some("1000"), Some("1001")), Some((1000, 1001)));
        assert_eq!(sudo_user(1000, Some("1000"), Some("1000")), None, "not root: nothing to give away");
        assert_eq!(sudo_user(0, Some("0"), Some("0")), None);
        assert_eq!(sudo_user(0, Some("abc"), Some("1000")), None);
        assert_eq!(sudo_user(0, Some("1000"), None), None);
        assert_eq!(sudo_user(0, None, None), None);
    }
}
