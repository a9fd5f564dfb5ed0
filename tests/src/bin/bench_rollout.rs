//! How fast a failed analysis puts all traffic back on the stable version: from the
//! failing measurement (its timestamp, stored by the server) to the moment the
//! HTTPRoute no longer sends anything to the canary, through the real `slipway server`
//! process and the Kubernetes double (the rollout rig of the tests). Printed beside the
//! floor measured in the same run on the same double: one API write (a PUT of the same
//! HTTPRoute). The measurement interval is not part of it: the controller cannot roll
//! back before it measures.
//!
//! Run: `cargo build --release -p server -p tests && target/release/bench_rollout`
//! (`--quick`: 2 rollouts instead of 5).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use kube::api::PostParams;
use tests::rollout_rig::Rig;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn health() -> (String, Arc<AtomicBool>) {
    let ok = Arc::new(AtomicBool::new(true));
    let h = ok.clone();
    let app = Router::new().route(
        "/health",
        get(move || {
            let h = h.clone();
            async move {
                if h.load(Ordering::SeqCst) {
                    StatusCode::OK
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/health"), ok)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Milliseconds of one PUT of the route, `n` times.
async fn api_writes(rig: &Rig, n: usize) -> anyhow::Result<Vec<f64>> {
    let api = rig.routes();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut route = api.get("web").await?;
        route
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert("bench".into(), i.to_string());
        let started = Instant::now();
        api.replace("web", &PostParams::default(), &route).await?;
        out.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(out)
}

/// One rollout that fails its analysis: milliseconds from the failing measurement to
/// the route sending nothing to the canary.
async fn one_rollback(rig: &mut Rig) -> anyhow::Result<f64> {
    let (url, ok) = health().await;
    let yaml = format!(
        r#"stages:
  deploy:
    kind: deploy
    environment: prod
    target: {{ deployment: web }}
    image: {}
    strategy:
      canary:
        traffic: {{ gateway: {{ route: web }} }}
        steps:
          - weight: 50
          - analysis: {{ interval: 1s, count: 600, http: {{ url: "{url}" }} }}
          - weight: 100
"#,
        rig.images.v2
    );
    let run = rig.push(&yaml).await;
    rig.rollout_when(run, "deploy", "the analysis", |v| {
        v["measurements"].as_array().is_some_and(|m| !m.is_empty())
    })
    .await;
    ok.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    let restored = loop {
        if Instant::now() > deadline {
            bail!("the route still sends to the canary after 30 s");
        }
        let route = rig.routes().get("web").await?;
        if !route.data["spec"]["rules"]
            .to_string()
            .contains("web-canary")
        {
            break now_ms();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let v = rig
        .rollout_when(run, "deploy", "the rollback", |v| {
            v["rollout"]["phase"] == "failed"
        })
        .await;
    let failed_at = v["measurements"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["outcome"] == "fail"))
        .and_then(|m| m["at"].as_i64())
        .context("the failing measurement")?;
    Ok((restored - failed_at) as f64)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let quick = tests::bench_support::args(
        "bench_rollout",
        "A failed canary analysis to all traffic back on stable, through the real server and the Kubernetes double, against the analysis interval.",
    )
    .quick;
    let rollouts = if quick { 2 } else { 5 };
    let mut rig = Rig::start(1).await;
    let mut floor = api_writes(&rig, 50).await?;
    let mut rollbacks = Vec::new();
    for _ in 0..rollouts {
        rollbacks.push(one_rollback(&mut rig).await?);
    }
    let floor_ms = median(&mut floor);
    let worst = rollbacks.iter().cloned().fold(0.0, f64::max);
    let rollback_ms = median(&mut rollbacks);
    println!(
        "bench_rollout: {rollouts} rollouts failing their analysis (gateway canary, 1 replica)"
    );
    println!(
        "  floor: one API write (PUT HTTPRoute) on the double   {floor_ms:>8.1} ms (median of 50)"
    );
    println!(
        "  failed measurement -> 100 % on stable                {rollback_ms:>8.1} ms (median; worst {worst:.1} ms)  = {:.1}x the floor",
        rollback_ms / floor_ms
    );
    rig.double.shutdown().await;
    Ok(())
}
