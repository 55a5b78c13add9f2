//! The stack model every ljprobe tool reports in, and the folded-stack form that
//! flamegraph.pl, inferno and speedscope read.

pub mod diff;
pub mod folded;
pub mod histogram;
pub mod latency_rows;
pub mod linechart;
pub mod model;
pub mod pprof;
pub mod svg;

pub use folded::Folded;
pub use histogram::Log2Histogram;
pub use model::{Frame, VmState};
