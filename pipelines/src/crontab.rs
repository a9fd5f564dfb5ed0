//! Cron expressions: standard 5-field crontab, or the `cron` crate's 6/7-field form.

use std::str::FromStr;

/// Returns the expression in the form the `cron` crate (and so the scheduler) reads.
///
/// A 5-field crontab gets a leading seconds field, and its numeric day-of-week values
/// become names: crontab counts Sunday as 0 (or 7), the `cron` crate as 1, so passing
/// `1-5` through unchanged would silently run Sunday–Thursday instead of Monday–Friday.
pub fn normalize_cron(expr: &str) -> Result<String, String> {
    let expr = expr.trim();
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let normalized = if expr.starts_with('@') {
        expr.to_string()
    } else {
        match fields.len() {
            5 => {
                let dow = crontab_dow_to_names(fields.get(4).copied().unwrap_or("*"));
                let head = fields.get(..4).unwrap_or_default().join(" ");
                format!("0 {head} {dow}")
            }
            6 | 7 => fields.join(" "),
            n => {
                return Err(format!(
                    "cron expression `{expr}` has {n} fields; expected 5 (minute hour day month weekday), 6 or 7"
                ));
            }
        }
    };
    cron::Schedule::from_str(&normalized)
        .map(|_| normalized)
        .map_err(|e| {
            // The crate's message embeds a caret diagram; keep only its last line.
            let msg = e.to_string();
            let last = msg.lines().last().unwrap_or_default().trim().to_string();
            format!("invalid cron expression `{expr}`: {last}")
        })
}

fn crontab_dow_to_names(field: &str) -> String {
    const NAMES: [&str; 8] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"];
    let map_num = |s: &str| -> String {
        match s.parse::<usize>() {
            Ok(n) => NAMES
                .get(n)
                .map_or_else(|| s.to_string(), |n| n.to_string()),
            Err(_) => s.to_string(),
        }
    };
    field
        .split(',')
        .map(|item| {
            let (range, step) = match item.split_once('/') {
                Some((r, s)) => (r, Some(s)),
                None => (item, None),
            };
            let range = range.split('-').map(map_num).collect::<Vec<_>>().join("-");
            match step {
                Some(s) => format!("{range}/{s}"),
                None => range,
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::normalize_cron;

    #[test]
    fn five_fields_get_seconds_and_weekday_names() {
        assert_eq!(normalize_cron("0 3 * * *").unwrap(), "0 0 3 * * *");
        assert_eq!(normalize_cron("0 3 * * 1-5").unwrap(), "0 0 3 * * MON-FRI");
        assert_eq!(
            normalize_cron("*/15 * * * 0,6").unwrap(),
            "0 */15 * * * SUN,SAT"
        );
    }

    #[test]
    fn six_and_seven_fields_and_shortcuts_pass_through() {
        assert_eq!(normalize_cron("0 0 3 * * *").unwrap(), "0 0 3 * * *");
        assert_eq!(
            normalize_cron("0 0 3 * * * 2030").unwrap(),
            "0 0 3 * * * 2030"
        );
        assert_eq!(normalize_cron("@daily").unwrap(), "@daily");
    }

    #[test]
    fn rejects_nonsense() {
        assert!(normalize_cron("").is_err());
        assert!(normalize_cron("every day").is_err());
        assert!(normalize_cron("61 * * * *").is_err());
        assert!(normalize_cron("* * * *").is_err());
        assert!(normalize_cron("@sometimes").is_err());
    }
}
