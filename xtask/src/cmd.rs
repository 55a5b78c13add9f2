//! Running external programs with their command line shown, failing in one sentence.

use std::{
    io::{BufRead, BufReader},
    process::{Command, ExitStatus, Stdio},
};

use anyhow::{bail, Context, Result};

pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd`, letting it print, and fails with its command line if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    eprintln!("+ {line}");
    let status = cmd.status().with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its standard output.
pub fn output(cmd: &mut Command) -> Result<String> {
    let line = describe(cmd);
    let out = cmd.stderr(Stdio::piped()).output().with_context(|| format!("cannot start `{line}`"))?;
    if !out.status.success() {
        bail!("`{line}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// True when `program args` runs and exits 0, printing nothing.
pub fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct TestTotals {
    pub passed: u64,
    pub failed: u64,
}

impl TestTotals {
    /// Adds a libtest line `test result: ok. 7 passed; 0 failed; ...`.
    pub fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result:") else { return };
        for part in rest.split(';') {
            let words: Vec<&str> = part.split_whitespace().collect();
            if let [.., n, what] = words[..] {
                let n: u64 = n.parse().unwrap_or(0);
                match what {
                    "passed" => self.passed += n,
                    "failed" => self.failed += n,
                    _ => {}
                }
            }
        }
    }
}

/// Runs cargo test, passing its output through, and adds up its result lines.
pub fn run_counting_tests(cmd: &mut Command) -> Result<(ExitStatus, TestTotals)> {
    let line = describe(cmd);
    eprintln!("+ {line}");
    let mut child = cmd.stdout(Stdio::piped()).spawn().with_context(|| format!("cannot start `{line}`"))?;
    let mut totals = TestTotals::default();
    if let Some(out) = child.stdout.take() {
        for l in BufReader::new(out).lines().map_while(|l| l.ok()) {
            println!("{l}");
            totals.add_line(&l);
        }
    }
    Ok((child.wait()?, totals))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_up_libtest_result_lines() {
        let mut t = TestTotals::default();
        t.add_line("test result: ok. 7 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 8.44s");
        t.add_line("test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out");
        t.add_line("running 5 tests");
        assert_eq!(t, TestTotals { passed: 10, failed: 2 });
    }
}
