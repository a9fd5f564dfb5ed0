//! Kubernetes-style resource quantities: `512Mi`, `1G`, `1.5Gi` of memory; `2`, `1.5`,
//! `500m` of CPU. Parsed with exact decimal arithmetic (no floats), so `0.1` CPU is
//! exactly 100 millicpus and a limit never shifts by a rounding error.

/// Smallest memory limit accepted. Docker refuses less than 6 MB, and a number this
/// small is almost always a missing unit (`memory: 512` meaning `512Mi`).
pub const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;

pub const MEMORY_HINT: &str =
    "write bytes with a unit: `512Mi`, `2Gi` (powers of 1024) or `500M`, `1G` (powers of 1000)";
pub const CPU_HINT: &str =
    "write CPUs as `1`, `1.5` or `0.25`, or millicpus as `500m` (at most 3 decimal places)";

/// A decimal number split into its whole part and up to `scale` fraction digits, as
/// `value * 10^scale`. `None` for anything that is not plain digits with one optional `.`.
fn scaled(number: &str, scale: u32) -> Result<Option<u128>, String> {
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && frac.is_empty() {
        return Ok(None);
    }
    if !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    if number.ends_with('.') {
        return Ok(None);
    }
    let digits = frac.trim_end_matches('0');
    if digits.len() > scale as usize {
        return Err(format!("`{number}` has too many decimal places"));
    }
    let too_large = || format!("`{number}` is too large");
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_large())?
    };
    let mut frac_value: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| too_large())?
    };
    frac_value *= 10u128.pow(scale - digits.len() as u32);
    whole
        .checked_mul(10u128.pow(scale))
        .and_then(|w| w.checked_add(frac_value))
        .map(Some)
        .ok_or_else(too_large)
}

/// Smallest disk accepted: room for a checkout, and a guard against a missing unit.
pub const MIN_DISK_BYTES: u64 = 64 * 1024 * 1024;

/// A memory quantity in bytes: a whole number of bytes, or a decimal number with a
/// binary (`Ki`, `Mi`, `Gi`, `Ti`, `Pi`, `Ei`) or decimal (`k`, `M`, `G`, `T`, `P`, `E`)
/// suffix. A fraction of a byte is rounded up.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    parse_bytes(text, "memory", MIN_MEMORY_BYTES, "Mi")
}

/// A disk quantity in bytes, written like memory; at least [`MIN_DISK_BYTES`].
pub fn parse_disk(text: &str) -> Result<u64, String> {
    parse_bytes(text, "disk", MIN_DISK_BYTES, "Gi")
}

/// `likely_unit`: what a bare number most likely lacks, for the hint.
fn parse_bytes(text: &str, what: &str, min: u64, likely_unit: &str) -> Result<u64, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err(format!("empty {what} quantity"));
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    if number.is_empty() {
        return Err(format!("`{s}` is not a quantity"));
    }
    let multiplier: u128 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        "K" => return Err(format!("unknown unit `K` in `{s}` (use `k` or `Ki`)")),
        "m" => {
            return Err(format!(
                "`{s}` is in thousandths of a byte (use `M` or `Mi`)"
            ));
        }
        _ => return Err(format!("unknown unit `{suffix}` in `{s}`")),
    };
    // Nine decimal places are plenty: `1.5Gi` is exact; a fraction of a byte rounds up.
    const SCALE: u32 = 9;
    let value = scaled(number, SCALE)?.ok_or_else(|| format!("`{s}` is not a quantity"))?;
    let unit = 10u128.pow(SCALE);
    let bytes = value
        .checked_mul(multiplier)
        .map(|v| v.div_ceil(unit))
        .and_then(|b| u64::try_from(b).ok())
        .ok_or_else(|| format!("`{s}` is too large"))?;
    if bytes == 0 {
        return Err(format!("{what} must be greater than zero"));
    }
    if bytes < min {
        let unit_hint = if suffix.is_empty() {
            format!(" (`{s}` is bytes; did you mean `{s}{likely_unit}`?)")
        } else {
            String::new()
        };
        return Err(format!(
            "{what} `{s}` is below the minimum of {}Mi{unit_hint}",
            min >> 20
        ));
    }
    Ok(bytes)
}

/// A CPU quantity in millicpus: `2`, `1.5`, `0.25` (CPUs, at most 3 decimal places) or
/// `500m` (millicpus).
pub fn parse_cpu(text: &str) -> Result<u64, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty CPU quantity".into());
    }
    let millis: u128 = match s.strip_suffix('m') {
        Some(number) => {
            if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("`{s}` is not a whole number of millicpus"));
            }
            number.parse().map_err(|_| format!("`{s}` is too large"))?
        }
        None => scaled(s, 3)?.ok_or_else(|| format!("`{s}` is not a CPU quantity"))?,
    };
    let millis = u64::try_from(millis).map_err(|_| format!("`{s}` is too large"))?;
    if millis == 0 {
        return Err("CPU must be greater than zero".into());
    }
    Ok(millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_units() {
        assert_eq!(parse_memory("512Mi"), Ok(512 << 20));
        assert_eq!(parse_memory("1Gi"), Ok(1 << 30));
        assert_eq!(parse_memory("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_memory("500M"), Ok(500_000_000));
        assert_eq!(parse_memory("1G"), Ok(1_000_000_000));
        assert_eq!(parse_memory("10000k"), Ok(10_000_000));
        assert_eq!(parse_memory("8388608"), Ok(8 << 20));
        assert_eq!(parse_memory(" 64Mi "), Ok(64 << 20));
        assert_eq!(parse_memory("0.5Gi"), Ok(512 << 20));
        assert_eq!(parse_memory("2Ei"), Ok(2 << 60));
        // A fraction of a byte rounds up.
        assert_eq!(parse_memory("6.0000001Mi"), Ok((6 << 20) + 1));
    }

    #[test]
    fn memory_errors() {
        for bad in [
            "", "Mi", "abc", "1.2.3Mi", "1e9", "-5Mi", "5 Mi", "1.Gi", "12Xi", "1K", "500m",
        ] {
            assert!(parse_memory(bad).is_err(), "{bad:?}");
        }
        let small = parse_memory("512").unwrap_err();
        assert!(small.contains("did you mean `512Mi`"), "{small}");
        assert!(parse_memory("1Ki").unwrap_err().contains("minimum"));
        assert!(parse_memory("0").is_err());
        assert!(parse_memory("16Ei").is_err(), "overflows u64");
        assert!(parse_memory("99999999999999999999999999999999999999999").is_err());
    }

    #[test]
    fn cpu_units() {
        assert_eq!(parse_cpu("1"), Ok(1000));
        assert_eq!(parse_cpu("1.5"), Ok(1500));
        assert_eq!(parse_cpu("0.1"), Ok(100));
        assert_eq!(parse_cpu(".5"), Ok(500));
        assert_eq!(parse_cpu("0.250"), Ok(250));
        assert_eq!(parse_cpu("500m"), Ok(500));
        assert_eq!(parse_cpu("64"), Ok(64_000));
    }

    #[test]
    fn cpu_errors() {
        for bad in [
            "", "m", "0", "0m", "0.0", "1.2345", "1.5m", "-1", "two", "1e3", "1 m", "1.",
        ] {
            assert!(parse_cpu(bad).is_err(), "{bad:?}");
        }
        assert!(parse_cpu("99999999999999999999999").is_err());
    }

    #[test]
    fn disk_is_written_like_memory_with_its_own_minimum() {
        assert_eq!(parse_disk("20Gi"), Ok(20 << 30));
        assert_eq!(parse_disk("64Mi"), Ok(64 << 20));
        let err = parse_disk("512").unwrap_err();
        assert!(
            err.contains("disk `512` is below the minimum of 64Mi") && err.contains("`512Gi`"),
            "{err}"
        );
        assert_eq!(
            parse_disk("0Gi").unwrap_err(),
            "disk must be greater than zero"
        );
    }
}
