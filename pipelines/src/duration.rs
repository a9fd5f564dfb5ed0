//! Durations written as `90s`, `10m`, `1h30m`, `2d`, or a plain number of seconds.

/// Parses a duration into seconds. Zero is rejected: every place that takes a duration
/// (timeouts, pauses, intervals) would misbehave with it.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let total = if s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse::<u64>()
            .map_err(|_| format!("`{s}` is too large"))?
    } else {
        let mut total: u64 = 0;
        let mut number = String::new();
        let mut last_unit = u64::MAX;
        for c in s.chars() {
            if c.is_ascii_digit() {
                number.push(c);
                continue;
            }
            let unit = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                ' ' if number.is_empty() => continue,
                _ => return Err(format!("unexpected `{c}` in duration `{s}`")),
            };
            // Units must go from large to small, once each, like `1h30m`.
            if unit >= last_unit {
                return Err(format!("units out of order in duration `{s}`"));
            }
            last_unit = unit;
            let n: u64 = number
                .parse()
                .map_err(|_| format!("missing number before `{c}` in duration `{s}`"))?;
            number.clear();
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| format!("duration `{s}` is too large"))?;
        }
        if !number.is_empty() {
            return Err(format!("missing unit after `{number}` in duration `{s}`"));
        }
        total
    };
    if total == 0 {
        return Err("duration must be greater than zero".into());
    }
    Ok(total)
}

pub const DURATION_HINT: &str = "write e.g. `90s`, `10m`, `1h30m` or a number of seconds";

/// Parses a duration with units into milliseconds: `500ms`, `2s`, `1s500ms`, `1m`.
/// A bare number is refused (seconds or milliseconds? the reader cannot tell).
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{s}` has no unit"));
    }
    let units: [(&str, u64); 5] = [
        ("ms", 1),
        ("s", 1000),
        ("m", 60_000),
        ("h", 3_600_000),
        ("d", 86_400_000),
    ];
    let mut total: u64 = 0;
    let mut last_unit = u64::MAX;
    let mut rest = s;
    while !rest.is_empty() {
        rest = rest.trim_start();
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            let c = rest.chars().next().unwrap_or(' ');
            return Err(format!("unexpected `{c}` in duration `{s}`"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("duration `{s}` is too large"))?;
        rest = &rest[digits..];
        let Some((name, unit)) = units.iter().find(|(name, _)| rest.starts_with(name)) else {
            return Err(match rest.chars().next() {
                None => format!("missing unit after `{n}` in duration `{s}`"),
                Some(c) => format!("unexpected `{c}` in duration `{s}`"),
            });
        };
        if *unit >= last_unit {
            return Err(format!("units out of order in duration `{s}`"));
        }
        last_unit = *unit;
        rest = &rest[name.len()..];
        total = n
            .checked_mul(*unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("duration `{s}` is too large"))?;
    }
    if total == 0 {
        return Err("duration must be greater than zero".into());
    }
    Ok(total)
}

pub const DURATION_MS_HINT: &str = "write e.g. `500ms`, `2s` or `1s500ms`";

#[cfg(test)]
mod tests {
    use super::{parse_duration, parse_duration_ms};

    #[test]
    fn milliseconds() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("2s"), Ok(2000));
        assert_eq!(parse_duration_ms("1s500ms"), Ok(1500));
        assert_eq!(parse_duration_ms("1m 5s"), Ok(65_000));
        for bad in [
            "", "500", "0ms", "ms", "5x", "500ms1s", "1s1s", "1.5s", "-1s",
        ] {
            assert!(parse_duration_ms(bad).is_err(), "{bad}");
        }
        assert!(parse_duration_ms("99999999999999999999d").is_err());
    }

    #[test]
    fn accepts_common_forms() {
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("10m"), Ok(600));
        assert_eq!(parse_duration("1h30m"), Ok(5400));
        assert_eq!(parse_duration("1h 30m 5s"), Ok(5405));
        assert_eq!(parse_duration("2d"), Ok(172_800));
        assert_eq!(parse_duration("600"), Ok(600));
    }

    #[test]
    fn rejects_bad_ones() {
        for bad in [
            "", "abc", "10x", "m", "30m1h", "1h1h", "0s", "0", "1.5h", "-5",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_duration("99999999999999999999s").is_err());
        assert!(parse_duration("99999999999999999h").is_err());
    }
}
