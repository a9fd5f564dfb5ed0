//! The version a rollout ships comes from the run's image stage, by digest; rolling an
//! environment back reuses the previous run's digest through a new rollout and never
//! rebuilds. Real image builds on the server's in-process Docker runner, pushed to the
//! real registry.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::rig::Rig;

const PIPELINE: &str = r#"stages:
  image:
    kind: image
    image: slipway-test/busybox:latest
    dockerfile: Dockerfile
    push: 127.0.0.1:5000/slipway-rollout/app:${{ git.sha }}
    registry_secret: REGISTRY_AUTH
  deploy:
    needs: [image]
    kind: deploy
    environment: prod
    target: { deployment: web }
    image: ${{ stages.image.outputs.image }}@${{ stages.image.outputs.digest }}
    strategy: recreate
"#;

fn dockerfile(version: &str) -> String {
    format!(
        "FROM slipway-test/httpd:latest\nRUN echo {version} > /www/index.html && echo ok > /www/healthz\n"
    )
}

/// The digest reference run `run`'s image stage pushed (`repository@sha256:…`: the tag
/// is not part of what the rollout ships).
fn pushed(run: &serde_json::Value) -> String {
    let image = run["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == "image")
        .unwrap();
    let tagged = image["outputs"]["image"].as_str().unwrap();
    let (repo, _tag) = tagged.rsplit_once(':').unwrap();
    format!("{repo}@{}", image["outputs"]["digest"].as_str().unwrap())
}

/// Keeps images on the engine (pulling each whenever it is missing) until stopped: the
/// pull a kubelet does, which the double leaves to its tests.
struct Kubelet {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Kubelet {
    fn keep(references: Vec<String>) -> Kubelet {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::task::spawn_blocking(move || {
            // Bounded: about two minutes at most.
            for _ in 0..600 {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                for r in &references {
                    let present = std::process::Command::new("docker")
                        .args(["image", "inspect", "--format", "{{.Id}}", r])
                        .output()
                        .is_ok_and(|o| o.status.success());
                    if !present {
                        super::rig::docker(&["pull", "-q", r], None);
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Kubelet { stop, task }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_rolls_the_previous_digest_out_again_without_rebuilding() {
    let mut rig = Rig::start_with(1, &[("SLIPWAY_RUNNER_BACKEND", "docker")]).await;
    rig.p.cli_with_input(
        &["secret", "set", "team/app", "REGISTRY_AUTH"],
        "slipway:slipway-test",
    );
    let mut digests = Vec::new();
    for version in ["r1", "r2"] {
        let run = rig
            .push_files(&[
                (".slipway.yml", PIPELINE),
                ("Dockerfile", &dockerfile(version)),
            ])
            .await;
        // The double never pulls (its pods run on images already on the engine), and
        // the image stage removes what it built once pushed: the test pulls it, as a
        // kubelet would, until the run is over.
        let built = rig
            .wait(&format!("run {run}'s image"), || async {
                let (_, v) = rig
                    .api(
                        "GET",
                        &format!("/api/repos/team/app/runs/{run}"),
                        &rig.admin,
                        None,
                    )
                    .await;
                let stages = v["stages"].as_array().cloned().unwrap_or_default();
                if stages
                    .iter()
                    .any(|s| s["key"] == "image" && s["status"] == "success")
                {
                    Ok(v)
                } else {
                    Err(format!("{v:#}"))
                }
            })
            .await;
        let kubelet = Kubelet::keep(vec![pushed(&built)]);
        let done = rig.finished(run).await;
        kubelet.stop().await;
        assert_eq!(
            done["run"]["status"],
            "success",
            "{done:#}\n{}",
            rig.server_log_tail()
        );
        let digest = pushed(&done);
        assert_eq!(rig.stable_image().await, digest, "run {run}");
        digests.push(digest);
    }
    assert_ne!(digests[0], digests[1]);
    let out = rig.ok_as(&rig.token("rm"), &["rollback", "team/app", "prod"]);
    assert!(out.contains("run #3"), "{out}");
    let kubelet = Kubelet::keep(digests.clone());
    let done = rig.finished(3).await;
    kubelet.stop().await;
    assert_eq!(
        done["run"]["status"],
        "success",
        "{done:#}\n{}",
        rig.server_log_tail()
    );
    assert_eq!(
        rig.stable_image().await,
        digests[0],
        "the rollback's rollout ships run #1's digest"
    );
    assert_eq!(done["run"]["promotion"]["from_number"], 1);
    let image = done["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == "image")
        .unwrap();
    // Carried over from run #1 with its outputs: nothing was built.
    assert_eq!(image["status"], "success", "{image:#}");
    assert!(
        image["started_at"].is_null(),
        "the image stage ran again: {image:#}"
    );
    assert_eq!(pushed(&done), digests[0]);
    let v = rig
        .rollout_when(3, "deploy", "the rollback's rollout", |v| {
            v["rollout"]["phase"] == "succeeded"
        })
        .await;
    assert_eq!(v["rollout"]["image"], digests[0].as_str());
    assert_eq!(v["rollout"]["stable_image"], digests[1].as_str());
    assert_eq!(rig.leftovers().await, Vec::<String>::new());
    rig.double.shutdown().await;
}
