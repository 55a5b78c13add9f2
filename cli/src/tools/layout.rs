//! `ljprobe layout`: the layout file of a LuaJIT build, written from the DWARF
//! of its `-g` build, so a build ljprobe does not know can be added as one
//! file in `cli/layouts/` (docs/supported-luajit.md).

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};

use crate::target::layout_gen::{self, BuildFacts};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The `-g` build: a LuaJIT library (`libluajit-5.1.so.2`) or a program with LuaJIT inside.
    pub from: PathBuf,
    /// The layout's name, e.g. `upstream-2.1-gc64-x86_64`.
    #[arg(long)]
    pub name: String,
    /// One line saying which build this is.
    #[arg(long)]
    pub describe: String,
    /// The build's `jit/vmdef.lua` (its fast functions' names), when it is not
    /// installed under the library's prefix (`src/jit/vmdef.lua` of the build tree).
    #[arg(long)]
    pub vmdef: Option<PathBuf>,
    /// Write here instead of standard output.
    #[arg(long, short)]
    pub out: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let text = layout_gen::generate(
        &args.from,
        &BuildFacts { name: &args.name, describe: &args.describe, generated_from: &args.from.to_string_lossy(), vmdef: args.vmdef.as_deref() },
    )?;
    match &args.out {
        Some(path) => std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}
