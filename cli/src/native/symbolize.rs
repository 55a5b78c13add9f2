//! Names for native addresses via blazesym, with "object+0xoffset" where
//! the object has no symbol for them (stripped binaries keep only .dynsym).

use std::collections::HashMap;

use blazesym::symbolize::source::{Process, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer as Blaze};
use blazesym::Pid;

use super::maps::{self, Mapping};

pub struct Symbolizer {
    pid: u32,
    inner: Blaze,
    maps: Vec<Mapping>,
    /// Keyed by the looked-up address (return address - 1 for callers).
    cache: HashMap<u64, String>,
}

/// A profiler revisits the same few thousand pcs; past this the cache
/// starts over rather than growing for ever.
const CACHE_MAX: usize = 1 << 17;

impl Symbolizer {
    pub fn new(pid: u32) -> Symbolizer {
        // Only names are wanted: file/line and inlined frames would make
        // every miss parse far more DWARF.
        let inner = Blaze::builder()
            .enable_code_info(false)
            .enable_inlined_fns(false)
            .build();
        let maps = maps::read_exec_maps(pid).unwrap_or_default();
        Symbolizer {
            pid,
            inner,
            maps,
            cache: HashMap::new(),
        }
    }

    /// Return addresses are looked up at addr - 1 so that a call that is
    /// the last instruction of its function is attributed to that function.
    /// The "object+0xoffset" fallback gives that looked-up address's file
    /// offset, which is what `addr2line -e object` wants for PIE objects
    /// whose text offset equals its vaddr.
    pub fn names(&mut self, addrs: &[u64], first_is_ip: bool) -> Vec<String> {
        let probes: Vec<u64> = addrs
            .iter()
            .enumerate()
            .map(|(i, &a)| {
                if i == 0 && first_is_ip {
                    a
                } else {
                    a.saturating_sub(1)
                }
            })
            .collect();
        let mut missing: Vec<u64> = probes
            .iter()
            .copied()
            .filter(|p| !self.cache.contains_key(p))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            if self.cache.len() + missing.len() > CACHE_MAX {
                self.cache.clear();
            }
            self.resolve(&missing);
        }
        probes
            .iter()
            .map(|p| {
                self.cache
                    .get(p)
                    .cloned()
                    .unwrap_or_else(|| "[unknown]".into())
            })
            .collect()
    }

    fn resolve(&mut self, addrs: &[u64]) {
        let src = Source::Process(Process::new(Pid::from(self.pid)));
        let syms = match self.inner.symbolize(&src, Input::AbsAddr(addrs)) {
            Ok(v) => v,
            Err(e) => {
                log::debug!("blazesym on pid {}: {e}", self.pid);
                Vec::new()
            }
        };
        let mut named: Vec<Option<String>> = syms
            .into_iter()
            .map(|s| match s {
                Symbolized::Sym(sym) => Some(sym.name.into_owned()),
                Symbolized::Unknown(_) => None,
            })
            .collect();
        named.resize(addrs.len(), None);
        for (&a, name) in addrs.iter().zip(named) {
            let name = name.unwrap_or_else(|| self.fallback(a));
            self.cache.insert(a, name);
        }
    }

    fn fallback(&mut self, addr: u64) -> String {
        if maps::find(&self.maps, addr).is_none() {
            // Possibly a library dlopen'ed since we last looked.
            if let Ok(m) = maps::read_exec_maps(self.pid) {
                self.maps = m;
            }
        }
        match maps::find(&self.maps, addr) {
            Some(m) => format!("{}+{:#x}", m.object_name(), m.file_offset(addr)),
            None => "[unknown]".into(),
        }
    }
}
