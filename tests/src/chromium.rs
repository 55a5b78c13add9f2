//! Headless Chromium on a page `ljprobe report` wrote: what a browser makes of
//! it (scripts run, graphs drawn), and a screenshot for a human to look at.

use std::{
    fs,
    io::Read,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};

pub const CHROMIUM: &str = "/usr/bin/chromium";
/// A run that takes longer has hung (a page this size renders in about a second).
const TIMEOUT: Duration = Duration::from_secs(60);
/// Virtual time: timers and loads run to completion without waiting in real time.
const BUDGET_MS: u32 = 10_000;
/// The window every run lays the page out in, and the screenshot's size.
pub const WINDOW: (u32, u32) = (1400, 2400);

/// What the page's own check script recorded on `<body>`.
#[derive(Debug)]
pub struct Rendered {
    /// `data-graphs`: graphs on the page.
    pub graphs: usize,
    /// `data-graphs-rendered`: those whose document holds a drawn SVG.
    pub rendered: usize,
    /// The page's DOM after its scripts ran.
    pub dom: String,
}

/// Opens `html`, reads what its check script found, and saves a screenshot
/// of the top of the page (WINDOW) to `screenshot`.
pub fn check_page(html: &Path, screenshot: &Path) -> Result<Rendered> {
    let dom = dump_dom(html)?;
    let body = body_tag(&dom).context("the dumped DOM has no <body>")?;
    let count = |name: &str| -> Result<usize> {
        let v = attr(body, name).with_context(|| {
            format!("<body> has no {name}: the page's check script did not run or did not finish ({body})")
        })?;
        v.parse().with_context(|| format!("{name}=\"{v}\" is not a count"))
    };
    let graphs = count("data-graphs")?;
    let rendered = count("data-graphs-rendered")?;
    save_screenshot(html, screenshot)?;
    Ok(Rendered { graphs, rendered, dom })
}

/// The page's DOM once its scripts have run.
pub fn dump_dom(html: &Path) -> Result<String> {
    let out = run(html, &["--dump-dom".to_string()])?;
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(dom.contains("<body"), "Chromium dumped no document for {}:\n{}", html.display(), out.stderr_tail());
    Ok(dom)
}

/// A PNG of the top WINDOW of the page.
pub fn save_screenshot(html: &Path, png: &Path) -> Result<()> {
    let png = std::path::absolute(png)?;
    let _ = fs::remove_file(&png);
    let out = run(html, &[format!("--screenshot={}", png.display())])?;
    let bytes = fs::read(&png).with_context(|| format!("Chromium wrote no screenshot to {}:\n{}", png.display(), out.stderr_tail()))?;
    // Signature, then the IHDR chunk: width and height, big-endian.
    ensure!(bytes.len() > 24 && bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{} is not a PNG", png.display());
    let (w, h) = (be32(&bytes[16..20]), be32(&bytes[20..24]));
    ensure!((w, h) == WINDOW, "{} is {w}x{h}, not {}x{}", png.display(), WINDOW.0, WINDOW.1);
    // A window this size with one line of text on it is about 15 KB; the
    // test page with its graphs about 150 KB.
    ensure!(bytes.len() > 40_000, "{} is only {} bytes: a blank page?", png.display(), bytes.len());
    Ok(())
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

struct Output {
    stdout: Vec<u8>,
    stderr: String,
}

impl Output {
    fn stderr_tail(&self) -> String {
        let lines: Vec<&str> = self.stderr.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

/// One headless Chromium run on `html` with a fresh profile.
fn run(html: &Path, extra: &[String]) -> Result<Output> {
    ensure!(Path::new(CHROMIUM).exists(), "{CHROMIUM} is missing: `cargo xtask setup` installs it");
    let url = file_url(&fs::canonicalize(html).with_context(|| format!("{} is missing", html.display()))?);
    let scratch = Scratch::new()?;
    let (stdout_path, stderr_path) = (scratch.0.join("stdout"), scratch.0.join("stderr"));
    let mut cmd = Command::new(CHROMIUM);
    cmd.args([
        "--headless",
        // Tests run as root, where Chromium refuses its sandbox.
        "--no-sandbox",
        "--disable-gpu",
        // Without these it waits on a network this machine does not have.
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", scratch.0.join("profile").display()))
    .arg(format!("--virtual-time-budget={BUDGET_MS}"))
    // The same layout for the DOM as for the screenshot.
    .arg(format!("--window-size={},{}", WINDOW.0, WINDOW.1))
    .args(extra)
    .arg(&url)
    // Files rather than pipes: no reader threads, and nothing blocks on a full pipe.
    .stdin(Stdio::null())
    .stdout(fs::File::create(&stdout_path)?)
    .stderr(fs::File::create(&stderr_path)?)
    // Its own process group, so that a hung run is killed with every helper
    // process it started, and nothing else.
    .process_group(0);
    let mut child = cmd.spawn().with_context(|| format!("cannot start {CHROMIUM}"))?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            // SAFETY: signalling the process group of our own child.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            bail!("Chromium did not finish {url} within {}s:\n{}", TIMEOUT.as_secs(), tail(&stderr_path));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stdout = Vec::new();
    fs::File::open(&stdout_path)?.read_to_end(&mut stdout)?;
    let out = Output { stdout, stderr: fs::read_to_string(&stderr_path).unwrap_or_default() };
    ensure!(status.success(), "Chromium failed on {url} ({status}):\n{}", out.stderr_tail());
    Ok(out)
}

fn tail(path: &Path) -> String {
    Output { stdout: Vec::new(), stderr: fs::read_to_string(path).unwrap_or_default() }.stderr_tail()
}

/// A fresh directory for one run's profile and output, removed afterwards.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ljprobe-chromium-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `file://` URL of an absolute path, bytes outside the unreserved set escaped.
fn file_url(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut url = String::from("file://");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

/// The `<body ...>` start tag of a serialized document.
pub fn body_tag(dom: &str) -> Option<&str> {
    let at = dom.find("<body")?;
    let end = dom[at..].find('>')?;
    Some(&dom[at..=at + end])
}

/// An attribute's value in a start tag as Chromium serializes it (`name="value"`).
pub fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let at = tag.find(&key)? + key.len();
    tag[at..].find('"').map(|end| &tag[at..at + end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_body_attributes() {
        let dom = "<html><head></head><body class=\"x\" data-graphs=\"2\" data-graphs-rendered=\"1\"><p data-graphs=\"9\"></p>";
        let body = body_tag(dom).unwrap();
        assert_eq!(attr(body, "data-graphs"), Some("2"));
        assert_eq!(attr(body, "data-graphs-rendered"), Some("1"));
        assert_eq!(attr(body, "data-other"), None);
    }

    #[test]
    fn file_urls_escape() {
        assert_eq!(file_url(Path::new("/tmp/a b/ü#.html")), "file:///tmp/a%20b/%C3%BC%23.html");
    }
}
