//! A run's scan findings on its page: grouped by severity, the worst first, each group
//! with an icon and a word beside its colour (so it reads without colour), each
//! finding with its stage, tool, rule and place. The same rows the API's
//! `GET …/runs/{number}/findings` answers (`store::list_findings`).

use runner::Severity;

use crate::store::StoredFinding;

/// One finding as shown.
pub struct FindingView {
    pub stage: String,
    pub tool: String,
    pub rule: String,
    /// `path:line`, `path`, or empty when the report named no file.
    pub place: String,
    pub message: String,
}

/// The findings of one severity.
pub struct SeverityGroup {
    /// `critical` … `note`.
    pub severity: &'static str,
    /// `sev-critical` …: the colour.
    pub class: &'static str,
    /// A shape per severity, beside the colour.
    pub icon: &'static str,
    pub findings: Vec<FindingView>,
}

/// Worst first: the order the groups are shown in.
const ORDER: [Severity; 5] = [
    Severity::Critical,
    Severity::High,
    Severity::Medium,
    Severity::Low,
    Severity::Note,
];

fn look(s: Severity) -> (&'static str, &'static str) {
    match s {
        Severity::Critical => ("sev-critical", "‼"),
        Severity::High => ("sev-high", "▲"),
        Severity::Medium => ("sev-medium", "◆"),
        Severity::Low => ("sev-low", "▽"),
        Severity::Note => ("sev-note", "ℹ"),
    }
}

/// The non-empty groups, worst first; within a group, as stored (by stage, then as
/// reported).
pub fn grouped(findings: Vec<StoredFinding>) -> Vec<SeverityGroup> {
    let mut groups: Vec<SeverityGroup> = ORDER
        .iter()
        .map(|&s| {
            let (class, icon) = look(s);
            SeverityGroup {
                severity: s.as_str(),
                class,
                icon,
                findings: Vec::new(),
            }
        })
        .collect();
    for f in findings {
        let Some(i) = ORDER.iter().position(|&s| s == f.severity) else {
            continue;
        };
        let place = match (f.path, f.line) {
            (Some(p), Some(l)) => format!("{p}:{l}"),
            (Some(p), None) => p,
            (None, _) => String::new(),
        };
        groups[i].findings.push(FindingView {
            stage: f.stage_key,
            tool: f.tool,
            rule: f.rule,
            place,
            message: f.message,
        });
    }
    groups.retain(|g| !g.findings.is_empty());
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(
        severity: Severity,
        rule: &str,
        path: Option<&str>,
        line: Option<i64>,
    ) -> StoredFinding {
        StoredFinding {
            id: 0,
            run_id: 1,
            stage_id: 1,
            stage_key: "scan".into(),
            tool: "t".into(),
            rule: rule.into(),
            severity,
            path: path.map(String::from),
            line,
            message: "m".into(),
            created_at: 0,
        }
    }

    #[test]
    fn groups_come_worst_first_and_empty_ones_are_left_out() {
        let groups = grouped(vec![
            finding(Severity::Low, "a", Some("x.rs"), Some(3)),
            finding(Severity::Critical, "b", Some("y.rs"), None),
            finding(Severity::Low, "c", None, None),
        ]);
        let shown: Vec<(&str, Vec<&str>)> = groups
            .iter()
            .map(|g| {
                (
                    g.severity,
                    g.findings.iter().map(|f| f.rule.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(
            shown,
            vec![("critical", vec!["b"]), ("low", vec!["a", "c"])]
        );
        assert_eq!(groups[1].findings[0].place, "x.rs:3");
        assert_eq!(groups[0].findings[0].place, "y.rs");
        assert_eq!(groups[1].findings[1].place, "");
        // Each severity has its own shape, so colour is never the only cue.
        let icons: std::collections::HashSet<_> = ORDER.iter().map(|&s| look(s).1).collect();
        assert_eq!(icons.len(), ORDER.len());
    }
}
