//! The options every tracing command takes: whom to look at, for how long.

use std::time::Duration;

#[derive(clap::Args)]
pub struct RunArgs {
    /// An nginx master (all its workers, merged), a worker, or any LuaJIT process.
    #[arg(long)]
    pub pid: u32,
    /// How long to run; Ctrl-C stops early and still writes everything.
    #[arg(long, default_value = "10s", value_parser = crate::duration::parse)]
    pub duration: Duration,
}
