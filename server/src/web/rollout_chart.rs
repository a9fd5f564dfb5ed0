//! A rollout's numeric measurements as a small SVG chart: one line per check over the
//! measurements in time order, each point a circle when it passed and a cross when it
//! did not (shape, not only colour), the scale's ends written on the side. Pure; the
//! table beside it has every value in words.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::view::esc;

pub struct ChartPoint<'a> {
    pub check: &'a str,
    pub value: f64,
    pub ok: bool,
    pub at: i64,
}

const W: f64 = 560.0;
const H: f64 = 120.0;
const LEFT: f64 = 56.0;
const PAD: f64 = 10.0;
/// Checks drawn (one line each); more would not read at this size.
const MAX_CHECKS: usize = 4;

/// The chart, or an empty string when nothing is numeric.
pub fn svg(points: &[ChartPoint]) -> String {
    let points: Vec<&ChartPoint> = points.iter().filter(|p| p.value.is_finite()).collect();
    if points.is_empty() {
        return String::new();
    }
    let mut by_check: BTreeMap<&str, Vec<&ChartPoint>> = BTreeMap::new();
    for p in &points {
        if by_check.len() < MAX_CHECKS || by_check.contains_key(p.check) {
            by_check.entry(p.check).or_default().push(p);
        }
    }
    let lo = points.iter().map(|p| p.value).fold(f64::INFINITY, f64::min);
    let hi = points
        .iter()
        .map(|p| p.value)
        .fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if (hi - lo).abs() < f64::EPSILON {
        (lo - 1.0, hi + 1.0)
    } else {
        (lo, hi)
    };
    let t0 = points.iter().map(|p| p.at).min().unwrap_or(0);
    let t1 = points.iter().map(|p| p.at).max().unwrap_or(0);
    let span = (t1 - t0).max(1) as f64;
    let x = |at: i64| LEFT + PAD + (at - t0) as f64 / span * (W - LEFT - 2.0 * PAD);
    let y = |v: f64| PAD + (hi - v) / (hi - lo) * (H - 2.0 * PAD);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {H}\" class=\"chart\" role=\"img\" aria-label=\"Measurements over time: {} points, from {} to {}\">",
        points.len(),
        num(lo),
        num(hi)
    );
    let _ = write!(
        out,
        "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{PAD}\" x2=\"{LEFT}\" y2=\"{}\"/>\
         <text class=\"scale\" x=\"{}\" y=\"{}\">{}</text>\
         <text class=\"scale\" x=\"{}\" y=\"{}\">{}</text>",
        H - PAD,
        LEFT - 4.0,
        PAD + 4.0,
        esc(&num(hi)),
        LEFT - 4.0,
        H - PAD,
        esc(&num(lo)),
    );
    for (i, (check, pts)) in by_check.iter().enumerate() {
        let path: Vec<String> = pts
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.at), y(p.value)))
            .collect();
        let _ = write!(
            out,
            "<g class=\"series c{i}\"><title>{}</title><polyline points=\"{}\"/>",
            esc(check),
            path.join(" ")
        );
        for p in pts {
            let (cx, cy) = (x(p.at), y(p.value));
            if p.ok {
                let _ = write!(
                    out,
                    "<circle class=\"pass\" cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"3\"><title>{} pass</title></circle>",
                    esc(&num(p.value))
                );
            } else {
                let _ = write!(
                    out,
                    "<path class=\"fail\" d=\"M{:.1} {:.1}l8 8m0 -8l-8 8\"><title>{} not passed</title></path>",
                    cx - 4.0,
                    cy - 4.0,
                    esc(&num(p.value))
                );
            }
        }
        out.push_str("</g>");
    }
    out.push_str("</svg>");
    out
}

fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_marks_failures_by_shape_and_escapes_check_names() {
        let pts = [
            ChartPoint {
                check: "prometheus <q>",
                value: 0.5,
                ok: true,
                at: 1_000,
            },
            ChartPoint {
                check: "prometheus <q>",
                value: 2.25,
                ok: false,
                at: 2_000,
            },
        ];
        let s = svg(&pts);
        assert!(s.contains("<circle class=\"pass\""), "{s}");
        assert!(s.contains("<path class=\"fail\""), "{s}");
        assert!(
            s.contains("prometheus &lt;q&gt;") && !s.contains("<q>"),
            "{s}"
        );
        assert!(s.contains(">2.25<") && s.contains(">0.5<"), "{s}");
    }

    #[test]
    fn nothing_numeric_draws_nothing() {
        assert_eq!(svg(&[]), "");
        let one = [ChartPoint {
            check: "http x",
            value: f64::NAN,
            ok: true,
            at: 0,
        }];
        assert_eq!(svg(&one), "");
    }

    #[test]
    fn one_value_still_has_a_scale() {
        let one = [ChartPoint {
            check: "http x",
            value: 200.0,
            ok: true,
            at: 5,
        }];
        let s = svg(&one);
        assert!(s.contains(">201<") && s.contains(">199<"), "{s}");
    }
}
