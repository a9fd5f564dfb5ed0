//! Every pipeline file under `examples/` parses and validates cleanly, and plans for the
//! events its `on` section accepts.

use std::path::{Path, PathBuf};

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            // `target/` is a build's; `k8s/` holds Kubernetes manifests, not pipelines.
            if path
                .file_name()
                .is_some_and(|n| n == "target" || n == "k8s")
            {
                continue;
            }
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yml" || e == "yaml") {
            out.push(path);
        }
    }
}

#[test]
fn every_example_yaml_file_is_a_valid_pipeline() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files = Vec::new();
    yaml_files(&root, &mut files);
    assert!(
        files.len() >= 4,
        "expected the example pipelines, found {files:?}"
    );
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let rel = file
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let pipeline = match pipelines::parse(&rel, &text) {
            Ok(p) => p,
            Err(diags) => panic!(
                "{rel} does not validate:\n{}",
                diags
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        };
        assert!(!pipeline.stages.is_empty(), "{rel} has no stages");
        assert!(
            pipeline.warnings.is_empty(),
            "{rel}: {:?}",
            pipeline.warnings
        );
    }
}

#[test]
fn the_rust_example_plans_its_release_path_on_main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/rust-crate");
    let text = std::fs::read_to_string(root.join(".slipway.yml")).unwrap();
    let pipeline = pipelines::parse(".slipway.yml", &text).unwrap();
    let ctx = pipelines::EventContext {
        event: pipelines::Event::Push,
        branch: Some("main".into()),
        sha: "0123456789abcdef0123456789abcdef01234567".into(),
        ..Default::default()
    };
    let plan = pipelines::plan(&pipeline, &ctx).unwrap();
    let ids: Vec<&str> = plan.stages.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "build",
            "test (features=default)",
            "test (features=full)",
            "scan",
            "image",
            "staging",
            "production"
        ]
    );
    let image = plan.stages.iter().find(|s| s.id == "image").unwrap();
    match &image.kind {
        pipelines::PlannedKind::Image { push, .. } => assert_eq!(
            push.as_deref(),
            Some("registry.example.com/team/hello:0123456789abcdef0123456789abcdef01234567")
        ),
        other => panic!("image stage planned as {other:?}"),
    }

    // A pull request into main tests but does not push (when: event push), and the
    // deploys after the image skip with it.
    let pull_request = pipelines::EventContext {
        event: pipelines::Event::PullRequest,
        branch: Some("main".into()),
        source_branch: Some("feature/x".into()),
        ..ctx.clone()
    };
    let plan = pipelines::plan(&pipeline, &pull_request).unwrap();
    let skipped: Vec<&str> = plan.skipped.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(skipped, ["image", "staging", "production"], "{plan:#?}");
    // So does a push to a release branch (when: branch main).
    let release_push = pipelines::EventContext {
        branch: Some("release/1.0".into()),
        ..ctx
    };
    let plan = pipelines::plan(&pipeline, &release_push).unwrap();
    let skipped: Vec<&str> = plan.skipped.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(skipped, ["image", "staging", "production"], "{plan:#?}");
}

#[test]
fn the_kubernetes_example_chooses_its_nodes_and_keeps_its_service_account_off_pull_requests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kubernetes");
    let text = std::fs::read_to_string(root.join(".slipway.yml")).unwrap();
    let pipeline = pipelines::parse(".slipway.yml", &text).unwrap();
    let push = pipelines::EventContext {
        event: pipelines::Event::Push,
        branch: Some("main".into()),
        sha: "0123456789abcdef0123456789abcdef01234567".into(),
        ..Default::default()
    };
    let plan = pipelines::plan(&pipeline, &push).unwrap();
    let test = &plan.stages[0];
    assert_eq!(test.kubernetes.node_selector["kubernetes.io/arch"], "arm64");
    assert_eq!(test.kubernetes.tolerations.len(), 2);
    assert_eq!(
        test.kubernetes.tolerations[1].toleration_seconds,
        Some(60),
        "{test:#?}"
    );
    // The image builds in a builder pod: its runs_on keeps it off docker runners.
    let image = plan.stages.iter().find(|s| s.id == "image").unwrap();
    assert_eq!(
        server::runs::routing::stage_labels(image),
        ["backend:kubernetes"],
        "{image:#?}"
    );
    let deploy = &plan.stages[1];
    assert_eq!(
        deploy
            .kubernetes
            .service_account
            .as_ref()
            .map(|s| s.name.as_str()),
        Some("deployer")
    );
    // A push needs a trusted run for the deploy's service account…
    assert_eq!(
        pipelines::untrusted_service_accounts(std::slice::from_ref(&plan)).len(),
        1
    );
    // …a pull request skips the deploy, so an untrusted one still runs its tests.
    let pull_request = pipelines::EventContext {
        event: pipelines::Event::PullRequest,
        source_branch: Some("feature/x".into()),
        fork: true,
        ..push
    };
    let plan = pipelines::plan(&pipeline, &pull_request).unwrap();
    assert_eq!(plan.skipped.len(), 2, "{plan:#?}");
    assert!(pipelines::untrusted_service_accounts(&[plan]).is_empty());
}
