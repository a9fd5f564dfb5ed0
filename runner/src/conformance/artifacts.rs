//! Case: artifacts after success only, checksummed, never from outside the workspace.

use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::harness::{run_with, stage};
use crate::{Backend, RunOptions, Status};

/// Artifacts are collected after success with correct sizes and sha256, not after
/// a failure, and paths escaping the workspace are refused.
pub async fn artifacts(backend: Arc<dyn Backend>, image: Option<String>) {
    let dest = tempfile::tempdir().unwrap();
    let mut spec = stage(
        "artifacts",
        &image,
        &[
            "mkdir -p out/sub\nprintf hello > out/a.txt\nprintf '\\000\\001\\002' > out/sub/b.bin\necho log > build.log\necho no > skip.tmp",
        ],
    );
    spec.artifacts = vec!["out/**".into(), "*.log".into()];
    let opts = RunOptions {
        artifact_dir: Some(dest.path().to_path_buf()),
        ..Default::default()
    };
    let r = run_with(&*backend, &spec, opts.clone()).await;
    assert_eq!(r.outcome.status, Status::Success, "{:?}", r.outcome);
    let paths: Vec<&str> = r
        .outcome
        .artifacts
        .iter()
        .map(|a| a.path.as_str())
        .collect();
    assert_eq!(paths, vec!["build.log", "out/a.txt", "out/sub/b.bin"]);
    for a in &r.outcome.artifacts {
        let bytes = std::fs::read(dest.path().join(&a.path)).unwrap();
        assert_eq!(a.size, bytes.len() as u64, "{}", a.path);
        assert_eq!(a.sha256, hex::encode(Sha256::digest(&bytes)), "{}", a.path);
    }
    assert_eq!(
        r.outcome.artifacts[1].sha256,
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    );
    assert!(!dest.path().join("skip.tmp").exists());

    // A failed stage collects nothing.
    let failed_dest = tempfile::tempdir().unwrap();
    let mut failed = stage("artifacts-failed", &image, &["echo x > a.log\nexit 3"]);
    failed.artifacts = vec!["*.log".into()];
    let r = run_with(
        &*backend,
        &failed,
        RunOptions {
            artifact_dir: Some(failed_dest.path().to_path_buf()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.outcome.status, Status::Failure);
    assert!(r.outcome.artifacts.is_empty());
    assert!(is_empty_dir(failed_dest.path()));

    // Escapes are refused, not followed.
    for (script, glob) in [
        ("true", "../outside"),
        ("true", "/etc/hostname"),
        ("ln -s /etc/hostname leak.txt", "*.txt"),
    ] {
        let escape_dest = tempfile::tempdir().unwrap();
        let mut spec = stage("artifacts-escape", &image, &[script]);
        spec.artifacts = vec![glob.into()];
        let r = run_with(
            &*backend,
            &spec,
            RunOptions {
                artifact_dir: Some(escape_dest.path().to_path_buf()),
                ..Default::default()
            },
        )
        .await;
        assert!(
            matches!(r.outcome.status, Status::Error(_)),
            "{glob}: {:?}",
            r.outcome
        );
        assert!(is_empty_dir(escape_dest.path()), "{glob}");
    }
}

fn is_empty_dir(p: &Path) -> bool {
    std::fs::read_dir(p).unwrap().next().is_none()
}
