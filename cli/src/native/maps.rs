//! The target's file-backed executable mappings, from `/proc/PID/maps`.

use std::path::PathBuf;

use anyhow::{Context, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    pub dev: String,
    pub inode: u64,
    /// As the target sees it; "[vdso]" and the like are kept too.
    pub path: String,
}

impl Mapping {
    /// A file the unwinder can open from our mount namespace. `map_files`
    /// comes first because it still works for deleted or replaced files
    /// (an upgraded nginx keeps running the old binary); `root/` covers
    /// kernels or namespaces where `map_files` is refused.
    pub fn candidates(&self, pid: u32) -> Vec<PathBuf> {
        let mut v = vec![PathBuf::from(format!(
            "/proc/{pid}/map_files/{:x}-{:x}",
            self.start, self.end
        ))];
        if let Some(rel) = self.path.strip_prefix('/') {
            let rel = rel.strip_suffix(" (deleted)").unwrap_or(rel);
            v.push(PathBuf::from(format!("/proc/{pid}/root/{rel}")));
        }
        v
    }

    /// Short object name for "object+0xoff" fallbacks.
    pub fn object_name(&self) -> &str {
        let p = self.path.strip_suffix(" (deleted)").unwrap_or(&self.path);
        p.rsplit('/').next().unwrap_or(p)
    }

    /// Garbage (never a panic) for an `addr` outside the mapping, or an
    /// offset field near 2^64 (/proc text is parsed, not trusted).
    pub fn file_offset(&self, addr: u64) -> u64 {
        addr.wrapping_sub(self.start).wrapping_add(self.offset)
    }
}

/// Executable mappings backed by a file (or the vDSO), sorted by start.
pub fn read_exec_maps(pid: u32) -> Result<Vec<Mapping>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .with_context(|| format!("reading /proc/{pid}/maps"))?;
    Ok(parse_exec_maps(&text))
}

pub fn parse_exec_maps(text: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = text.lines().filter_map(parse_line).collect();
    out.sort_by_key(|m| m.start);
    out
}

/// Keeps what the unwinder can use: executable, and backed by a file or the vDSO.
fn parse_line(line: &str) -> Option<Mapping> {
    let m = crate::target::process::parse_map_line(line)?;
    if !m.executable() || m.start >= m.end {
        return None;
    }
    let path = m.path.filter(|p| p.starts_with('/') || p == "[vdso]")?;
    Some(Mapping {
        start: m.start,
        end: m.end,
        offset: m.offset,
        dev: m.dev,
        inode: m.inode,
        path,
    })
}

pub fn find(maps: &[Mapping], addr: u64) -> Option<&Mapping> {
    let i = maps.partition_point(|m| m.start <= addr);
    let m = maps.get(i.checked_sub(1)?)?;
    (addr < m.end).then_some(m)
}
