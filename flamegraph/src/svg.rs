//! Flame graph SVGs via inferno, coloured by frame kind so Lua, native code, JIT
//! traces, VM states and the kernel read apart at a glance.

use std::io::{self, Write};

use inferno::flamegraph::{self, color::{Color, PaletteMap}, Options};

use crate::{folded::Folded, model::Frame};

pub struct SvgOptions {
    pub title: String,
    pub subtitle: String,
    /// What a unit of weight is: "samples", "us", "bytes".
    pub count_name: String,
}

/// Colours per kind; the legend text is appended to the subtitle.
const LUA: Color = Color { r: 114, g: 196, b: 114 };
const NATIVE: Color = Color { r: 232, g: 132, b: 92 };
const TRACE: Color = Color { r: 90, g: 180, b: 220 };
const VM: Color = Color { r: 180, g: 180, b: 180 };
const KERNEL: Color = Color { r: 224, g: 192, b: 80 };
const WAIT: Color = Color { r: 160, g: 140, b: 220 };
pub const LEGEND: &str = "green: Lua, aqua: JIT trace, orange: C, grey: VM state, yellow: kernel";
/// Off-CPU graphs have one more kind.
pub const WAIT_LEGEND: &str = "purple: what the thread waited in";

fn colour(frame: &Frame) -> Color {
    match frame {
        Frame::Lua { .. } => LUA,
        Frame::Native(_) => NATIVE,
        Frame::Trace(_) => TRACE,
        Frame::Vm(_) => VM,
        Frame::Kernel(_) => KERNEL,
        Frame::Wait(_) => WAIT,
    }
}

pub fn render(folded: &Folded, opts: &SvgOptions, out: impl Write) -> io::Result<()> {
    render_with_legend(folded, opts, None, out)
}

/// `render`, with the colour legend given for graphs whose frames are not
/// code (`ljprobe heap`: path steps and object types).
pub fn render_with_legend(folded: &Folded, opts: &SvgOptions, legend: Option<&str>, out: impl Write) -> io::Result<()> {
    let mut palette = PaletteMap::default();
    // inferno's root frame ("all", named "" inside); its default yellow would read
    // as kernel in our legend.
    palette.insert("", VM);
    for frame in folded.frames() {
        palette.insert(frame.label(), colour(frame));
    }
    let mut options = Options::default();
    options.title = opts.title.clone();
    let wait = folded.frames().into_iter().any(|f| matches!(f, Frame::Wait(_)));
    let legend = match legend {
        Some(l) => l.to_string(),
        None if wait => format!("{LEGEND}, {WAIT_LEGEND}"),
        None => LEGEND.to_string(),
    };
    options.subtitle = Some(format!("{} ({legend})", opts.subtitle));
    options.count_name = opts.count_name.clone();
    options.deterministic = true;
    options.palette_map = Some(&mut palette);
    let lines = folded.lines();
    if lines.is_empty() {
        // inferno refuses an empty profile; an empty graph that says so is more useful.
        options.subtitle = Some(format!("{} (no samples)", opts.subtitle));
        return flamegraph::from_lines(&mut options, ["[no samples] 1"], out);
    }
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labels_and_colours() {
        let mut f = Folded::default();
        let lua = Frame::Lua { name: Some("hot".into()), file: "app/hot.lua".into(), line: 7, at: None };
        f.add(&[lua.clone(), Frame::Trace(3)], 9);
        f.add(&[Frame::Vm("[GC]".into())], 1);
        let mut svg = Vec::new();
        let opts = SvgOptions { title: "t".into(), subtitle: "s".into(), count_name: "samples".into() };
        render(&f, &opts, &mut svg).unwrap();
        let svg = String::from_utf8(svg).unwrap();
        assert!(svg.contains("hot app/hot.lua:7"), "Lua label missing");
        assert!(svg.contains("trace#3"));
        for c in [LUA, TRACE, VM] {
            let rgb = format!("rgb({},{},{})", c.r, c.g, c.b);
            assert!(svg.contains(&rgb), "colour {rgb} missing");
        }
        assert!(svg.contains(LEGEND));
        let root = svg.split("<title>all").nth(1).expect("a root frame");
        let root_fill = root.split("fill=\"").nth(1).unwrap().split('"').next().unwrap();
        assert_eq!(root_fill, format!("rgb({},{},{})", VM.r, VM.g, VM.b), "root frame colour");
    }

    #[test]
    fn an_empty_profile_still_renders() {
        let mut svg = Vec::new();
        let opts = SvgOptions { title: "t".into(), subtitle: "s".into(), count_name: "samples".into() };
        render(&Folded::default(), &opts, &mut svg).unwrap();
        assert!(String::from_utf8(svg).unwrap().contains("no samples"));
    }
}
