//! Stacks as pprof's gzipped `profile.proto`, which `go tool pprof`, Pyroscope
//! and Grafana read: one value per sample type, and functions, files and lines
//! in their own fields, so that a viewer can group by any of them.

use std::{collections::BTreeMap, collections::HashMap, io::Write};

use crate::{model::Frame, Folded};

// The messages hold only the fields ljprobe writes; the tags are those of
// github.com/google/pprof proto/profile.proto, which readers decode by.

#[derive(Clone, PartialEq, prost::Message)]
pub struct Profile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    /// Leaf first.
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
}

/// One for every location: it says they are symbolized already, or pprof
/// would look for a binary to symbolize them from.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Mapping {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
    #[prost(int64, tag = "5")]
    pub start_line: i64,
}

const MAPPING: u64 = 1;

/// One sample type: `folded`'s weights times `scale`, e.g. samples at 99 Hz
/// as ("cpu", "nanoseconds", scale 1e9 / 99).
#[derive(Clone, Copy)]
pub struct Column<'a> {
    pub type_: &'a str,
    pub unit: &'a str,
    pub folded: &'a Folded,
    pub scale: f64,
}

/// What one profile file holds. Columns may weigh different stacks; a stack
/// one of them lacks gets 0 there.
pub struct Pprof<'a> {
    pub columns: Vec<Column<'a>>,
    pub duration_secs: f64,
    /// When the run started, in nanoseconds since the epoch (0: not said).
    pub time_nanos: i64,
    /// What happens between two samples and how much: ("cpu", "nanoseconds",
    /// 1e9 / frequency) for a sampling profile.
    pub period: Option<(&'a str, &'a str, i64)>,
    /// The sample type viewers show first (else the last column).
    pub default_type: Option<&'a str>,
    pub comments: Vec<String>,
}

impl Pprof<'_> {
    pub fn profile(&self) -> Profile {
        let mut t = Tables::default();
        t.string("");
        let mut p = Profile {
            sample_type: self.columns.iter().map(|c| t.value_type(c.type_, c.unit)).collect(),
            time_nanos: self.time_nanos,
            duration_nanos: (self.duration_secs * 1e9) as i64,
            period_type: self.period.map(|(ty, unit, _)| t.value_type(ty, unit)),
            period: self.period.map_or(0, |(_, _, n)| n),
            default_sample_type: self.default_type.map_or(0, |ty| t.string(ty)),
            ..Profile::default()
        };
        p.comment = self.comments.iter().map(|c| t.string(c)).collect();
        let n = self.columns.len();
        let mut samples: BTreeMap<Vec<u64>, Vec<i64>> = BTreeMap::new();
        for (i, c) in self.columns.iter().enumerate() {
            for (stack, w) in stacks(c.folded) {
                let ids: Vec<u64> = stack.iter().rev().map(|f| t.location(f)).collect();
                let v = &mut samples.entry(ids).or_insert_with(|| vec![0; n])[i];
                // `as` saturates (NaN gives 0): a bad scale is wrong, never a panic.
                *v = v.saturating_add((w as f64 * c.scale).round() as i64);
            }
        }
        p.sample = samples.into_iter().map(|(location_id, value)| Sample { location_id, value }).collect();
        p.mapping = vec![Mapping { id: MAPPING, has_functions: true, has_filenames: true, has_line_numbers: true }];
        p.location = t.locations;
        p.function = t.functions;
        p.string_table = t.strings;
        p
    }

    /// The file pprof reads: the encoded profile, gzipped.
    pub fn gzipped(&self) -> Vec<u8> {
        let raw = prost::Message::encode_to_vec(&self.profile());
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        // Writing to a Vec fails only when memory does, which aborts anyway.
        gz.write_all(&raw).expect("gzip into memory");
        gz.finish().expect("gzip into memory")
    }
}

/// The stacks sorted, so the same data always encodes to the same bytes; an
/// empty stack (a sample no frame explains) gets a frame that says so.
fn stacks(folded: &Folded) -> Vec<(Vec<Frame>, u64)> {
    let mut v: Vec<(Vec<Frame>, u64)> = folded
        .stacks()
        .map(|(s, w)| (if s.is_empty() { vec![Frame::Vm("[no stack]".into())] } else { s.to_vec() }, w))
        .collect();
    v.sort();
    v
}

/// The string table ("" first, as the format wants), functions and locations,
/// each entered once.
#[derive(Default)]
struct Tables {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    functions: Vec<Function>,
    function_ids: HashMap<(i64, i64, i64), u64>,
    locations: Vec<Location>,
    location_ids: HashMap<Frame, u64>,
}

impl Tables {
    fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.string_ids.get(s) {
            return i;
        }
        let i = self.strings.len() as i64;
        self.strings.push(s.to_string());
        self.string_ids.insert(s.to_string(), i);
        i
    }

    fn value_type(&mut self, ty: &str, unit: &str) -> ValueType {
        ValueType { r#type: self.string(ty), unit: self.string(unit) }
    }

    fn location(&mut self, frame: &Frame) -> u64 {
        if let Some(&id) = self.location_ids.get(frame) {
            return id;
        }
        let (name, file, start, line) = parts(frame);
        let key = (self.string(&name), self.string(file), start);
        let next = self.functions.len() as u64 + 1;
        let function_id = *self.function_ids.entry(key).or_insert(next);
        if function_id == next {
            let (name, filename, start_line) = key;
            self.functions.push(Function { id: next, name, system_name: name, filename, start_line });
        }
        let id = self.locations.len() as u64 + 1;
        self.locations.push(Location { id, mapping_id: MAPPING, line: vec![Line { function_id, line }] });
        self.location_ids.insert(frame.clone(), id);
        id
    }
}

/// A frame as (function name, file, line it starts at, line it ran).
fn parts(frame: &Frame) -> (String, &str, i64, i64) {
    match frame {
        Frame::Lua { name, file, line, at } => {
            let name = name.clone().unwrap_or_else(|| format!("{file}:{line}"));
            (name, file, i64::from(*line), i64::from(at.unwrap_or(*line)))
        }
        Frame::Native(s) | Frame::Vm(s) | Frame::Wait(s) => (s.clone(), "", 0, 0),
        Frame::Kernel(s) => (s.clone(), "[kernel]", 0, 0),
        Frame::Trace(n) => (format!("trace#{n}"), "", 0, 0),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use prost::Message;

    use super::*;

    fn lua(name: Option<&str>, line: u32, at: Option<u32>) -> Frame {
        Frame::Lua { name: name.map(Into::into), file: "app/h.lua".into(), line, at }
    }

    fn decode(p: &Pprof) -> Profile {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&p.gzipped()[..]).read_to_end(&mut raw).unwrap();
        Profile::decode(&raw[..]).unwrap()
    }

    fn pprof<'a>(columns: Vec<Column<'a>>) -> Pprof<'a> {
        Pprof { columns, duration_secs: 2.5, time_nanos: 7, period: None, default_type: None, comments: vec![] }
    }

    fn s(p: &Profile, i: i64) -> &str {
        &p.string_table[i as usize]
    }

    #[test]
    fn two_lua_frames_become_locations_leaf_first_with_their_lines() {
        let mut f = Folded::default();
        f.add(&[lua(Some("main"), 1, None), lua(Some("work"), 10, Some(12))], 3);
        let mut p = pprof(vec![
            Column { type_: "samples", unit: "count", folded: &f, scale: 1.0 },
            Column { type_: "cpu", unit: "nanoseconds", folded: &f, scale: 1e9 / 100.0 },
        ]);
        p.period = Some(("cpu", "nanoseconds", 10_000_000));
        p.default_type = Some("cpu");
        p.comments = vec!["ljprobe cpu".into()];
        let d = decode(&p);
        assert_eq!(d.string_table[0], "");
        let types: Vec<(&str, &str)> = d.sample_type.iter().map(|t| (s(&d, t.r#type), s(&d, t.unit))).collect();
        assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);
        assert_eq!((s(&d, d.period_type.as_ref().unwrap().r#type), d.period), ("cpu", 10_000_000));
        assert_eq!(s(&d, d.default_sample_type), "cpu");
        assert_eq!(s(&d, d.comment[0]), "ljprobe cpu");
        assert_eq!((d.duration_nanos, d.time_nanos), (2_500_000_000, 7));
        assert!(d.mapping[0].has_functions && d.location.iter().all(|l| l.mapping_id == d.mapping[0].id));
        assert_eq!(d.sample.len(), 1);
        assert_eq!(d.sample[0].value, [3, 30_000_000]);
        let ids = &d.sample[0].location_id;
        let loc = |id: u64| d.location.iter().find(|l| l.id == id).unwrap();
        let func = |id: u64| d.function.iter().find(|f| f.id == id).unwrap();
        let (leaf, root) = (loc(ids[0]), loc(ids[1]));
        assert_eq!(leaf.line[0].line, 12, "the line it ran");
        assert_eq!(root.line[0].line, 1, "no `at`: the defining line");
        let work = func(leaf.line[0].function_id);
        assert_eq!((s(&d, work.name), s(&d, work.system_name), s(&d, work.filename), work.start_line), ("work", "work", "app/h.lua", 10));
        assert_eq!(s(&d, func(root.line[0].function_id).name), "main");
    }

    #[test]
    fn lines_of_one_function_share_it_and_other_frames_are_named() {
        let mut f = Folded::default();
        f.add(&[lua(None, 5, Some(6)), Frame::Trace(3)], 1);
        f.add(&[lua(None, 5, Some(7)), Frame::Native("lj_str_new".into()), Frame::Kernel("schedule".into())], 2);
        f.add(&[Frame::Vm("[GC]".into()), Frame::Wait("nanosleep (syscall)".into())], 4);
        let d = decode(&pprof(vec![Column { type_: "off-cpu", unit: "nanoseconds", folded: &f, scale: 1000.0 }]));
        assert_eq!(d.location.len(), 7);
        assert_eq!(d.function.len(), 6, "two lines of h.lua:5 are one function");
        let names: Vec<(&str, &str)> = d.function.iter().map(|f| (s(&d, f.name), s(&d, f.filename))).collect();
        for want in [("app/h.lua:5", "app/h.lua"), ("trace#3", ""), ("lj_str_new", ""), ("schedule", "[kernel]"), ("[GC]", ""), ("nanosleep (syscall)", "")] {
            assert!(names.contains(&want), "{want:?} not in {names:?}");
        }
        let total: i64 = d.sample.iter().map(|s| s.value[0]).sum();
        assert_eq!(total, 7000);
        assert!(d.sample.iter().all(|s| s.location_id.iter().all(|id| d.location.iter().any(|l| l.id == *id))));
    }

    #[test]
    fn columns_over_different_stacks_fill_in_zeros() {
        let (mut a, mut b) = (Folded::default(), Folded::default());
        a.add(&[lua(Some("x"), 1, None)], 5);
        b.add(&[lua(Some("y"), 2, None)], 9);
        let d = decode(&pprof(vec![
            Column { type_: "alloc_objects", unit: "count", folded: &a, scale: 1.0 },
            Column { type_: "alloc_space", unit: "bytes", folded: &b, scale: 1.0 },
        ]));
        let mut values: Vec<Vec<i64>> = d.sample.iter().map(|s| s.value.clone()).collect();
        values.sort();
        assert_eq!(values, [vec![0, 9], vec![5, 0]]);
    }

    #[test]
    fn nothing_and_nonsense_encode_without_panicking() {
        let empty = Folded::default();
        let d = decode(&pprof(vec![]));
        assert!(d.sample.is_empty() && d.string_table == [""]);
        let mut f = Folded::default();
        f.add(&[], 1);
        f.add(&[Frame::Native(String::new())], u64::MAX - 1);
        let mut p = pprof(vec![
            Column { type_: "a", unit: "count", folded: &f, scale: f64::NAN },
            Column { type_: "b", unit: "count", folded: &f, scale: f64::INFINITY },
            Column { type_: "c", unit: "count", folded: &empty, scale: 1.0 },
        ]);
        p.duration_secs = f64::NAN;
        let d = decode(&p);
        assert!(d.sample.iter().all(|s| s.value.len() == 3 && s.value[0] == 0));
    }
}
