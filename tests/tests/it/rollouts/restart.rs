//! `kill -9` of the server mid-rollout — during a pause, and during an analysis — and a
//! restart: the rollout goes on from its persisted step; nothing is applied twice (the
//! canary Deployment keeps its generation and its pods, the route its
//! resourceVersion, every measurement is taken once); nothing is left behind.

use std::collections::BTreeSet;
use std::time::Duration;

use kube::api::ListParams;

use super::Health;
use super::rig::Rig;

/// The canary Deployment's generation and its pods' names.
async fn canary_state(rig: &Rig) -> (i64, BTreeSet<String>) {
    let d = rig.deployments().get("web-canary").await.unwrap();
    let pods = rig
        .pods()
        .list(&ListParams::default().labels("slipway.dev/canary=web"))
        .await
        .unwrap();
    (
        d.metadata.generation.unwrap_or(0),
        pods.items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect(),
    )
}

fn kill_and_restart(rig: &mut Rig) {
    rig.p.kill("server");
    rig.p.start_server("server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_during_a_pause_resumes_the_rollout_at_its_step() {
    let mut rig = Rig::start(2).await;
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
          - weight: 30
          - pause: {{}}
          - weight: 100
"#,
        rig.images.v2
    );
    let run = rig.push(&yaml).await;
    rig.rollout_when(run, "deploy", "the pause", |v| {
        v["rollout"]["phase"] == "paused" && v["rollout"]["step"] == 1
    })
    .await;
    let before = canary_state(&rig).await;
    let route_rv = rig
        .routes()
        .get("web")
        .await
        .unwrap()
        .metadata
        .resource_version;
    kill_and_restart(&mut rig);
    // Past the old lease: the restarted server has taken the rollout over by now.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let v = rig
        .rollout_when(run, "deploy", "the pause after the restart", |v| {
            v["rollout"]["phase"] == "paused"
        })
        .await;
    assert_eq!(v["rollout"]["step"], 1, "{v:#}");
    assert_eq!(
        canary_state(&rig).await,
        before,
        "the canary was applied again"
    );
    assert_eq!(
        rig.routes()
            .get("web")
            .await
            .unwrap()
            .metadata
            .resource_version,
        route_rv,
        "the route was written again"
    );
    rig.ok_as(
        &rig.token("rm"),
        &["rollout", "promote", "team/app", &run.to_string(), "deploy"],
    );
    let done = rig.finished(run).await;
    assert_eq!(
        done["run"]["status"],
        "success",
        "{done:#}\n{}",
        rig.server_log_tail()
    );
    assert_eq!(rig.stable_image().await, rig.images.v2);
    assert_eq!(rig.leftovers().await, Vec::<String>::new());
    rig.double.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_during_an_analysis_takes_each_measurement_once() {
    let mut rig = Rig::start(2).await;
    let health = Health::start().await;
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
          - weight: 40
          - analysis: {{ interval: 1s, count: 8, http: {{ url: "{}" }} }}
          - weight: 100
"#,
        rig.images.v2,
        health.url()
    );
    let run = rig.push(&yaml).await;
    rig.rollout_when(run, "deploy", "three measurements", |v| {
        v["measurements"].as_array().is_some_and(|m| m.len() >= 3)
    })
    .await;
    let before = canary_state(&rig).await;
    kill_and_restart(&mut rig);
    let done = rig.finished(run).await;
    assert_eq!(
        done["run"]["status"],
        "success",
        "{done:#}\n{}",
        rig.server_log_tail()
    );
    let v = rig
        .rollout_when(run, "deploy", "the record", |v| {
            v["rollout"]["phase"] == "succeeded"
        })
        .await;
    let seqs: Vec<i64> = v["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=8).collect::<Vec<_>>(), "{v:#}");
    // The canary was not re-created or changed by the restarted server (its pods kept
    // their names until the promotion removed them).
    let log = rig.rollout_log(run, "deploy").await;
    assert_eq!(log.matches("step 2/4: step analysis").count(), 1, "{log}");
    assert!(!before.1.is_empty());
    assert_eq!(rig.leftovers().await, Vec::<String>::new());
    rig.double.shutdown().await;
}
