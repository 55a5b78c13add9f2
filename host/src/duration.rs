//! Durations on the command line: `200us`, `500ms`, `10s`, `2m`; a bare number is seconds.

use std::time::Duration;

pub fn parse(s: &str) -> Result<Duration, String> {
    let d = parse_or_zero(s)?;
    if d.is_zero() {
        return Err(format!("`{}` must be longer than zero", s.trim()));
    }
    Ok(d)
}

/// As `parse`, and 0 is allowed: for thresholds where 0 means "keep everything".
pub fn parse_or_zero(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("`{s}` is not a duration such as 500ms, 10s or 2m"))?;
    let secs = match unit.trim() {
        "us" | "µs" => value / 1e6,
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        other => return Err(format!("unknown unit `{other}` in `{s}`: use us, ms, s or m")),
    };
    if !secs.is_finite() {
        return Err(format!("`{s}` is not a duration such as 500ms, 10s or 2m"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(parse_or_zero("0").unwrap(), Duration::ZERO);
        assert!(parse("0ms").is_err());
        assert_eq!(parse("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse("1.5s").unwrap(), Duration::from_millis(1500));
    }

    #[test]
    fn rejects_nonsense() {
        assert!(parse("abc").unwrap_err().contains("not a duration"));
        assert!(parse("5h").unwrap_err().contains("unknown unit"));
        assert!(parse("0s").is_err());
    }
}
