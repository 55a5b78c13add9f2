//! Classic tracepoints: attaching, and reading where a tracepoint keeps its
//! fields from tracefs, so programs never assume a kernel's record layout.

use std::fs;

use anyhow::{anyhow, Context, Result};
use aya::{programs::TracePoint, Ebpf};
use ljprobe_common::SchedSwitchFormat;

use super::program_error;

const MOUNT_TRACEFS: &str = "mount it with `mount -t tracefs nodev /sys/kernel/tracing` (or run `ljprobe doctor`)";

/// Loads `program` once and attaches it to `category:name`.
pub fn attach(ebpf: &mut Ebpf, program: &str, category: &str, name: &str) -> Result<()> {
    let prog: &mut TracePoint = ebpf
        .program_mut(program)
        .with_context(|| format!("program {program} missing from its object"))?
        .try_into()?;
    if prog.fd().is_err() {
        prog.load().map_err(|e| program_error(&format!("loading {program}"), e))?;
    }
    // aya reads the tracepoint's id from tracefs.
    crate::system::with_tracefs(|| prog.attach(category, name)).map_err(|e| {
        if crate::system::with_tracefs(crate::system::tracefs_root).is_none() {
            return anyhow!("cannot attach to the {category}:{name} tracepoint: tracefs is not mounted; {MOUNT_TRACEFS}");
        }
        program_error(&format!("attaching to the {category}:{name} tracepoint"), e)
    })?;
    Ok(())
}

/// Whether this kernel has the tracepoint (e.g. `epoll_pwait2` is 5.11+).
pub fn exists(category: &str, name: &str) -> bool {
    crate::system::with_tracefs(|| {
        crate::system::tracefs_root().is_some_and(|t| t.join("events").join(category).join(name).is_dir())
    })
}

/// tracefs `events/CATEGORY/NAME/FILE`, and where it was read.
fn event_file(category: &str, name: &str, file: &str) -> Result<(String, std::path::PathBuf)> {
    let root = crate::system::with_tracefs(crate::system::tracefs_root)
        .ok_or_else(|| anyhow!("tracefs is not mounted, so {category}:{name} cannot be read; {MOUNT_TRACEFS}"))?;
    let path = root.join("events").join(category).join(name).join(file);
    let text = crate::system::with_tracefs(|| fs::read_to_string(&path))
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok((text, path))
}

/// The number perf knows tracepoint `category:name` by.
pub fn id(category: &str, name: &str) -> Result<u64> {
    let (text, path) = event_file(category, name, "id")?;
    text.trim().parse().with_context(|| format!("{} holds no number", path.display()))
}

/// Byte offsets of the named fields of `category:name`, in the order asked.
pub fn field_offsets<const N: usize>(category: &str, name: &str, fields: [&str; N]) -> Result<[u32; N]> {
    let (text, path) = event_file(category, name, "format")?;
    let mut out = [0u32; N];
    for (slot, field) in out.iter_mut().zip(fields) {
        *slot = offset_of(&text, field)
            .ok_or_else(|| anyhow!("{} has no field {field}: this kernel's {category}:{name} is not the known one", path.display()))?;
    }
    Ok(out)
}

/// From lines like `field:pid_t prev_pid; offset:24; size:4; signed:1;` (tab-separated).
fn offset_of(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let decl = line.trim().strip_prefix("field:")?.split(';').next()?;
        let declared = decl.rsplit([' ', '*']).next()?;
        let declared = declared.split('[').next()?;
        if declared != field {
            return None;
        }
        let offset = line.split("offset:").nth(1)?.split(';').next()?;
        offset.trim().parse().ok()
    })
}

pub fn sched_switch_format() -> Result<SchedSwitchFormat> {
    let [prev_pid, prev_state, next_pid] =
        field_offsets("sched", "sched_switch", ["prev_pid", "prev_state", "next_pid"])?;
    Ok(SchedSwitchFormat { prev_pid, prev_state, next_pid, _pad: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHED_SWITCH: &str = "name: sched_switch
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t prev_pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:long prev_state;\toffset:32;\tsize:8;\tsigned:1;
\tfield:pid_t next_pid;\toffset:56;\tsize:4;\tsigned:1;
";

    #[test]
    fn reads_field_offsets_from_a_format_file() {
        assert_eq!(offset_of(SCHED_SWITCH, "prev_pid"), Some(24));
        assert_eq!(offset_of(SCHED_SWITCH, "prev_state"), Some(32));
        assert_eq!(offset_of(SCHED_SWITCH, "next_pid"), Some(56));
        assert_eq!(offset_of(SCHED_SWITCH, "prev_comm"), Some(8));
        assert_eq!(offset_of(SCHED_SWITCH, "pid"), None);
    }
}
