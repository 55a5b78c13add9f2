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
        let k = Kallsyms::parse(&text);
        if k.syms.is_empty() {
            bail!("/proc/kallsyms shows no addresses (kernel.kptr_restrict?): kernel frames need root");
        }
        Ok(k)
    }

    /// Text symbols of kallsyms-format `text`; lines that do not parse are skipped.
    pub fn parse(text: &str) -> Kallsyms {
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
        syms.sort_unstable_by_key(|s| s.0);
        Kallsyms { syms }
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

    use proptest::{collection::vec, prelude::*};

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        /// Any text parses; well-formed text symbols come back sorted, and an
        /// address is named by the last symbol at or below it.
        #[test]
        fn any_text_parses_and_names_the_enclosing_symbol(
            noise in vec(".{0,60}", 0..8),
            syms in vec((1u64.., "[tTwWdb]", "[a-z_][a-z0-9_.]{0,20}"), 0..16),
            probes in vec(any::<u64>(), 0..8),
        ) {
            let mut lines = noise.clone();
            lines.extend(syms.iter().map(|(a, kind, name)| format!("{a:016x} {kind} {name}")));
            let k = Kallsyms::parse(&lines.join("\n"));
            prop_assert!(k.syms.windows(2).all(|w| w[0].0 <= w[1].0));
            let text: Vec<&(u64, String, String)> =
                syms.iter().filter(|s| matches!(s.1.as_str(), "t" | "T" | "w" | "W")).collect();
            prop_assert!(k.syms.len() >= text.len());
            for &a in probes.iter().chain(text.iter().map(|s| &s.0)) {
                let name = k.name(a);
                match k.syms.iter().rev().find(|s| s.0 <= a) {
                    // Ties between equal addresses may resolve to either name.
                    Some(s) => prop_assert!(k.syms.iter().any(|t| t.0 == s.0 && t.1 == name)),
                    None => prop_assert_eq!(name, format!("{a:#x}")),
                }
            }
        }
    }

    #[test]
    fn reads_the_running_kernels_symbols_as_root() {
        assert_eq!(unsafe { libc::geteuid() }, 0, "needs root to see kernel addresses");
        let k = Kallsyms::load().unwrap();
        assert!(k.syms.iter().any(|s| s.1 == "schedule"));
    }
}
