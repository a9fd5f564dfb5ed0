//! Steering a rollout from the terminal on the ingress-nginx path: the canary Ingress
//! carries the weight and header annotations while paused; `slipway rollout status`
//! says where it is; `slipway rollout abort` rolls it back (stage failed, audited,
//! nothing left); on the next run `slipway rollout promote --full` skips every
//! remaining step; a stage's `timeout` rolls a rollout back and ends it `timed_out`.

use k8s_openapi::api::networking::v1::Ingress;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

use super::rig::{NS, Rig};

fn pipeline(image: &str) -> String {
    format!(
        r#"stages:
  deploy:
    kind: deploy
    environment: prod
    target: {{ deployment: web }}
    image: {image}
    strategy:
      canary:
        traffic: {{ nginx: {{ ingress: web }} }}
        steps:
          - weight: 30
          - match: {{ header: {{ x-user-group: beta }} }}
          - pause: {{}}
          - weight: 60
          - pause: {{}}
          - weight: 100
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_annotations_then_abort_and_a_full_promote_from_the_terminal() {
    let mut rig = Rig::start(1).await;
    let ingresses: Api<Ingress> = Api::namespaced(rig.double.client(), NS);
    let ingress: Ingress = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": { "name": "web", "namespace": NS },
        "spec": { "ingressClassName": "nginx", "rules": [{ "host": "shop.example.com", "http": { "paths": [
            { "path": "/", "pathType": "Prefix", "backend": { "service": { "name": "web", "port": { "number": 80 } } } }
        ] } }] }
    }))
    .unwrap();
    ingresses
        .create(&PostParams::default(), &ingress)
        .await
        .unwrap();
    let rm = rig.token("rm");

    let run = rig.push(&pipeline(&rig.images.v2)).await;
    let run_s = run.to_string();
    rig.rollout_when(run, "deploy", "the first pause", |v| {
        v["rollout"]["phase"] == "paused" && v["rollout"]["step"] == 2
    })
    .await;
    let canary = ingresses.get("web-canary").await.unwrap();
    let ann = canary.metadata.annotations.unwrap();
    assert_eq!(ann["nginx.ingress.kubernetes.io/canary"], "true");
    assert_eq!(ann["nginx.ingress.kubernetes.io/canary-weight"], "30");
    assert_eq!(
        ann["nginx.ingress.kubernetes.io/canary-by-header"],
        "x-user-group"
    );
    assert_eq!(
        ann["nginx.ingress.kubernetes.io/canary-by-header-value"],
        "beta"
    );
    let rules = canary.spec.unwrap().rules.unwrap();
    let backend = &rules[0].http.as_ref().unwrap().paths[0].backend;
    assert_eq!(backend.service.as_ref().unwrap().name, "web-canary");
    let status = rig.ok_as(&rm, &["rollout", "status", "team/app", &run_s, "deploy"]);
    assert!(
        status.contains("phase: paused") && status.contains("now  3. pause until promoted"),
        "{status}"
    );

    rig.ok_as(&rm, &["rollout", "abort", "team/app", &run_s, "deploy"]);
    let done = rig.finished(run).await;
    assert_eq!(done["run"]["status"], "failure", "{done:#}");
    let reason = done["stages"][0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("aborted by user:rm"), "{reason}");
    assert!(ingresses.get_opt("web-canary").await.unwrap().is_none());
    assert_eq!(rig.leftovers().await, Vec::<String>::new());
    assert_eq!(rig.stable_image().await, rig.images.v1);
    let (_, audit) = rig
        .api(
            "GET",
            "/api/audit?action=rollout.abort",
            &rig.admin.clone(),
            None,
        )
        .await;
    assert_eq!(audit.as_array().unwrap().len(), 1, "{audit:#}");
    // Ended: nothing more to abort.
    let out = rig.cli_as(&rm, &["rollout", "abort", "team/app", &run_s, "deploy"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("409"),
        "{out:?}"
    );

    let run = rig.push(&pipeline(&rig.images.v2)).await;
    let run_s = run.to_string();
    rig.rollout_when(run, "deploy", "the second run's pause", |v| {
        v["rollout"]["phase"] == "paused" && v["rollout"]["step"] == 2
    })
    .await;
    rig.ok_as(
        &rm,
        &["rollout", "promote", "--full", "team/app", &run_s, "deploy"],
    );
    let done = rig.finished(run).await;
    assert_eq!(done["run"]["status"], "success", "{done:#}");
    let v = rig
        .rollout_when(run, "deploy", "the record", |v| {
            v["rollout"]["phase"] == "succeeded"
        })
        .await;
    // Straight from the pause to the last step: the 60 % weight and the second pause
    // never happened.
    let log = rig.rollout_log(run, "deploy").await;
    assert!(log.contains("promoted fully"), "{log}");
    assert!(!log.contains("set weight 60%"), "{log}");
    assert_eq!(v["rollout"]["step"], 6);
    assert_eq!(rig.stable_image().await, rig.images.v2);
    assert!(ingresses.get_opt("web-canary").await.unwrap().is_none());
    assert_eq!(rig.leftovers().await, Vec::<String>::new());
    rig.double.shutdown().await;
}

/// A deploy stage's `timeout` holds while its rollout waits at a pause nobody ends:
/// past it, traffic goes back to stable, the new version is removed and the stage ends
/// `timed_out`, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_past_its_stage_timeout_rolls_back_and_times_out() {
    let mut rig = Rig::start(1).await;
    let image = rig.images.v2.clone();
    let pipeline = format!(
        r#"stages:
  deploy:
    kind: deploy
    environment: prod
    timeout: 8s
    target: {{ deployment: web }}
    image: {image}
    strategy:
      canary:
        steps:
          - weight: 50
          - pause: {{}}
          - weight: 100
"#
    );
    let run = rig.push(&pipeline).await;
    rig.rollout_when(run, "deploy", "the pause", |v| {
        v["rollout"]["phase"] == "paused"
    })
    .await;
    let done = rig.finished(run).await;
    assert_eq!(done["stages"][0]["status"], "timed_out", "{done:#}");
    // As for any stage: a timed-out stage fails its run.
    assert_eq!(done["run"]["status"], "failure", "{done:#}");
    let reason = done["stages"][0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("timeout: 8s"), "{reason}");
    let log = rig.rollout_log(run, "deploy").await;
    assert!(
        log.contains("rolling back: the stage's timeout passed"),
        "{log}"
    );
    assert_eq!(rig.stable_image().await, rig.images.v1);
    assert_eq!(rig.leftovers().await, Vec::<String>::new());
    rig.double.shutdown().await;
}
