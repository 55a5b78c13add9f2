//! The planted problems of the gateway, as `gateway/README.md` tables them: the
//! ground truth the tools' tests assert against.

use std::{fs, path::PathBuf};

use anyhow::{bail, Context, Result};

use crate::paths;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planted {
    pub route: String,
    /// The name LuaJIT's debug info gives the function.
    pub function: String,
    /// Relative to gateway/.
    pub file: String,
    /// The line where the function is defined.
    pub line: u32,
    pub expected: String,
}

impl Planted {
    pub fn path(&self) -> PathBuf {
        paths::gateway_src().join(&self.file)
    }

    /// `file:line` as a Lua frame label shows it (chunkname without '@').
    pub fn location(&self) -> String {
        format!("{}:{}", self.path().display(), self.line)
    }
}

const HEADER: &str = "| route | planted function | file:line | expected profile |";

pub fn all() -> Result<Vec<Planted>> {
    let readme = paths::gateway_src().join("README.md");
    let text = fs::read_to_string(&readme).with_context(|| format!("cannot read {}", readme.display()))?;
    parse(&text)
}

pub fn for_route(route: &str) -> Result<Planted> {
    all()?.into_iter().find(|p| p.route == route).with_context(|| format!("no planted problem for {route}"))
}

fn parse(text: &str) -> Result<Vec<Planted>> {
    let mut lines = text.lines().skip_while(|l| l.trim() != HEADER);
    if lines.next().is_none() {
        bail!("gateway/README.md has no table headed `{HEADER}`");
    }
    let mut out = Vec::new();
    for row in lines.skip(1).take_while(|l| l.trim_start().starts_with('|')) {
        let cells: Vec<&str> = row.trim().trim_matches('|').split('|').map(|c| c.trim().trim_matches('`')).collect();
        let [route, function, at, expected] = cells[..] else { bail!("malformed planted row: {row}") };
        let (file, line) = at.rsplit_once(':').with_context(|| format!("no file:line in {row}"))?;
        out.push(Planted {
            route: route.to_string(),
            function: function.to_string(),
            file: file.to_string(),
            line: line.parse().with_context(|| format!("bad line number in {row}"))?,
            expected: expected.to_string(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rows_until_the_table_ends() {
        let text = format!(
            "intro\n{HEADER}\n| --- | --- | --- | --- |\n| `/hot/jit` | `hot_jit_work` | `lua/app/x.lua:12` | widest |\n\nafter\n"
        );
        let p = parse(&text).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].route.as_str(), p[0].function.as_str(), p[0].line), ("/hot/jit", "hot_jit_work", 12));
        assert_eq!(p[0].file, "lua/app/x.lua");
        assert!(parse("no table").is_err());
    }
}
