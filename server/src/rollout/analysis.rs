//! Analysis: measuring a check (an HTTP request, a Prometheus query) and judging the
//! measurements so far. `measure` talks to the network; `verdict` is pure.
//!
//! Each interval every check of the analysis is measured once; those measurements share
//! a `seq`. A `seq` fails when one of its checks failed or could not be measured (an
//! error counts as a failure, so `failure_limit` is also the tolerance for a flaky
//! endpoint), is inconclusive when one was inconclusive and none failed, and passes
//! otherwise — as Argo Rollouts counts an analysis run's measurements.

use std::time::{Duration, Instant};

use pipelines::{Analysis, Check, HttpCheck, PromCheck};
use serde_json::Value;

use crate::store::rollouts::Measurement;

/// One check's measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    /// `pass`, `fail`, `inconclusive` or `error`.
    pub outcome: &'static str,
    pub value: Option<String>,
    pub detail: String,
}

impl Measured {
    fn new(outcome: &'static str, value: Option<String>, detail: impl Into<String>) -> Self {
        Measured {
            outcome,
            value,
            detail: detail.into(),
        }
    }
}

/// How long one measurement may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A check's name in the measurement record.
pub fn check_name(c: &Check) -> String {
    match c {
        Check::Http(h) => format!("http {}", h.url),
        Check::Prometheus(p) => format!("prometheus {}", p.query),
    }
}

pub async fn measure(client: &reqwest::Client, c: &Check) -> Measured {
    match c {
        Check::Http(h) => http(client, h).await,
        Check::Prometheus(p) => prometheus(client, p).await,
    }
}

async fn http(client: &reqwest::Client, h: &HttpCheck) -> Measured {
    let started = Instant::now();
    let resp = match client.get(&h.url).timeout(TIMEOUT).send().await {
        Ok(r) => r,
        Err(e) => return Measured::new("error", None, format!("GET {}: {e}", h.url)),
    };
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap_or_default();
    let ms = started.elapsed().as_millis() as u64;
    let value = Some(status.to_string());
    if status != h.expect_status {
        return Measured::new(
            "fail",
            value,
            format!("status {status}, expected {} ({ms} ms)", h.expect_status),
        );
    }
    if let Some(max) = h.max_latency_ms
        && ms > max
    {
        return Measured::new(
            "fail",
            Some(format!("{ms}ms")),
            format!("answered in {ms} ms, more than {max} ms"),
        );
    }
    let Some(j) = &h.json else {
        return Measured::new("pass", value, format!("status {status} in {ms} ms"));
    };
    let doc: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return Measured::new("fail", None, format!("the answer is not JSON: {e}")),
    };
    let path = match serde_json_path::JsonPath::parse(&j.path) {
        Ok(p) => p,
        Err(e) => return Measured::new("error", None, format!("JSONPath {}: {e}", j.path)),
    };
    let found = path.query(&doc).first().cloned();
    match found {
        Some(v) if v == j.equals => {
            Measured::new("pass", Some(v.to_string()), format!("{} = {v}", j.path))
        }
        Some(v) => Measured::new(
            "fail",
            Some(v.to_string()),
            format!("{} = {v}, expected {}", j.path, j.equals),
        ),
        None => Measured::new("fail", None, format!("{} matches nothing", j.path)),
    }
}

async fn prometheus(client: &reqwest::Client, p: &PromCheck) -> Measured {
    let url = format!("{}/api/v1/query", p.address.trim_end_matches('/'));
    let resp = client
        .get(&url)
        .query(&[("query", p.query.as_str())])
        .timeout(TIMEOUT)
        .send()
        .await;
    let body: Value = match resp {
        Ok(r) if r.status().is_success() => match r.json().await {
            Ok(v) => v,
            Err(e) => return Measured::new("error", None, format!("{url}: {e}")),
        },
        Ok(r) => {
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            let why = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or(text);
            return Measured::new("error", None, format!("{url}: {status}: {why}"));
        }
        Err(e) => return Measured::new("error", None, format!("{url}: {e}")),
    };
    let Some(v) = sample(&body["data"]) else {
        let outcome = if p.fail.is_some() {
            "inconclusive"
        } else {
            "fail"
        };
        return Measured::new(outcome, None, "the query returned no sample");
    };
    let value = Some(format_number(v));
    if p.pass.holds(v) {
        Measured::new("pass", value, "passes")
    } else if let Some(f) = p.fail {
        if f.holds(v) {
            Measured::new("fail", value, "crossed the failure threshold")
        } else {
            Measured::new("inconclusive", value, "neither passes nor fails")
        }
    } else {
        Measured::new("fail", value, "does not pass")
    }
}

/// The first sample of an instant query's result (a vector's first element or a
/// scalar), as Prometheus' HTTP API encodes it: `[<time>, "<value>"]`.
fn sample(data: &Value) -> Option<f64> {
    let pair = match data["resultType"].as_str()? {
        "vector" => &data["result"].as_array()?.first()?["value"],
        "scalar" => &data["result"],
        _ => return None,
    };
    pair.get(1)?.as_str()?.parse().ok()
}

fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// What the measurements so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Take another measurement when the interval has passed.
    Running,
    Passed,
    /// More failures than tolerated; the reason names the last failing checks.
    Failed(String),
    /// More inconclusive measurements than tolerated: a person decides.
    Inconclusive(String),
}

/// The verdict on one analysis' measurements (all of them the same step and kind).
pub fn verdict(a: &Analysis, ms: &[&Measurement]) -> Verdict {
    let mut seqs: Vec<i64> = ms.iter().map(|m| m.seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    let (mut failed, mut inconclusive) = (0u32, 0u32);
    let mut last_fail = String::new();
    let mut last_inconclusive = String::new();
    for seq in &seqs {
        let of: Vec<&&Measurement> = ms.iter().filter(|m| m.seq == *seq).collect();
        if let Some(f) = of
            .iter()
            .find(|m| m.outcome == "fail" || m.outcome == "error")
        {
            failed += 1;
            last_fail = format!("{}: {}", f.check, f.detail);
        } else if let Some(i) = of.iter().find(|m| m.outcome == "inconclusive") {
            inconclusive += 1;
            last_inconclusive = format!("{}: {}", i.check, i.detail);
        }
    }
    if failed > a.failure_limit {
        return Verdict::Failed(format!(
            "{failed} of {} measurements failed (limit {}); last: {last_fail}",
            seqs.len(),
            a.failure_limit
        ));
    }
    if inconclusive > a.inconclusive_limit {
        return Verdict::Inconclusive(format!(
            "{inconclusive} inconclusive measurements (limit {}); last: {last_inconclusive}",
            a.inconclusive_limit
        ));
    }
    match a.count {
        Some(n) if seqs.len() as u32 >= n => Verdict::Passed,
        _ => Verdict::Running,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(seq: i64, outcome: &str) -> Measurement {
        Measurement {
            step: 0,
            analysis: "step".into(),
            seq,
            check: "http x".into(),
            outcome: outcome.into(),
            value: None,
            detail: "d".into(),
            at: 0,
        }
    }

    fn analysis(count: Option<u32>, failure_limit: u32) -> Analysis {
        Analysis {
            checks: vec![],
            interval_secs: 1,
            count,
            failure_limit,
            inconclusive_limit: 0,
        }
    }

    #[test]
    fn passes_after_count_measurements_within_the_failure_limit() {
        let ms = [m(1, "pass"), m(2, "fail"), m(3, "pass")];
        let refs: Vec<&Measurement> = ms.iter().collect();
        assert_eq!(verdict(&analysis(Some(3), 1), &refs), Verdict::Passed);
        assert_eq!(verdict(&analysis(Some(4), 1), &refs), Verdict::Running);
        assert!(matches!(
            verdict(&analysis(Some(3), 0), &refs),
            Verdict::Failed(_)
        ));
    }

    #[test]
    fn an_error_counts_as_a_failure_and_inconclusive_pauses() {
        let errs = [m(1, "error")];
        let refs: Vec<&Measurement> = errs.iter().collect();
        assert!(matches!(
            verdict(&analysis(None, 0), &refs),
            Verdict::Failed(_)
        ));
        let inc = [m(1, "inconclusive")];
        let refs: Vec<&Measurement> = inc.iter().collect();
        assert!(matches!(
            verdict(&analysis(Some(5), 0), &refs),
            Verdict::Inconclusive(_)
        ));
    }

    #[test]
    fn prometheus_samples_from_vectors_and_scalars() {
        let v = serde_json::json!({ "resultType": "vector", "result": [{ "metric": {}, "value": [1.0, "0.25"] }] });
        assert_eq!(sample(&v), Some(0.25));
        let s = serde_json::json!({ "resultType": "scalar", "result": [1.0, "3"] });
        assert_eq!(sample(&s), Some(3.0));
        let empty = serde_json::json!({ "resultType": "vector", "result": [] });
        assert_eq!(sample(&empty), None);
    }
}
