//! A canary through the Gateway API: the share of real requests the new version answers
//! follows the weights; `pause: {}` holds until a release manager promotes (a
//! developer's promote is refused and audited); the analysis passes and the stable
//! Deployment ends on the new digest with nothing of the rollout left behind.

use super::rig::Rig;
use super::{Health, sample};

pub fn gateway_canary(image: &str, health: &str) -> String {
    format!(
        r#"stages:
  deploy:
    kind: deploy
    environment: prod
    target: {{ deployment: web, service: web }}
    image: {image}
    strategy:
      canary:
        traffic: {{ gateway: {{ route: web }} }}
        steps:
          - weight: 20
          - pause: {{}}
          - weight: 50
          - pause: {{}}
          - weight: 100
          - pause: {{}}
          - analysis:
              interval: 1s
              count: 2
              http: {{ url: "{health}", json: {{ path: "$.status", equals: ok }} }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_canary_shifts_real_traffic_by_weight_and_ends_on_the_new_digest() {
    let mut rig = Rig::start(2).await;
    let health = Health::start().await;
    let run = rig
        .push(&gateway_canary(&rig.images.v2, &health.url()))
        .await;
    let run_s = run.to_string();
    for (step, weight) in [(1, 20.0), (3, 50.0), (5, 100.0)] {
        let v = rig
            .rollout_when(
                run,
                "deploy",
                &format!("the pause after weight {weight}"),
                |v| v["rollout"]["phase"] == "paused" && v["rollout"]["step"] == step,
            )
            .await;
        assert_eq!(v["rollout"]["message"], "waiting for a promote", "{v:#}");
        let c = sample(rig.double.gateway_addr(), "/", 1000, None).await;
        assert_eq!(c.failed, 0, "{c:?}");
        assert!(
            (c.v2_share() - weight).abs() <= 5.0,
            "at weight {weight} the new version answered {:.1}% ({c:?})",
            c.v2_share()
        );
        if step == 1 {
            // A developer may not move a production rollout on: refused, audited.
            let out = rig.cli_as(
                &rig.token("dev"),
                &["rollout", "promote", "team/app", &run_s, "deploy"],
            );
            assert!(!out.status.success());
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("403") && err.contains("release manager"),
                "{err}"
            );
            let (_, audit) = rig
                .api(
                    "GET",
                    "/api/audit?action=rollout.refused",
                    &rig.admin.clone(),
                    None,
                )
                .await;
            let entries = audit.as_array().unwrap();
            assert_eq!(entries.len(), 1, "{audit:#}");
            assert_eq!(entries[0]["actor"], "user:dev");
            // Still paused at the same step.
            let v = rig
                .rollout_when(run, "deploy", "still paused", |v| {
                    v["rollout"]["phase"] == "paused"
                })
                .await;
            assert_eq!(v["rollout"]["step"], 1);
        }
        rig.ok_as(
            &rig.token("rm"),
            &["rollout", "promote", "team/app", &run_s, "deploy"],
        );
    }
    let done = rig.finished(run).await;
    assert_eq!(
        done["run"]["status"],
        "success",
        "{done:#}\n{}",
        rig.server_log_tail()
    );
    assert_eq!(rig.stable_image().await, rig.images.v2);
    assert_eq!(rig.leftovers().await, Vec::<String>::new());
    let c = sample(rig.double.gateway_addr(), "/", 50, None).await;
    assert_eq!((c.v1, c.v2, c.failed), (0, 50, 0));
    let v = rig
        .rollout_when(run, "deploy", "the final record", |v| {
            v["rollout"]["phase"] == "succeeded"
        })
        .await;
    let ms = v["measurements"].as_array().unwrap();
    assert_eq!(ms.len(), 2, "{v:#}");
    assert!(ms.iter().all(|m| m["outcome"] == "pass"), "{v:#}");
    let (_, audit) = rig
        .api(
            "GET",
            "/api/audit?action=rollout.promote",
            &rig.admin.clone(),
            None,
        )
        .await;
    assert_eq!(audit.as_array().unwrap().len(), 3, "{audit:#}");
    let log = rig.rollout_log(run, "deploy").await;
    assert!(log.contains("rolled out: web runs"), "{log}");
    rig.double.shutdown().await;
}
