//! How things look on a page: status badges (a colour class and an icon, so status
//! reads without colour), durations and times, and the stage graph as SVG.

use std::collections::HashMap;
use std::fmt::Write;

/// A status as shown: colour class, icon, word.
#[derive(Debug, Clone)]
pub struct Badge {
    pub class: &'static str,
    pub icon: &'static str,
    pub label: String,
}

/// The badge of a run, stage or step status name (`blocked` for a run at a gate).
pub fn badge(status: &str) -> Badge {
    let (class, icon) = match status {
        "success" => ("s-ok", "✓"),
        "failure" | "error" | "timed_out" => ("s-bad", "✗"),
        "running" => ("s-run", "●"),
        "blocked" => ("s-wait", "‖"),
        "waiting" | "queued" | "pending" => ("s-wait", "◌"),
        _ => ("s-off", "○"),
    };
    Badge {
        class,
        icon,
        label: status.to_string(),
    }
}

/// `1m 05s` between two instants (ms), or since `start` when it has not ended.
pub fn duration(start: Option<i64>, end: Option<i64>, now: i64) -> String {
    let Some(start) = start else {
        return String::new();
    };
    let ms = end.unwrap_or(now).saturating_sub(start).max(0);
    let s = ms / 1000;
    match s {
        0 => format!("{:.1}s", ms as f64 / 1000.0),
        1..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// `3 min ago` for an instant (ms).
pub fn ago(at: i64, now: i64) -> String {
    let s = (now - at).max(0) / 1000;
    match s {
        0..=59 => "just now".into(),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86399 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86400),
    }
}

/// The first 7 characters of a commit.
pub fn short(sha: &str) -> &str {
    &sha[..sha.len().min(7)]
}

/// A node of the stage graph.
pub struct DagNode<'a> {
    pub key: &'a str,
    pub status: &'a str,
    pub needs: &'a [String],
    pub anchor: String,
}

const W: i64 = 190;
const H: i64 = 34;
const GAP_X: i64 = 50;
const GAP_Y: i64 = 14;

/// The stages as an SVG graph: one column per depth of `needs`, an edge per need, each
/// node with its status colour and icon (text, so it reads without colour).
pub fn dag_svg(nodes: &[DagNode]) -> String {
    let index: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.key, i)).collect();
    let mut depth = vec![0usize; nodes.len()];
    // Longest path from a root; bounded passes (needs were checked acyclic).
    for _ in 0..nodes.len() {
        let mut changed = false;
        for (i, n) in nodes.iter().enumerate() {
            for need in n.needs {
                if let Some(&j) = index.get(need.as_str())
                    && depth[i] < depth[j] + 1
                {
                    depth[i] = depth[j] + 1;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let mut row_in_col: HashMap<usize, i64> = HashMap::new();
    let pos: Vec<(i64, i64)> = depth
        .iter()
        .map(|&d| {
            let row = row_in_col.entry(d).or_insert(0);
            let p = (10 + d as i64 * (W + GAP_X), 10 + *row * (H + GAP_Y));
            *row += 1;
            p
        })
        .collect();
    let width = pos.iter().map(|p| p.0 + W + 10).max().unwrap_or(20);
    let height = pos.iter().map(|p| p.1 + H + 10).max().unwrap_or(20);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {width} {height}\" width=\"{width}\" height=\"{height}\" role=\"img\" aria-label=\"Stage graph\">"
    );
    for (i, n) in nodes.iter().enumerate() {
        for need in n.needs {
            if let Some(&j) = index.get(need.as_str()) {
                let (x1, y1) = (pos[j].0 + W, pos[j].1 + H / 2);
                let (x2, y2) = (pos[i].0, pos[i].1 + H / 2);
                let mid = (x1 + x2) / 2;
                let _ = write!(
                    svg,
                    "<path class=\"edge\" d=\"M{x1} {y1} C{mid} {y1} {mid} {y2} {x2} {y2}\"/>"
                );
            }
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        let b = badge(n.status);
        let (x, y) = pos[i];
        let label: String = n.key.chars().take(22).collect();
        let _ = write!(
            svg,
            "<a href=\"{}\"><g class=\"node {}\" data-stage=\"{}\" data-status=\"{}\"><title>{} — {}</title><rect x=\"{x}\" y=\"{y}\" width=\"{W}\" height=\"{H}\" rx=\"6\"/><text x=\"{}\" y=\"{}\">{} {}</text></g></a>",
            esc(&n.anchor),
            b.class,
            esc(n.key),
            esc(n.status),
            esc(n.key),
            esc(n.status),
            x + 10,
            y + 22,
            b.icon,
            esc(&label)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Escapes text for HTML and SVG.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_graph_escapes_stage_names_and_places_needs_to_the_right() {
        let needs = vec!["a".to_string()];
        let nodes = [
            DagNode {
                key: "a",
                status: "success",
                needs: &[],
                anchor: "#s1".into(),
            },
            DagNode {
                key: "<b>",
                status: "failure",
                needs: &needs,
                anchor: "#s2".into(),
            },
        ];
        let svg = dag_svg(&nodes);
        assert!(svg.contains("&lt;b&gt;") && !svg.contains("<b>"), "{svg}");
        assert!(svg.contains("class=\"node s-bad\""), "{svg}");
        assert!(svg.contains("<path class=\"edge\""), "{svg}");
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(duration(Some(0), Some(65_000), 0), "1m 05s");
        assert_eq!(duration(Some(0), Some(400), 0), "0.4s");
        assert_eq!(duration(None, None, 5), "");
    }
}

/// Template filters: askama looks them up in a `filters` module in the template's scope.
pub mod filters {
    /// A repository name in a URL path, `/repos/{{ repo|repo_url }}/…`: a GitLab project
    /// in subgroups stays two segments ([`crate::admin::repos::url_path`]).
    pub fn repo_url<T: std::fmt::Display>(
        name: T,
        _: &dyn askama::Values,
    ) -> askama::Result<String> {
        Ok(crate::admin::repos::url_path(&name.to_string()))
    }
}
