//! Hand-built hostile objects, each aimed at one bound of the decoders: they
//! must end fast and small, whatever the counts in the target's memory say.

use std::time::{Duration, Instant};

use super::image::{ins_abc, ins_ad, Image, ProtoSpec, VarSpec, L};
use crate::lua::{
    bc::Op,
    proto::{ProtoDebug, ProtoHeader, MAX_VARS},
    Resolver,
};

/// Generous for a debug build; the quadratic walk this guards against took hours.
const FAST: Duration = Duration::from_secs(5);

/// `n` varinfo entries never live at any pc (start = end = 0): a slot lookup
/// scans them all and finds nothing.
fn dead_vars(n: usize) -> Vec<VarSpec<'static>> {
    (0..n).map(|_| VarSpec { name: "\u{1}", start: 0, end: 0 }).collect()
}

#[test]
fn mov_chains_do_not_make_naming_quadratic() {
    // `MOV 0, 0` sends the slot walk back to slot 0 at every instruction, and
    // each restart rescans varinfo: 100k x 100k steps without a bound.
    let n = 100_000;
    let mut bc = vec![ins_ad(Op::Mov, 0, 0); n];
    bc.push(ins_abc(Op::Call, 0, 1, 1));
    let mut img = Image::default();
    let proto = img.proto(&ProtoSpec { chunkname: "@/mov.lua", bc, vars: dead_vars(n), ..Default::default() });
    let mut r = Resolver::with_layout(img.mem, *L);
    let start = Instant::now();
    assert_eq!(r.call_name(proto, n as u32 + 1), None);
    assert!(start.elapsed() < FAST, "naming took {:?}", start.elapsed());
}

#[test]
fn varinfo_decoding_stops_at_max_vars() {
    let mut img = Image::default();
    let spec = ProtoSpec { chunkname: "@/vars.lua", vars: dead_vars(MAX_VARS + 1000), ..Default::default() };
    let proto = img.proto(&spec);
    let h = ProtoHeader::read(&img.mem, &L, proto).expect("header");
    let d = ProtoDebug::read(&img.mem, &L, &h).expect("debug info");
    assert_eq!(d.vars().len(), MAX_VARS);
}
