//! A walk of a whole Lua heap: every object, its size, who holds it
//! (`ljprobe heap`). Reads any `Memory`: a copy taken while the target was
//! stopped, or, in tests, a live process.

pub mod edges;
pub mod graph;
pub mod label;
pub mod objects;

pub use graph::{Graph, NONE, UNREACHED};
pub use label::Names;
pub use objects::{len_class, Kind, Obj, Objects, Vm, LEN_CLASSES};
