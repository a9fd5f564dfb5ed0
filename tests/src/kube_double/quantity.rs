//! Kubernetes resource quantities (`128Mi`, `1G`, `500m`, `0.5`, `1e3`) turned into
//! what Docker takes: bytes for memory, nano-CPUs for cpu; and [`Amount`], the exact
//! value the scheduler and quota admission add up and print.

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

/// A quantity held exactly, in billionths (`resource.Quantity` keeps nano precision),
/// with the notation it was written in: sums keep the first operand's, as upstream's
/// `Quantity.Add` does, and [`Amount`]'s `Display` is upstream's canonical form
/// (`k8s.io/apimachinery/pkg/api/resource/quantity.go`, `CanonicalizeBytes`): binary
/// suffixes for a binary quantity of at least 1Ki that is a whole number, else the
/// largest decimal suffix (`n`, `u`, `m`, ``, `k`, `M`, …) that keeps an integer
/// mantissa: `1500m`, `2`, `1536Mi`, `1500k`. The exponent notation (`1e3`) prints as
/// decimal SI here (upstream keeps `1e3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Amount {
    nanos: i128,
    binary: bool,
}

const NANO: i128 = 1_000_000_000;
const BINARY_SUFFIXES: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
const DECIMAL_SUFFIXES: [(&str, u32); 10] = [
    ("E", 27),
    ("P", 24),
    ("T", 21),
    ("G", 18),
    ("M", 15),
    ("k", 12),
    ("", 9),
    ("m", 6),
    ("u", 3),
    ("n", 0),
];

impl Amount {
    pub const ZERO: Amount = Amount {
        nanos: 0,
        binary: false,
    };

    /// Parses a quantity exactly; digits beyond nano precision round up, as upstream.
    pub fn parse(q: &str) -> Option<Amount> {
        let q = q.trim();
        let q = q.strip_prefix('+').unwrap_or(q);
        let split = q
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(q.len());
        let (number, suffix) = q.split_at(split);
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && frac.is_empty() || frac.len() > 30 || whole.len() > 30 {
            return None;
        }
        let digits: i128 = format!("{whole}{frac}").parse().ok()?;
        // value = digits / 10^frac × factor, with factor = num × 10^exp10.
        let (num, exp10, binary): (i128, i32, bool) =
            if let Some(i) = BINARY_SUFFIXES.iter().position(|s| *s == suffix) {
                (1024i128.pow(i as u32 + 1), 0, true)
            } else if let Some((_, e)) = DECIMAL_SUFFIXES.iter().find(|(s, _)| *s == suffix) {
                (1, *e as i32 - 9, false)
            } else if let Some(exp) = suffix.strip_prefix(['e', 'E']) {
                (1, exp.parse().ok()?, false)
            } else {
                return None;
            };
        // In nanos: × 10^9 and ÷ 10^frac.
        let scale = exp10 + 9 - frac.len() as i32;
        let mut value = digits.checked_mul(num)?;
        if scale >= 0 {
            value = value.checked_mul(10i128.checked_pow(scale as u32)?)?;
        } else {
            let div = 10i128.checked_pow((-scale) as u32)?;
            value = value / div + i128::from(value % div != 0);
        }
        Some(Amount {
            nanos: value,
            binary,
        })
    }

    /// Whole units, rounded up (bytes of memory).
    pub fn ceil_units(self) -> i128 {
        (self.nanos + NANO - 1).div_euclid(NANO)
    }

    /// Thousandths, rounded up (millicores).
    pub fn ceil_millis(self) -> i128 {
        (self.nanos + 999_999).div_euclid(1_000_000)
    }

    pub fn is_zero(self) -> bool {
        self.nanos == 0
    }

    /// The sum, in `self`'s notation.
    pub fn plus(self, other: Amount) -> Amount {
        Amount {
            nanos: self.nanos.saturating_add(other.nanos),
            binary: self.binary,
        }
    }
}

impl PartialOrd for Amount {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.nanos.cmp(&other.nanos))
    }
}

impl std::fmt::Display for Amount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.nanos;
        if n == 0 {
            return f.write_str("0");
        }
        if self.binary && n % NANO == 0 && n.abs() >= 1024 * NANO {
            let mut units = n / NANO;
            let mut suffix = "";
            for s in BINARY_SUFFIXES {
                if units % 1024 != 0 {
                    break;
                }
                units /= 1024;
                suffix = s;
            }
            return write!(f, "{units}{suffix}");
        }
        for (suffix, exp) in DECIMAL_SUFFIXES {
            let unit = 10i128.pow(exp);
            if n % unit == 0 {
                return write!(f, "{}{suffix}", n / unit);
            }
        }
        unreachable!("every integer is a multiple of 10^0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_exact_and_print_canonically() {
        let show = |q: &str| Amount::parse(q).unwrap().to_string();
        assert_eq!(show("500m"), "500m");
        assert_eq!(show("1.5"), "1500m");
        assert_eq!(show("2"), "2");
        assert_eq!(show("2000"), "2k");
        assert_eq!(show("1500000"), "1500k");
        assert_eq!(show("1.5Gi"), "1536Mi");
        assert_eq!(show("1024Mi"), "1Gi");
        assert_eq!(show("512"), "512");
        assert_eq!(show("0.1n"), "1n");
        assert_eq!(show("1e3"), "1k");
        assert_eq!(show("0"), "0");
        assert_eq!(Amount::parse("12Qi"), None);
        assert_eq!(Amount::parse("-1"), None);
        assert_eq!(Amount::parse(""), None);
        let a = Amount::parse("1Gi")
            .unwrap()
            .plus(Amount::parse("512Mi").unwrap());
        assert_eq!(a.to_string(), "1536Mi");
        let b = Amount::parse("500m")
            .unwrap()
            .plus(Amount::parse("1").unwrap());
        assert_eq!(b.to_string(), "1500m");
        assert_eq!(Amount::parse("1500m").unwrap().ceil_millis(), 1500);
        assert_eq!(Amount::parse("0.5").unwrap().ceil_units(), 1);
        assert!(Amount::parse("1Gi").unwrap() > Amount::parse("1G").unwrap());
    }

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
