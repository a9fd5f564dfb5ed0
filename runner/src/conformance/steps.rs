//! Cases: exit codes are results, the step environment is isolated, steps share the
//! workspace.

use std::sync::Arc;

use super::harness::{env, run, stage};
use crate::{Backend, Status};

/// Exit codes are results: 0 succeeds, 1 and 42 fail with their code, later steps
/// are skipped, and `sh -e` stops a script at its first failing command.
pub async fn exit_codes(backend: Arc<dyn Backend>, image: Option<String>) {
    let spec = stage("exit-codes", &image, &["echo ok", "exit 42", "echo never"]);
    let r = run(&*backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Failure, "{:?}", r.outcome);
    assert_eq!(
        r.statuses(),
        vec![Status::Success, Status::Failure, Status::Skipped]
    );
    let codes: Vec<Option<i32>> = r.outcome.steps.iter().map(|s| s.exit_code).collect();
    assert_eq!(codes, vec![Some(0), Some(42), None]);
    assert!(r.outcome.steps.iter().all(|s| !s.oom_killed));
    assert!(r.lines(2).is_empty());

    let spec = stage("exit-one", &image, &["false\necho not reached"]);
    let r = run(&*backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Failure);
    assert_eq!(r.outcome.steps[0].exit_code, Some(1));
    assert!(
        r.stdout(0).is_empty(),
        "sh -e must stop at `false`: {:?}",
        r.stdout(0)
    );

    let spec = stage("exit-zero", &image, &["exit 0"]);
    let r = run(&*backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Success);
    assert_eq!(r.outcome.steps[0].exit_code, Some(0));
}

/// Stage and step env are visible (the step's wins); the runner's own environment
/// is not.
pub async fn env_isolation(backend: Arc<dyn Backend>, image: Option<String>) {
    let mut spec = stage("env", &image, &["env"]);
    spec.env = env(&[("STAGE_ONLY", "stage"), ("OVERRIDE", "stage")]);
    spec.steps[0].env = env(&[("STEP_ONLY", "step value"), ("OVERRIDE", "step")]);
    let r = run(&*backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Success, "{:?}", r.outcome);
    let out = r.stdout(0);
    for want in ["STAGE_ONLY=stage", "STEP_ONLY=step value", "OVERRIDE=step"] {
        assert!(out.iter().any(|l| l == want), "missing {want} in {out:?}");
    }
    assert!(!out.iter().any(|l| l == "OVERRIDE=stage"));

    // Variables a step environment legitimately has whatever the parent's are.
    const EXPECTED: &[&str] = &[
        "PATH", "HOME", "LANG", "TMPDIR", "PWD", "OLDPWD", "SHLVL", "_", "HOSTNAME", "TERM",
        "USER", "LOGNAME", "SHELL",
    ];
    let mut checked = 0;
    for (k, v) in std::env::vars() {
        if EXPECTED.contains(&k.as_str()) || v.is_empty() || v.contains('\n') {
            continue;
        }
        let leaked = format!("{k}={v}");
        assert!(
            !out.contains(&leaked),
            "the runner's environment variable {k} leaked into the step"
        );
        checked += 1;
    }
    // Under cargo/nextest the parent always has CARGO_* variables.
    assert!(checked > 0, "no parent variables to check against");
}

/// Steps of a stage share one workspace, and run in it.
pub async fn workspace_shared_between_steps(backend: Arc<dyn Backend>, image: Option<String>) {
    let spec = stage(
        "workspace",
        &image,
        &[
            "echo shared-content > shared.txt\nmkdir -p dir/sub\necho nested > dir/sub/f",
            "test \"$(cat shared.txt)\" = shared-content\ncat dir/sub/f",
        ],
    );
    let r = run(&*backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Success, "{:?}", r.events);
    assert_eq!(r.stdout(1), vec!["nested"]);
}
