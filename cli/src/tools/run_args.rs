//! The options every tracing command takes (whom to look at, for how long),
//! and those of every command that draws stacks.

use std::time::Duration;

use anyhow::Result;

use crate::{
    stacks::{Lines, StackKind},
    target::aim::Aim,
};

#[derive(clap::Args)]
pub struct RunArgs {
    /// An nginx master (all its workers, merged; new ones after a reload or a crash
    /// are followed), a worker, or any LuaJIT process.
    #[arg(long)]
    pub pid: u32,
    /// How long to run; Ctrl-C stops early and still writes everything.
    #[arg(long, default_value = "10s", value_parser = ljprobe_host::duration::parse)]
    pub duration: Duration,
}

#[derive(clap::Args)]
pub struct StackArgs {
    #[arg(long, value_enum, default_value = "lua")]
    pub stack: StackKind,
    /// Add the kernel frames on top of each stack (off-CPU: where the thread left the CPU).
    #[arg(long)]
    pub kernel: bool,
    /// With an nginx master: one tower per worker instead of merging them.
    #[arg(long)]
    pub per_worker: bool,
    /// Lua frames carry the line they were executing, `name file:LINE @AT`:
    /// the innermost (`--lines`) or every frame (`--lines all`).
    #[arg(long, value_enum, num_args = 0..=1, default_value = "none", default_missing_value = "innermost", require_equals = false)]
    pub lines: Lines,
}

impl StackArgs {
    pub fn native(&self) -> bool {
        self.stack != StackKind::Lua
    }

    /// The processes to look at: Lua stacks need a LuaJIT; native stacks do not.
    pub fn aim(&self, pid: u32) -> Result<Aim> {
        Aim::open(pid, !self.native(), ", or use --stack c", "; the graph shows C only")
    }
}
