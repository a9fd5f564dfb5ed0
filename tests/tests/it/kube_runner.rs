//! A runner on the Kubernetes backend that dies mid-stage (its process state lost,
//! its pod left running) resumes the stage after a restart: the new runner finds
//! the pod by its label, reads back the adoption record it kept in the stage's Secret
//! (which holds neither the lease token nor a secret value), asks the server for the
//! stage back, adopts the pod and finishes the stage — no second attempt, no step run
//! twice, no log line stored twice, secrets still masked. Real server (SQLite), real
//! runner agent, the API-server test double.

use crate::kube_support::{self, Poll, poll_until};
use crate::test_server::TestServer;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{AttachParams, ListParams};
use runner::KubernetesBackend;
use runner::kubernetes::names;
use server::agent::Agent;
use server::agent::backends::Opened;
use server::store::RunStatus;
use tokio_util::sync::CancellationToken;

const PIPELINE: &str = "stages:
  build:
    image: slipway-test/busybox:latest
    steps:
      - cat hello.txt; echo one >> runs.log
      - echo two >> runs.log; while [ ! -e go ]; do sleep 0.1; done; echo released; echo \"key=$DEPLOY_KEY\"
      - cat runs.log
    env:
      DEPLOY_KEY: ${{ secrets.DEPLOY_KEY }}
";

const DEPLOY_KEY: &str = "dk_live_7f3a9c2e51b8";

/// Starts a runner agent (as `slipway runner --backend kubernetes` does: recover,
/// then run) on a fresh backend; the returned task is the runner's whole life.
async fn start_runner(
    d: &tests::kube_double::KubeDouble,
    server: &TestServer,
    name: &str,
    token: &str,
) -> (tokio::task::JoinHandle<()>, usize) {
    let backend = KubernetesBackend::new(d.client(), kube_support::options(name)).unwrap();
    let opened = Opened::Kubernetes(backend);
    let adopted = opened.recover().await;
    let count = adopted.len();
    let work = server.dir.path().join(format!("work-{name}"));
    std::fs::create_dir_all(&work).unwrap();
    let agent = Agent::new(
        server.url().parse().unwrap(),
        token.to_owned(),
        name,
        opened.backend(),
    )
    .with_work_dir(work)
    .with_adopted(adopted);
    let task = tokio::spawn(async move {
        let _ = agent.run(CancellationToken::new()).await;
    });
    (task, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_killed_mid_stage_resumes_its_pod_after_a_restart() {
    let d = kube_support::double().await;
    let server = TestServer::builder()
        .in_process_runner(false)
        .heartbeat_secs(10)
        .start()
        .await;
    let name = kube_support::unique_runner("agent");
    let token = server.runner_token(&name).await;
    let (repo, sha) = server.repo(&[("hello.txt", "hello from git\n")]).await;
    server.secret(&repo, "DEPLOY_KEY", DEPLOY_KEY, false).await;
    let run = server.run(&repo, &sha, PIPELINE, false).await;

    let (first, adopted) = start_runner(&d, &server, &name, &token).await;
    assert_eq!(adopted, 0);
    let pods: Api<Pod> = Api::namespaced(d.client(), kube_support::NAMESPACE);
    let selector = format!("{}={}", names::RUNNER_LABEL, names::label_value(&name));
    let step_1_runs = async || {
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .unwrap();
        list.items.into_iter().find(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.init_container_statuses.as_ref())
                .is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c.name == "step-1" && c.state.as_ref().is_some_and(|s| s.running.is_some())
                    })
                })
        })
    };
    let pod = match poll_until(Poll::within(Duration::from_secs(90)), step_1_runs).await {
        Some(pod) => pod,
        None => panic!("step 1 never ran: {}", server.dump(run.id).await),
    };
    let pod_name = pod.metadata.name.clone().unwrap();
    // The repository, run and stage are on the pod.
    let labels = pod.metadata.labels.clone().unwrap();
    assert_eq!(labels["slipway.io/stage"], "build");
    assert_eq!(labels["slipway.io/run"], run.number.to_string());

    // The server's orphan sweep keeps the pod of a stage that runs.
    let k = KubernetesBackend::new(d.client(), kube_support::options("sweeper")).unwrap();
    let swept = server::workers::kube_orphans::sweep_once(&server.state, &k)
        .await
        .unwrap();
    assert!(swept.is_empty(), "{swept:?}");

    let first_token = server
        .stage(run.id, "build")
        .await
        .stage
        .lease_token
        .expect("a lease token");
    // The runner dies: nothing of it runs any more, nothing was cleaned up.
    first.abort();
    let _ = first.await;

    let (second, adopted) = start_runner(&d, &server, &name, &token).await;
    assert_eq!(adopted, 1, "the restarted runner adopts the pod");
    // The stage's Secret holds the step's secret value (what the container reads)
    // and the adoption record, which holds neither that value nor the lease token.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(d.client(), kube_support::NAMESPACE);
    let secret = secrets.get(&pod_name).await.unwrap();
    let data = secret.data.clone().unwrap_or_default();
    let record = data
        .get(runner::kubernetes::pod::ADOPTION_KEY)
        .map(|v| String::from_utf8(v.0.clone()).unwrap())
        .expect("an adoption record");
    let token = first_token.clone();
    assert!(
        !record.contains(DEPLOY_KEY),
        "secret value in the adoption record"
    );
    assert!(
        !record.contains(&token),
        "lease token in the adoption record"
    );
    assert!(
        data.iter()
            .filter(|(k, _)| k.as_str() != runner::kubernetes::pod::ADOPTION_KEY)
            .any(|(_, v)| v.0 == DEPLOY_KEY.as_bytes()),
        "the step reads the secret from the stage's Secret"
    );

    // Let step 1 finish.
    let ap = AttachParams::default()
        .container("step-1")
        .stdout(true)
        .stderr(false);
    let mut touch = pods
        .exec(&pod_name, ["touch", "/workspace/go"], &ap)
        .await
        .unwrap();
    let status = touch.take_status().unwrap().await;
    assert_eq!(status.and_then(|s| s.status).as_deref(), Some("Success"));

    let done = server.wait_run(run.id, Duration::from_secs(90)).await;
    assert_eq!(
        done.status,
        RunStatus::Success,
        "{}",
        server.dump(run.id).await
    );
    let stage = server.stage(run.id, "build").await;
    assert_eq!(stage.stage.attempt, 1, "resumed, not run again");
    assert_eq!(server.log_lines(&stage.stage, 0), vec!["hello from git"]);
    // The resumed runner got the secret values back: still masked.
    assert_eq!(
        server.log_lines(&stage.stage, 1),
        vec!["released", "key=********"]
    );
    // Every step ran once, and every line is stored once.
    assert_eq!(server.log_lines(&stage.stage, 2), vec!["one", "two"]);
    assert!(pods.get_opt(&pod_name).await.unwrap().is_none(), "pod left");

    second.abort();
    let _ = second.await;
    server.stop().await;
    d.shutdown().await;
}

/// The server's orphan sweep deletes stage pods whose lease is gone — their stage
/// finished, runs under another attempt, or does not exist — with their Secrets,
/// and leaves pods no runner agent made alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orphan_sweep_deletes_pods_whose_lease_is_gone() {
    use runner::{Backend, StageSpec, StepSpec};
    let d = kube_support::double().await;
    let server = TestServer::builder()
        .in_process_runner(false)
        .heartbeat_secs(3)
        .start()
        .await;
    let (repo, sha) = server.repo(&[("a.txt", "a\n")]).await;
    // A stage that is queued (no runner): not running, so no pod may be for it.
    let run = server.run(&repo, &sha, PIPELINE, false).await;
    let queued = server.stage(run.id, "build").await.stage;

    let backend = KubernetesBackend::new(d.client(), kube_support::options("left")).unwrap();
    let pod = |labels: &[(&str, String)]| {
        let mut spec = StageSpec {
            image: Some(kube_support::image()),
            steps: vec![StepSpec::new("wait", "sleep 300")],
            adoption: Some("a lease".into()),
            ..StageSpec::new("leftover")
        };
        spec.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        spec
    };
    let for_queued = backend
        .setup_stage(&pod(&[
            ("stage-id", queued.id.to_string()),
            ("attempt", "1".into()),
        ]))
        .await
        .unwrap();
    let for_missing = backend
        .setup_stage(&pod(&[
            ("stage-id", "999999".into()),
            ("attempt", "1".into()),
        ]))
        .await
        .unwrap();
    let unlabelled = backend.setup_stage(&pod(&[])).await.unwrap();

    let mut swept = server::workers::kube_orphans::sweep_once(&server.state, &backend)
        .await
        .unwrap();
    swept.sort();
    let mut want = vec![for_queued.id.clone(), for_missing.id.clone()];
    want.sort();
    assert_eq!(swept, want);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(d.client(), kube_support::NAMESPACE);
    for gone in &want {
        assert!(
            secrets.get_opt(gone).await.unwrap().is_none(),
            "{gone}: Secret left"
        );
    }
    let pods: Api<Pod> = Api::namespaced(d.client(), kube_support::NAMESPACE);
    assert!(pods.get_opt(&unlabelled.id).await.unwrap().is_some());
    backend.destroy_stage(&unlabelled).await.unwrap();
    server.stop().await;
    d.shutdown().await;
}
