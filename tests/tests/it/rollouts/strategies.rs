//! The other ways out: A/B by header and shadow traffic through the gateway,
//! blue-green with an instant rollback to the still-running old version, and rolling
//! batches with a pause and an analysis between them.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kube::api::{AttachParams, ListParams};
use tokio::io::AsyncReadExt;

use super::rig::{NS, Rig};
use super::{Health, Loop, sample};

/// Lines in `/tmp/hits` of each pod running `image` (one per request its CGI answered).
async fn hits(rig: &Rig, image: &str) -> u64 {
    let pods = rig.pods().list(&ListParams::default()).await.unwrap();
    let mut total = 0;
    for p in pods.items {
        let runs = p
            .spec
            .as_ref()
            .is_some_and(|s| s.containers[0].image.as_deref() == Some(image));
        if !runs || p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = p.metadata.name.unwrap();
        let mut attached = rig
            .pods()
            .exec(
                &name,
                ["sh", "-c", "cat /tmp/hits 2>/dev/null | wc -l"],
                &AttachParams::default().container("web").stderr(false),
            )
            .await
            .unwrap();
        let mut out = String::new();
        attached
            .stdout()
            .unwrap()
            .read_to_string(&mut out)
            .await
            .unwrap();
        let _ = attached.join().await;
        total += out.trim().parse::<u64>().unwrap_or(0);
    }
    total
}

async fn promote(rig: &Rig, run: i64) {
    rig.ok_as(
        &rig.token("rm"),
        &["rollout", "promote", "team/app", &run.to_string(), "deploy"],
    );
}

async fn paused_at(rig: &Rig, run: i64, step: i64) {
    rig.rollout_when(
        run,
        "deploy",
        &format!("the pause at step {}", step + 1),
        |v| v["rollout"]["phase"] == "paused" && v["rollout"]["step"] == step,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_b_by_header_then_shadow_traffic_through_the_gateway() {
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
        steps:
          - match: {{ header: {{ x-user-group: beta }} }}
          - pause: {{}}
          - mirror: 100%
          - pause: {{}}
          - weight: 100
"#,
        rig.images.v2
    );
    let run = rig.push(&yaml).await;
    paused_at(&rig, run, 1).await;
    let gw = rig.double.gateway_addr();
    let beta = sample(gw, "/", 100, Some(("x-user-group", "beta"))).await;
    assert_eq!(
        (beta.v1, beta.v2, beta.failed),
        (0, 100, 0),
        "the beta group"
    );
    let others = sample(gw, "/", 100, Some(("x-user-group", "stable"))).await;
    assert_eq!(
        (others.v1, others.v2, others.failed),
        (100, 0, 0),
        "everyone else"
    );
    let plain = sample(gw, "/", 100, None).await;
    assert_eq!((plain.v1, plain.v2, plain.failed), (100, 0, 0), "no header");
    promote(&rig, run).await;
    paused_at(&rig, run, 3).await;
    // Shadow: every answer from the old version, a copy of each request to the new.
    let before = hits(&rig, &rig.images.v2).await;
    let shadowed = sample(gw, "/cgi-bin/hit", 50, None).await;
    assert_eq!((shadowed.v1, shadowed.v2, shadowed.failed), (50, 0, 0));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut copies = 0;
    while Instant::now() < deadline {
        copies = hits(&rig, &rig.images.v2).await - before;
        if copies >= 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(copies, 50, "mirrored copies the new version received");
    promote(&rig, run).await;
    let done = rig.finished(run).await;
    assert_eq!(done["run"]["status"], "success", "{done:#}");
    assert_eq!(rig.leftovers().await, Vec::<String>::new());
    rig.double.shutdown().await;
}

async fn pod_names(rig: &Rig, image: &str) -> BTreeSet<String> {
    let pods = rig.pods().list(&ListParams::default()).await.unwrap();
    pods.items
        .into_iter()
        .filter(|p| {
            p.spec
                .as_ref()
                .is_some_and(|s| s.containers[0].image.as_deref() == Some(image))
        })
        .filter_map(|p| p.metadata.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_switches_then_rolls_back_instantly_to_the_running_old_version() {
    let mut rig = Rig::start(2).await;
    let health = Health::start().await;
    let yaml = format!(
        r#"stages:
  deploy:
    kind: deploy
    environment: prod
    target: {{ deployment: web, service: web }}
    image: {}
    strategy:
      blue_green:
        auto_promote: false
        scale_down_delay: 5m
        post_promotion_analysis:
          interval: 1s
          count: 120
          http: {{ url: "{}" }}
"#,
        rig.images.v2,
        health.url()
    );
    let run = rig.push(&yaml).await;
    paused_at(&rig, run, 1).await;
    let gw = rig.double.gateway_addr();
    let before = sample(gw, "/", 50, None).await;
    assert_eq!(
        (before.v1, before.v2, before.failed),
        (50, 0, 0),
        "before the switch"
    );
    let preview = rig
        .double
        .service_addr(NS, "web-preview", 80)
        .expect("the preview service");
    let http = reqwest::Client::new();
    let body = http
        .get(format!("http://{preview}/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        body.trim(),
        "v2",
        "the preview answers with the new version"
    );
    let old_pods = pod_names(&rig, &rig.images.v1).await;
    assert_eq!(old_pods.len(), 2);
    promote(&rig, run).await;
    rig.rollout_when(run, "deploy", "the post-promotion analysis", |v| {
        v["rollout"]["step"] == 3 && !v["measurements"].as_array().unwrap().is_empty()
    })
    .await;
    let after = sample(gw, "/", 50, None).await;
    assert_eq!(
        (after.v1, after.v2, after.failed),
        (0, 50, 0),
        "after the switch"
    );
    let traffic = Loop::start(gw);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let flipped = Instant::now();
    health.fail();
    let done = rig.finished(run).await;
    let took = flipped.elapsed();
    assert_eq!(done["run"]["status"], "failure", "{done:#}");
    assert!(took <= Duration::from_secs(3), "rollback took {took:?}");
    let back = sample(gw, "/", 50, None).await;
    assert_eq!(
        (back.v1, back.v2, back.failed),
        (50, 0, 0),
        "after the rollback"
    );
    let c = traffic.stop().await;
    assert_eq!(c.failed, 0, "{c:?}");
    // Instant: the old pods never went away.
    assert_eq!(pod_names(&rig, &rig.images.v1).await, old_pods);
    assert_eq!(rig.stable_image().await, rig.images.v1);
    assert_eq!(rig.leftovers().await, Vec::<String>::new());
    rig.double.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_batches_of_a_quarter_pause_and_analyse_between_batches() {
    let mut rig = Rig::start(4).await;
    let health = Health::start().await;
    let yaml = format!(
        r#"stages:
  deploy:
    kind: deploy
    environment: prod
    target: {{ deployment: web }}
    image: {}
    strategy:
      rolling:
        batches: [25%, 50%, 100%]
        pause: {{}}
        analysis: {{ interval: 1s, count: 2, http: {{ url: "{}" }} }}
"#,
        rig.images.v2,
        health.url()
    );
    let run = rig.push(&yaml).await;
    let svc = rig
        .double
        .service_addr(NS, "web", 80)
        .expect("the stable service");
    for (step, new, old) in [(1, 1, 3), (4, 2, 2)] {
        paused_at(&rig, run, step).await;
        assert_eq!(rig.ready_pods(&rig.images.v2).await, new);
        assert_eq!(rig.ready_pods(&rig.images.v1).await, old);
        let c = sample(svc, "/", 100, None).await;
        assert_eq!(c.failed, 0, "{c:?}");
        let want = new as f64 * 100.0 / 4.0;
        assert!((c.v2_share() - want).abs() <= 10.0, "{c:?} at {want}%");
        promote(&rig, run).await;
    }
    let done = rig.finished(run).await;
    assert_eq!(done["run"]["status"], "success", "{done:#}");
    let v = rig
        .rollout_when(run, "deploy", "the record", |v| {
            v["rollout"]["phase"] == "succeeded"
        })
        .await;
    // Two analyses between three batches, two measurements each.
    assert_eq!(v["measurements"].as_array().unwrap().len(), 4, "{v:#}");
    assert_eq!(rig.stable_image().await, rig.images.v2);
    assert_eq!(rig.ready_pods(&rig.images.v2).await, 4);
    assert_eq!(rig.leftovers().await, Vec::<String>::new());
    rig.double.shutdown().await;
}
