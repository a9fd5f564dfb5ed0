//! Copies in and out of a pod through `pods/exec`, against the API-server test
//! double: stages on an API server that only speaks `v4.channel.k8s.io` (before
//! 1.30, or behind a proxy), and artifacts selected inside the pod so that only
//! they cross the wire. Needs Docker and the images from `bash .ci/images.sh`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{AttachParams, PostParams};
use runner::conformance::{WithGuard, run_with, stage};
use runner::{Backend, KubernetesBackend, LocalBackend, RunOptions, Status};
use tests::kube_double::{self, KubeDouble, KubeDoubleOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::kube_support::{self, NAMESPACE, Poll, eventually, image, options, unique_runner};

async fn v4_only_double() -> KubeDouble {
    kube_double::start(KubeDoubleOptions {
        exec_v5_protocol: false,
        ..Default::default()
    })
    .await
    .expect("starting the kube double (needs Docker and `bash .ci/images.sh`)")
}

async fn v4_backend() -> Arc<dyn Backend> {
    let d = v4_only_double().await;
    let backend = KubernetesBackend::new(d.client(), options(&unique_runner("v4"))).unwrap();
    Arc::new(WithGuard { backend, guard: d })
}

/// The double on v4 behaves as upstream's `wsstream.Conn`: `[255, 0]` is no
/// close, and a client that closes the socket to end stdin gets no status. A
/// size-terminated input (`head -c N`) needs neither and gets its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_v4_closing_stdin_loses_the_status_and_a_sized_input_does_not() {
    let d = v4_only_double().await;
    let api: Api<Pod> = Api::namespaced(d.client(), NAMESPACE);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "v4exec"},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "c", "image": kube_support::IMAGE,
                                 "command": ["sh", "-c", "exec sleep 300"]}]}
    }))
    .unwrap();
    api.create(&PostParams::default(), &pod).await.unwrap();
    eventually(
        "the pod to run",
        Poll::within(Duration::from_secs(60)),
        async || {
            let p = api.get("v4exec").await.ok()?;
            (p.status?.phase.as_deref() == Some("Running")).then_some(())
        },
    )
    .await;
    let ap = AttachParams::default()
        .container("c")
        .stdin(true)
        .stdout(true)
        .stderr(false);
    let run = async {
        // Reads to the end of stdin, which v4 cannot signal but by closing all.
        let mut p = api
            .exec("v4exec", ["sh", "-c", "cat > /tmp/closed.txt"], &ap)
            .await
            .unwrap();
        let status = p.take_status().unwrap();
        let mut stdin = p.stdin().unwrap();
        stdin.write_all(b"payload\n").await.unwrap();
        stdin.shutdown().await.unwrap();
        drop(stdin);
        assert_eq!(status.await, None, "no status after the client closed");
        let _ = p.join().await;

        // Reads exactly what is sent; stdin stays open until the status.
        let before = d.exec_traffic();
        let mut p = api
            .exec(
                "v4exec",
                [
                    "sh",
                    "-c",
                    "head -c 8 > /tmp/sized.txt && cat /tmp/sized.txt",
                ],
                &ap,
            )
            .await
            .unwrap();
        let status = p.take_status().unwrap();
        let mut stdin = p.stdin().unwrap();
        stdin.write_all(b"payload\n").await.unwrap();
        let mut out = String::new();
        p.stdout().unwrap().read_to_string(&mut out).await.unwrap();
        let status = status.await.expect("a status");
        assert_eq!(status.status.as_deref(), Some("Success"));
        assert_eq!(out, "payload\n");
        drop(stdin);
        let _ = p.join().await;
        let after = d.exec_traffic();
        assert_eq!(after.stdin_bytes - before.stdin_bytes, 8);
        assert_eq!(after.output_bytes - before.output_bytes, 8);
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the execs finished");
    d.shutdown().await;
}

// The conformance cases that copy into and out of a pod, on a v4-only API server.
macro_rules! on_v4 {
    ($($case:ident),* $(,)?) => {
        mod on_v4 {
            $(
                #[test]
                fn $case() {
                    runner::conformance::run_case(stringify!($case), async {
                        runner::conformance::$case(
                            super::v4_backend().await,
                            Some(super::image()),
                        )
                        .await;
                    });
                }
            )*
        }
    };
}

on_v4!(
    directory_source,
    workspace_shared_between_steps,
    artifacts,
    scan_stage,
);

fn artifact_opts(dest: &Path) -> RunOptions {
    RunOptions {
        artifact_dir: Some(dest.to_path_buf()),
        ..Default::default()
    }
}

/// A workspace far larger than its artifacts: only the artifacts (and the
/// listing) cross the wire, not the workspace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_artifacts_cross_the_wire() {
    let d = kube_support::double().await;
    let backend = KubernetesBackend::new(d.client(), options(&unique_runner("wire"))).unwrap();
    let mut spec = stage(
        "wire",
        &Some(image()),
        &["mkdir -p dist && head -c 1024 /dev/urandom > dist/app.bin \
           && head -c 209715200 /dev/zero > junk.bin && ls -l junk.bin"],
    );
    spec.artifacts = vec!["dist/".into()];
    let dest = tempfile::tempdir().unwrap();
    let before = d.exec_traffic();
    let r = run_with(&backend, &spec, artifact_opts(dest.path())).await;
    assert_eq!(r.outcome.status, Status::Success, "{:?}", r.outcome);
    let paths: Vec<(&str, u64)> = r
        .outcome
        .artifacts
        .iter()
        .map(|a| (a.path.as_str(), a.size))
        .collect();
    assert_eq!(paths, [("dist/app.bin", 1024)]);
    assert!(
        r.stdout(0).join("").contains("209715200"),
        "{:?}",
        r.stdout(0)
    );
    let out = d.exec_traffic().output_bytes - before.output_bytes;
    assert!(
        out < 64 * 1024,
        "{out} bytes came out of the pod for a 1 KiB artifact"
    );
    drop(backend);
    d.shutdown().await;
}

/// What the artifact walk keeps on the runner's host, selecting inside the pod
/// keeps too: directories whole, symlinks as the files they point to (never a
/// directory), hard links, modes, and names with spaces, `%`, a leading `-` or a
/// newline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selection_in_the_pod_keeps_what_the_host_walk_keeps() {
    let script = "mkdir -p out/sub 'sp ace' \
        && printf hello > out/a.txt && chmod 750 out/a.txt \
        && printf '\\000\\001' > out/sub/b.bin \
        && printf x > 'sp ace/%s.txt' && printf y > ./-dash.txt \
        && printf z > \"$(printf 'new\\nline.txt')\" \
        && ln -s out/a.txt link.txt && ln -s out dirlink && ln out/sub/b.bin hard.txt \
        && mkfifo pipe.txt && printf no > skip.tmp";
    let globs: Vec<String> = ["out/", "*.txt", "sp ace/*", "dirlink"]
        .iter()
        .map(|g| g.to_string())
        .collect();

    let local = LocalBackend::new(None);
    let mut spec = stage("keep", &None, &[script]);
    spec.artifacts = globs.clone();
    let local_dest = tempfile::tempdir().unwrap();
    let on_host = run_with(&local, &spec, artifact_opts(local_dest.path())).await;
    assert_eq!(
        on_host.outcome.status,
        Status::Success,
        "{:?}",
        on_host.outcome
    );

    let d = kube_support::double().await;
    let backend = KubernetesBackend::new(d.client(), options(&unique_runner("keep"))).unwrap();
    spec.image = Some(image());
    let pod_dest = tempfile::tempdir().unwrap();
    let in_pod = run_with(&backend, &spec, artifact_opts(pod_dest.path())).await;
    assert_eq!(
        in_pod.outcome.status,
        Status::Success,
        "{:?}",
        in_pod.outcome
    );

    assert_eq!(in_pod.outcome.artifacts, on_host.outcome.artifacts);
    let paths: Vec<&str> = in_pod
        .outcome
        .artifacts
        .iter()
        .map(|a| a.path.as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "-dash.txt",
            "hard.txt",
            "link.txt",
            "new\nline.txt",
            "out/a.txt",
            "out/sub/b.bin",
            "sp ace/%s.txt"
        ]
    );
    for a in &in_pod.outcome.artifacts {
        let mode = |dir: &Path| {
            std::fs::symlink_metadata(dir.join(&a.path))
                .unwrap()
                .permissions()
                .mode()
        };
        assert_eq!(mode(pod_dest.path()), mode(local_dest.path()), "{}", a.path);
    }

    // A matched symlink that leads nowhere fails both alike.
    let mut dangling = stage("dangling", &None, &["ln -s missing gone.txt"]);
    dangling.artifacts = vec!["*.txt".into()];
    let on_host = run_with(&local, &dangling, artifact_opts(local_dest.path())).await;
    dangling.image = Some(image());
    let in_pod = run_with(&backend, &dangling, artifact_opts(pod_dest.path())).await;
    for r in [&on_host, &in_pod] {
        let Status::Error(message) = &r.outcome.status else {
            panic!("expected an error: {:?}", r.outcome);
        };
        assert!(
            message.contains("gone.txt") && message.contains("cannot resolve symlink"),
            "{message}"
        );
    }
    drop(backend);
    d.shutdown().await;
}
