//! Kubernetes resource quantities (`128Mi`, `1G`, `500m`, `0.5`, `1e3`) turned into
//! what Docker takes: bytes for memory, nano-CPUs for cpu.

/// The value of a quantity as a float (`500m` → 0.5, `1Ki` → 1024).
pub fn parse(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => 10f64.powi(exp[1..].parse().ok()?),
        _ => return None,
    };
    let value = number * factor;
    (value.is_finite() && value >= 0.0).then_some(value)
}

/// Memory in bytes, rounded up (as the API server rounds memory quantities).
pub fn memory_bytes(q: &str) -> Option<i64> {
    parse(q).map(|v| v.ceil() as i64)
}

/// CPU in billionths of a CPU, Docker's `NanoCpus`.
pub fn nano_cpus(q: &str) -> Option<i64> {
    parse(q).map(|v| (v * 1e9).round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(memory_bytes("64Mi"), Some(64 * 1024 * 1024));
        assert_eq!(memory_bytes("1G"), Some(1_000_000_000));
        assert_eq!(memory_bytes("129e6"), Some(129_000_000));
        assert_eq!(memory_bytes("1000"), Some(1000));
        assert_eq!(nano_cpus("500m"), Some(500_000_000));
        assert_eq!(nano_cpus("0.25"), Some(250_000_000));
        assert_eq!(nano_cpus("2"), Some(2_000_000_000));
        assert_eq!(parse("12Qi"), None);
        assert_eq!(parse("abc"), None);
        assert_eq!(parse("-1"), None);
    }
}
