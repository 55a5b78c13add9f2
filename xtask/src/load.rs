//! Driving the gateway with wrk and gateway/load/vary.lua (requests vary, like the
//! counter.lua example users start from).

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{cmd, paths};

#[derive(Debug, Clone)]
pub struct Load {
    pub url: String,
    pub route: String,
    pub duration: Duration,
    pub connections: u32,
    /// Total requests per second, paced per connection; None = as fast as possible.
    pub rate: Option<u32>,
}

impl Load {
    fn command(&self) -> Result<Command> {
        if !self.route.starts_with('/') {
            bail!("a route starts with '/', e.g. /hot/jit");
        }
        let mut c = Command::new("wrk");
        c.arg("-t1")
            .arg(format!("-c{}", self.connections.max(1)))
            .arg(format!("-d{}s", self.duration.as_secs().max(1)))
            .arg("--latency")
            .arg("-s")
            .arg(paths::gateway_src().join("load/vary.lua"))
            .arg(format!("{}{}", self.url, self.route));
        if let Some(rate) = self.rate.filter(|&r| r > 0) {
            // wrk sends the next request on a connection after `delay()` ms.
            let delay_ms = (self.connections.max(1) as f64 * 1000.0 / rate as f64).max(0.0);
            c.arg("--").arg(format!("{delay_ms:.3}"));
        }
        Ok(c)
    }

    /// Runs to completion and returns wrk's report.
    pub fn run(&self) -> Result<String> {
        let mut c = self.command()?;
        eprintln!("+ {}", cmd::describe(&c));
        cmd::output(&mut c)
    }

    /// Starts in the background (for a tool to watch); wait on the child to finish.
    pub fn spawn(&self) -> Result<Child> {
        let mut c = self.command()?;
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c.spawn().context("cannot start wrk (run `cargo xtask setup`)")
    }
}

/// Requests/sec from wrk's report.
pub fn requests_per_sec(report: &str) -> Option<f64> {
    report.lines().find_map(|l| l.trim().strip_prefix("Requests/sec:")?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_requests_per_sec() {
        let report = "  1000 requests in 1.00s\nRequests/sec:   4521.33\nTransfer/sec: 1MB\n";
        assert_eq!(requests_per_sec(report), Some(4521.33));
        assert_eq!(requests_per_sec("nothing"), None);
    }

    #[test]
    fn paces_by_connection() {
        let l = Load {
            url: "http://127.0.0.1:1".into(),
            route: "/x".into(),
            duration: Duration::from_secs(1),
            connections: 4,
            rate: Some(200),
        };
        let args: Vec<String> = l.command().unwrap().get_args().map(|a| a.to_string_lossy().into()).collect();
        assert_eq!(args.last().unwrap(), "20.000");
    }
}
