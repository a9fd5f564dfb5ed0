//! Failing analysis rolls back within one analysis interval (+1 s), and the stable
//! version answers every request meanwhile: once with a real HTTP health endpoint that
//! the test flips to 500, once with a real Prometheus (Debian's `prometheus`, started
//! here on a free port, scraping a metrics endpoint of the test) whose error-rate
//! query crosses its threshold.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;

use super::rig::Rig;
use super::{Health, Loop};

const INTERVAL_SECS: u64 = 2;

fn pipeline(image: &str, check: &str) -> String {
    format!(
        r#"stages:
  deploy:
    kind: deploy
    environment: prod
    target: {{ deployment: web }}
    image: {image}
    strategy:
      canary:
        traffic: {{ gateway: {{ route: web }} }}
        steps:
          - weight: 50
          - analysis:
              interval: {INTERVAL_SECS}s
              count: 60
              {check}
          - weight: 100
"#
    )
}

/// Waits until the rollout has taken `n` measurements, then starts the request loop.
async fn analysing(rig: &Rig, run: i64, n: usize) -> Loop {
    rig.rollout_when(run, "deploy", "the analysis to be under way", |v| {
        v["rollout"]["step"] == 1 && v["measurements"].as_array().is_some_and(|m| m.len() >= n)
    })
    .await;
    Loop::start(rig.double.gateway_addr())
}

/// From `since`, how long until the route sends nothing to the canary (bounded).
async fn until_route_is_stable(rig: &Rig, since: Instant) -> Duration {
    let deadline = since + Duration::from_secs(30);
    while Instant::now() < deadline {
        let route = rig.routes().get("web").await.unwrap();
        if !route.data["spec"]["rules"]
            .to_string()
            .contains("web-canary")
        {
            return since.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the route still sends to the canary 30 s later:\n{}",
        rig.server_log_tail()
    );
}

async fn rolled_back(
    rig: &Rig,
    run: i64,
    traffic: Loop,
    took: Duration,
    budget: Duration,
    why: &str,
) {
    assert!(
        took <= budget,
        "traffic went back to stable {took:?} after the failure, more than {budget:?}"
    );
    let done = rig.finished(run).await;
    assert_eq!(done["run"]["status"], "failure", "{done:#}");
    let stage = &done["stages"][0];
    let reason = stage["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("rolled back") && reason.contains(why),
        "{reason}"
    );
    // Keep sending a little after the rollback, then look at every answer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = traffic.stop().await;
    assert_eq!(c.failed, 0, "requests failed during the rollback: {c:?}");
    assert!(c.v2 > 0 && c.v1 > 0, "{c:?}");
    assert_eq!(rig.stable_image().await, rig.images.v1);
    assert_eq!(rig.leftovers().await, Vec::<String>::new());
    let v = rig
        .rollout_when(run, "deploy", "the failed record", |v| {
            v["rollout"]["phase"] == "failed"
        })
        .await;
    let failing: Vec<_> = v["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["outcome"] == "fail")
        .collect();
    assert_eq!(failing.len(), 1, "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_check_flipped_to_500_rolls_back_within_an_interval() {
    let mut rig = Rig::start(2).await;
    let health = Health::start().await;
    let check = format!("http: {{ url: \"{}\" }}", health.url());
    let run = rig.push(&pipeline(&rig.images.v2, &check)).await;
    let traffic = analysing(&rig, run, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let flipped = Instant::now();
    health.fail();
    let took = until_route_is_stable(&rig, flipped).await;
    let budget = Duration::from_secs(INTERVAL_SECS + 1);
    rolled_back(&rig, run, traffic, took, budget, "status 500").await;
    rig.double.shutdown().await;
}

/// A `/metrics` endpoint with one gauge the test sets.
async fn metrics(value: Arc<Mutex<f64>>) -> SocketAddr {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let v = *value.lock().unwrap();
            async move { format!("# TYPE demo_error_ratio gauge\ndemo_error_ratio {v}\n") }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// A real Prometheus scraping `target` every second; killed on drop.
struct Prometheus {
    child: std::process::Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    async fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: demo\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = tests::server_support::process::free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus (bash .ci/prometheus.sh installs it)");
        Prometheus {
            child,
            addr,
            _dir: dir,
        }
    }

    /// The query's current value, if Prometheus has one.
    async fn value(&self, query: &str) -> Option<f64> {
        let url = format!("http://{}/api/v1/query", self.addr);
        let v: serde_json::Value = reqwest::Client::new()
            .get(url)
            .query(&[("query", query)])
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    async fn wait_for(&self, query: &str, want: f64) -> Instant {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.value(query).await == Some(want) {
                return Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("Prometheus never saw {query} = {want}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_error_rate_over_its_threshold_rolls_back_within_an_interval() {
    let ratio = Arc::new(Mutex::new(0.0));
    let target = metrics(ratio.clone()).await;
    let prom = Prometheus::start(target).await;
    prom.wait_for("demo_error_ratio", 0.0).await;
    let mut rig = Rig::start(2).await;
    let check = format!(
        "prometheus: {{ address: \"http://{}\", query: demo_error_ratio, pass: \"< 0.05\", fail: \">= 0.05\" }}",
        prom.addr
    );
    let run = rig.push(&pipeline(&rig.images.v2, &check)).await;
    let traffic = analysing(&rig, run, 2).await;
    *ratio.lock().unwrap() = 0.5;
    // The clock starts when Prometheus itself answers with the crossed value: the
    // scrape interval is Prometheus' latency, not the controller's.
    let seen = prom.wait_for("demo_error_ratio", 0.5).await;
    let took = until_route_is_stable(&rig, seen).await;
    let budget = Duration::from_secs(INTERVAL_SECS + 1);
    rolled_back(
        &rig,
        run,
        traffic,
        took,
        budget,
        "crossed the failure threshold",
    )
    .await;
    rig.double.shutdown().await;
}

/// A canary's background analysis runs through the steps: a value between `pass` and
/// `fail` pauses the rollout for a person; after their promote it counts afresh, and a
/// value over `fail` rolls back at once, the stable version untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_analysis_pauses_when_inconclusive_and_rolls_back_when_failing() {
    let ratio = Arc::new(Mutex::new(0.0));
    let target = metrics(ratio.clone()).await;
    let prom = Prometheus::start(target).await;
    prom.wait_for("demo_error_ratio", 0.0).await;
    let mut rig = Rig::start(1).await;
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
        analysis:
          interval: 1s
          prometheus: {{ address: "http://{}", query: demo_error_ratio, pass: "< 0.05", fail: ">= 0.5" }}
        steps:
          - weight: 20
          - pause: 10m
          - weight: 100
          - pause: 10m
"#,
        rig.images.v2, prom.addr
    );
    let run = rig.push(&yaml).await;
    rig.rollout_when(run, "deploy", "the long pause", |v| {
        v["rollout"]["step"] == 1 && v["measurements"].as_array().is_some_and(|m| m.len() >= 2)
    })
    .await;
    *ratio.lock().unwrap() = 0.2;
    let v = rig
        .rollout_when(run, "deploy", "a pause for the inconclusive value", |v| {
            v["rollout"]["phase"] == "paused"
        })
        .await;
    let message = v["rollout"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("background analysis inconclusive"),
        "{v:#}"
    );
    assert_eq!(v["rollout"]["step"], 1);
    // The person goes on (past the pause, too); the analysis keeps running.
    *ratio.lock().unwrap() = 0.0;
    prom.wait_for("demo_error_ratio", 0.0).await;
    rig.ok_as(
        &rig.token("rm"),
        &["rollout", "promote", "team/app", &run.to_string(), "deploy"],
    );
    let v = rig
        .rollout_when(run, "deploy", "the rollout going on", |v| {
            v["rollout"]["phase"] == "progressing" && v["rollout"]["step"] == 3
        })
        .await;
    assert!(v["rollout"]["message"].is_null(), "{v:#}");
    *ratio.lock().unwrap() = 0.9;
    let done = rig.finished(run).await;
    assert_eq!(done["run"]["status"], "failure", "{done:#}");
    let reason = done["stages"][0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("background analysis failed"), "{reason}");
    assert_eq!(rig.stable_image().await, rig.images.v1);
    assert_eq!(rig.leftovers().await, Vec::<String>::new());
    rig.double.shutdown().await;
}
