//! Aggregated stacks in the folded format: `root;child;leaf weight` per line.

use std::{collections::HashMap, io};

use crate::model::Frame;

#[derive(Debug, Default, Clone)]
pub struct Folded {
    stacks: HashMap<Vec<Frame>, u64>,
    total: u64,
}

impl Folded {
    /// Adds `weight` (samples, microseconds, bytes) to a stack given root first.
    pub fn add(&mut self, stack: &[Frame], weight: u64) {
        *self.stacks.entry(stack.to_vec()).or_default() += weight;
        self.total += weight;
    }

    /// Each distinct stack (root first) with its weight, in no order.
    pub fn stacks(&self) -> impl Iterator<Item = (&[Frame], u64)> {
        self.stacks.iter().map(|(s, &w)| (s.as_slice(), w))
    }

    /// Every distinct frame that occurs in any stack.
    pub fn frames(&self) -> std::collections::BTreeSet<&Frame> {
        self.stacks.keys().flatten().collect()
    }

    /// Weight per innermost frame that satisfies `pred` (e.g. the innermost function,
    /// under any trace or VM-state frame), heaviest first: what `-jp=f` shows.
    pub fn by_innermost(&self, pred: impl Fn(&Frame) -> bool) -> Vec<(&Frame, u64)> {
        let mut m: HashMap<&Frame, u64> = HashMap::new();
        for (stack, w) in &self.stacks {
            if let Some(leaf) = stack.iter().rev().find(|f| pred(f)) {
                *m.entry(leaf).or_default() += w;
            }
        }
        let mut v: Vec<_> = m.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v
    }

    /// The same stacks with every frame replaced by `f(frame)`; stacks that
    /// become equal merge (e.g. `Frame::function` folds lines into functions).
    pub fn map(&self, f: impl Fn(&Frame) -> Frame) -> Folded {
        let mut out = Folded::default();
        for (stack, &w) in &self.stacks {
            let mapped: Vec<Frame> = stack.iter().map(&f).collect();
            out.add(&mapped, w);
        }
        out
    }

    /// Weight per frame counted once per stack (inclusive), heaviest first.
    pub fn inclusive(&self) -> Vec<(&Frame, u64)> {
        let mut m: HashMap<&Frame, u64> = HashMap::new();
        for (stack, w) in &self.stacks {
            let unique: std::collections::BTreeSet<&Frame> = stack.iter().collect();
            for f in unique {
                *m.entry(f).or_default() += w;
            }
        }
        let mut v: Vec<_> = m.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v
    }

    pub fn total(&self) -> u64 {
        self.total
    }


    /// Lines sorted by stack, so the same data always folds to the same text.
    pub fn lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .stacks
            .iter()
            .map(|(stack, w)| {
                let labels: Vec<String> = stack.iter().map(Frame::label).collect();
                format!("{} {w}", labels.join(";"))
            })
            .collect();
        lines.sort();
        lines
    }

    pub fn write(&self, mut out: impl io::Write) -> io::Result<()> {
        for line in self.lines() {
            writeln!(out, "{line}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lua(name: &str, line: u32) -> Frame {
        Frame::Lua { name: Some(name.into()), file: "a.lua".into(), line, at: None }
    }

    #[test]
    fn merges_equal_stacks_and_sorts() {
        let mut f = Folded::default();
        f.add(&[lua("main", 1), lua("hot", 5)], 3);
        f.add(&[lua("main", 1)], 1);
        f.add(&[lua("main", 1), lua("hot", 5)], 2);
        assert_eq!(f.total(), 6);
        assert_eq!(f.lines(), vec!["main a.lua:1 1", "main a.lua:1;hot a.lua:5 5"]);
        let hot = lua("hot", 5);
        assert!(f.inclusive().contains(&(&hot, 5)));
    }
}
