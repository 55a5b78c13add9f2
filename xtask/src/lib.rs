//! Project automation behind `cargo xtask`. A library too, so the end-to-end tests
//! start the gateway and drive load with the very code the README's commands use.

pub mod affinity;
pub mod cmd;
pub mod dist;
pub mod gateway;
pub mod layouts;
pub mod load;
pub mod luajit_builds;
pub mod paths;
pub mod perf_gate;
pub mod planted;
pub mod setup;
