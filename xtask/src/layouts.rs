//! `cargo xtask layouts`: rewrites every built-in layout file (cli/layouts/)
//! from the DWARF of the `-g` build it names in `generated_from`, with
//! `ljprobe layout`, the same code a user runs for a build of their own.

use std::{fs, process::Command};

use anyhow::{bail, Context, Result};

use crate::{cmd, paths};

pub fn run() -> Result<()> {
    cmd::run(Command::new("cargo").args(["build", "--package", "ljprobe"]).current_dir(paths::root()))?;
    let dir = paths::root().join("cli/layouts");
    let mut files: Vec<_> = fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    for file in files {
        let text = fs::read_to_string(&file)?;
        let field = |key: &str| -> Result<String> {
            let line = text
                .lines()
                .find_map(|l| l.strip_prefix(key)?.trim_start().strip_prefix('='))
                .with_context(|| format!("{} has no `{key}`", file.display()))?;
            // The generator writes simple strings, which read as JSON strings.
            serde_json::from_str(line.trim()).with_context(|| format!("`{key}` in {}", file.display()))
        };
        let (name, describe, from) = (field("name")?, field("describe")?, field("generated_from")?);
        if !paths::root().join(&from).exists() {
            bail!("{}: its debug build {from} is missing: run `cargo xtask setup`", file.display());
        }
        eprintln!("layouts: {name} from {from}");
        cmd::run(
            Command::new(paths::ljprobe_bin())
                .args(["layout", &from, "--name", &name, "--describe", &describe, "--out"])
                .arg(&file)
                .current_dir(paths::root()),
        )?;
    }
    Ok(())
}
