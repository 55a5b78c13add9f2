//! Kernel addresses to names, from /proc/kallsyms (readable with addresses as root).

use std::fs;

use anyhow::{bail, Context, Result};

pub struct Kallsyms {
    /// Sorted by address.
    syms: Vec<(u64, String)>,
}

impl Kallsyms {
    pub fn load() -> Result<Kallsyms> {
        let text = fs::read_to_string("/proc/kallsyms").context("cannot read /proc/kallsyms")?;
        let mut syms: Vec<(u64, String)> = text
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                let addr = u64::from_str_radix(it.next()?, 16).ok()?;
                let kind = it.next()?;
                let name = it.next()?;
                (addr != 0 && matches!(kind, "t" | "T" | "w" | "W")).then(|| (addr, name.to_string()))
            })
            .collect();
        if syms.is_empty() {
            bail!("/proc/kallsyms shows no addresses (kernel.kptr_restrict?): kernel frames need root");
        }
        syms.sort_unstable_by_key(|s| s.0);
        Ok(Kallsyms { syms })
    }

    pub fn name(&self, addr: u64) -> String {
        match self.syms.partition_point(|s| s.0 <= addr) {
            0 => format!("{addr:#x}"),
            i => self.syms[i - 1].1.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_enclosing_symbol() {
        let k = Kallsyms { syms: vec![(0x1000, "a".into()), (0x2000, "b".into())] };
        assert_eq!(k.name(0x1000), "a");
        assert_eq!(k.name(0x1fff), "a");
        assert_eq!(k.name(0x2001), "b");
        assert_eq!(k.name(0x10), "0x10");
    }

    #[test]
    fn reads_the_running_kernels_symbols_as_root() {
        assert_eq!(unsafe { libc::geteuid() }, 0, "needs root to see kernel addresses");
        let k = Kallsyms::load().unwrap();
        assert!(k.syms.iter().any(|s| s.1 == "schedule"));
    }
}
