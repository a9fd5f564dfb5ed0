//! Cases: the step a stage kind adds (`scan`, `build image`).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::harness::{env, run, stage};
use crate::{Backend, LogStreamKind, Status};

/// A scan stage: the steps' files are scanned after the steps, as an extra `scan`
/// step; a planted token fails the stage with its file and line, a SARIF finding
/// below `fail_on` is reported without failing, and an allow-listed file is ignored.
pub async fn scan_stage(backend: Arc<dyn Backend>, image: Option<String>) {
    // Built at run time so this source file itself holds no token-shaped string.
    let token = ["ghp_", "aB3dE5fG7h", "I9jK1lM3nO", "5pQ7rS9tU1", "vW3xY5"].concat();
    let sarif = r#"{"version":"2.1.0","runs":[{"tool":{"driver":{"name":"lint"}},"results":[{"ruleId":"L1","level":"warning","message":{"text":"style"},"locations":[{"physicalLocation":{"artifactLocation":{"uri":"src/app.sh"},"region":{"startLine":2}}}]}]}]}"#;
    let mut spec = stage(
        "scan",
        &image,
        &[
            "mkdir -p src reports .slipway fixtures\nprintf 'echo hi\\nexport TOKEN=\"%s\"\\n' \"$T\" > src/app.sh\nprintf 'T=%s\\n' \"$T\" > fixtures/fake.env\necho fixtures/ > .slipway/scan-allow",
            "printf '%s' \"$SARIF\" > reports/lint.sarif",
        ],
    );
    spec.env = env(&[("T", &token), ("SARIF", sarif)]);
    spec.kind = crate::StageKind::Scan(crate::ScanSpec {
        sarif: vec!["reports/*.sarif".into()],
        fail_on: Some(crate::Severity::High),
    });
    let r = run(&*backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Failure, "{r:#?}");
    assert_eq!(r.outcome.steps.len(), 3);
    assert_eq!(r.outcome.steps[2].name, crate::SCAN_STEP);
    let at = |path: &str| {
        r.outcome
            .findings
            .iter()
            .filter(|f| f.path.as_deref() == Some(path))
            .collect::<Vec<_>>()
    };
    let planted = at("src/app.sh");
    assert!(
        planted.iter().any(|f| f.line == Some(2)
            && f.severity >= crate::Severity::High
            && f.tool == "slipway-secrets"),
        "{:#?}",
        r.outcome.findings
    );
    assert!(planted.iter().any(|f| f.tool == "lint" && f.rule == "L1"));
    assert!(at("fixtures/fake.env").is_empty(), "allow-listed");
    let log = r.stdout(2).join("\n");
    assert!(log.contains("src/app.sh:2"), "{log}");
    assert!(
        !log.contains(&token),
        "the token itself never reaches the log: {log}"
    );

    // Below fail_on: reported, not failing.
    spec.kind = crate::StageKind::Scan(crate::ScanSpec {
        sarif: vec!["reports/*.sarif".into()],
        fail_on: None,
    });
    let r = run(&*backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Success, "{r:#?}");
    assert!(!r.outcome.findings.is_empty());

    // A failing step skips the scan.
    let mut failing = stage("scan-skipped", &image, &["exit 3"]);
    failing.kind = spec.kind.clone();
    let r = run(&*backend, &failing).await;
    assert_eq!(r.outcome.status, Status::Failure);
    assert_eq!(r.outcome.steps[1].status, Status::Skipped);
    assert_eq!(r.outcome.steps[1].name, crate::SCAN_STEP);
}

/// A stage of kind image whose Dockerfile does not exist fails its `build image` step
/// with the reason in the log, as a failure (not a retryable error) — on a backend
/// that cannot build images as on one that can. Real builds are tested per backend.
pub async fn image_stage_missing_dockerfile(backend: Arc<dyn Backend>, image: Option<String>) {
    let mut spec = stage("image", &image, &["true"]);
    spec.kind = crate::StageKind::Image(crate::ImageSpec {
        dockerfile: "Dockerfile.missing".into(),
        context: ".".into(),
        target: None,
        build_args: BTreeMap::new(),
        labels: BTreeMap::new(),
        push: None,
        registry_auth: None,
    });
    let r = run(&*backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Failure, "{r:#?}");
    assert_eq!(r.outcome.steps[1].name, crate::IMAGE_STEP);
    assert_eq!(r.outcome.steps[1].status, Status::Failure);
    let log = r.text(1, LogStreamKind::Stderr).join("\n");
    assert!(!log.is_empty(), "the build step says why it failed");
}
