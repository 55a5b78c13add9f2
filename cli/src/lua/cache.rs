//! A bounded map with two generations: hits in the old generation move to the
//! new one, and when the new one is full the old one is dropped whole. That
//! keeps what recent stacks use at O(1) cost, without LRU bookkeeping.

use std::collections::HashMap;

#[derive(Debug)]
pub struct Cache<V> {
    hot: HashMap<u64, (V, usize)>,
    cold: HashMap<u64, (V, usize)>,
    hot_weight: usize,
    max_entries: usize,
    max_weight: usize,
}

impl<V> Cache<V> {
    /// Limits apply per generation, so at most twice as much is held.
    pub fn new(max_entries: usize, max_weight: usize) -> Self {
        Self { hot: HashMap::new(), cold: HashMap::new(), hot_weight: 0, max_entries: max_entries.max(1), max_weight }
    }

    /// The value for `key`, from the cache or from `load` (which returns the
    /// value and its weight). Failed loads are not remembered: the memory may
    /// have been caught mid-update.
    pub fn get_or_load(&mut self, key: u64, load: impl FnOnce() -> Option<(V, usize)>) -> Option<&mut V> {
        if !self.hot.contains_key(&key) {
            let (value, weight) = match self.cold.remove(&key) {
                Some(entry) => entry,
                None => load()?,
            };
            if self.hot.len() >= self.max_entries || self.hot_weight.saturating_add(weight) > self.max_weight {
                self.cold = std::mem::take(&mut self.hot);
                self.hot_weight = 0;
            }
            self.hot_weight = self.hot_weight.saturating_add(weight);
            self.hot.insert(key, (value, weight));
        }
        self.hot.get_mut(&key).map(|(value, _)| value)
    }

    pub fn len(&self) -> usize {
        self.hot.len() + self.cold.len()
    }
}
