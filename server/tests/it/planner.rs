//! The planner: real bare repositories, real mirrors, runs created through the webhook
//! endpoint or the store, planned by `planner::plan_pending` (and once by the spawned
//! worker inside a real server).
//!
//! Long on purpose: one test per behaviour of this area, each written out end to end;
//! the set-up they share is in `support/`.

use axum::http::StatusCode;
use serde_json::{Value, json};
use server::daemon::config::Settings;
use server::forge::ForgeKind;
use server::store::{self, Event, NewRun, RunStatus, StageStatus, Trigger};
use server::workers::planner::{self, Planner};

use crate::support::forge::{
    PIPELINE, SECRET, adapt_fixture, deliver, forge_headers, register, send,
};
use crate::support::git::GitRepo;
use crate::support::poll::eventually;
use crate::support::test_server::TestServer;

fn stage_keys(stages: &[store::StageWithSteps]) -> Vec<(String, StageStatus)> {
    stages
        .iter()
        .map(|s| (s.stage.key.clone(), s.stage.status))
        .collect()
}

#[tokio::test]
async fn invalid_yaml_becomes_an_error_run_with_diagnostics() {
    let env = TestServer::builder().build().await;
    let state = &env.state;
    let mut git = GitRepo::bare();
    let bad = "stages:\n  build:\n    steps:\n      - run: make\n    needs: [nope]\n";
    let sha = git.commit("refs/heads/main", &[], &[(".slipway.yml", bad)], "broken");
    let repo = register(
        state,
        "o/r",
        store::ForgeKind::Github,
        &git.url(),
        "main",
        true,
    )
    .await;
    let run = state
        .store
        .create_run(
            repo.id,
            NewRun::new(
                Trigger::Manual,
                Event::Push,
                "refs/heads/main",
                &sha.to_string(),
            ),
        )
        .await
        .unwrap();
    let report = planner::plan_pending(state).await.unwrap();
    assert_eq!(report.errored, 1, "{report:?}");
    let run = state.store.get_run(run.id).await.unwrap();
    assert_eq!(run.status, RunStatus::Error);
    assert_eq!(run.error.as_deref(), Some("pipeline validation failed"));
    let diags = run.diagnostics.expect("diagnostics are stored");
    let d = &diags[0];
    assert_eq!(d["file"], ".slipway.yml");
    assert_eq!(d["severity"], "error");
    assert_eq!(
        (d["line"].as_u64(), d["column"].as_u64().is_some()),
        (Some(5), true),
        "{diags}"
    );
    assert!(d["message"].as_str().unwrap().contains("nope"), "{diags}");
    assert!(state.store.list_stages(run.id).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_commit_without_pipeline_files_is_an_error_run() {
    let env = TestServer::builder().build().await;
    let state = &env.state;
    let mut git = GitRepo::bare();
    let sha = git.commit("refs/heads/main", &[], &[("README", "hi")], "no ci");
    let repo = register(
        state,
        "o/r",
        store::ForgeKind::Github,
        &git.url(),
        "main",
        true,
    )
    .await;
    let run = state
        .store
        .create_run(
            repo.id,
            NewRun::new(
                Trigger::Webhook,
                Event::Push,
                "refs/heads/main",
                &sha.to_string(),
            ),
        )
        .await
        .unwrap();
    planner::plan_pending(state).await.unwrap();
    let run = state.store.get_run(run.id).await.unwrap();
    assert_eq!(run.status, RunStatus::Error);
    assert_eq!(
        run.error.unwrap(),
        format!("no pipeline file (.slipway.yml or .slipway/*.yml) at {sha}")
    );
}

#[tokio::test]
async fn a_missing_commit_or_repository_is_an_error_not_a_hang() {
    let env = TestServer::builder().build().await;
    let state = &env.state;
    let mut git = GitRepo::bare();
    git.commit("refs/heads/main", &[], &[(".slipway.yml", PIPELINE)], "x");
    let repo = register(
        state,
        "o/r",
        store::ForgeKind::Github,
        &git.url(),
        "main",
        true,
    )
    .await;
    let ghost = "1234567890123456789012345678901234567890";
    let run = state
        .store
        .create_run(
            repo.id,
            NewRun::new(Trigger::Webhook, Event::Push, "refs/heads/main", ghost),
        )
        .await
        .unwrap();
    let gone = register(
        state,
        "o/gone",
        store::ForgeKind::Github,
        "/nonexistent/slipway/repo.git",
        "main",
        true,
    )
    .await;
    let run2 = state
        .store
        .create_run(
            gone.id,
            NewRun::new(Trigger::Webhook, Event::Push, "refs/heads/main", ghost),
        )
        .await
        .unwrap();
    let report = planner::plan_pending(state).await.unwrap();
    let run = state.store.get_run(run.id).await.unwrap();
    assert_eq!(run.status, RunStatus::Error, "{report:?}");
    assert!(
        run.error.as_deref().unwrap().contains("not found"),
        "{:?}",
        run.error
    );
    // A missing path is an I/O error to libgit2, which may be transient (a network
    // mount): retried, and given up on after MAX_GIT_ATTEMPTS.
    let run2 = state.store.get_run(run2.id).await.unwrap();
    assert_eq!(
        (run2.status, report.deferred),
        (RunStatus::Pending, 1),
        "{report:?}"
    );
    let mut planner = Planner::with_backoff(std::time::Duration::ZERO);
    for attempt in 1..planner::MAX_GIT_ATTEMPTS {
        let report = planner.step(state).await.unwrap();
        assert_eq!(report.deferred, 1, "attempt {attempt}: {report:?}");
    }
    let report = planner.step(state).await.unwrap();
    assert_eq!(report.errored, 1, "{report:?}");
    let run2 = state.store.get_run(run2.id).await.unwrap();
    assert_eq!(run2.status, RunStatus::Error);
    let error = run2.error.unwrap();
    assert!(
        error.starts_with(&format!(
            "git failed {} times, giving up",
            planner::MAX_GIT_ATTEMPTS
        )),
        "{error}"
    );
}

#[tokio::test]
async fn unreachable_remotes_are_retried_with_backoff() {
    let env = TestServer::builder().build().await;
    let state = &env.state;
    // Nothing listens on port 9 of localhost: a network error, which is transient.
    let repo = register(
        state,
        "o/r",
        store::ForgeKind::Github,
        "http://127.0.0.1:9/o/r.git",
        "main",
        true,
    )
    .await;
    let run = state
        .store
        .create_run(
            repo.id,
            NewRun::new(
                Trigger::Webhook,
                Event::Push,
                "refs/heads/main",
                &"a".repeat(40),
            ),
        )
        .await
        .unwrap();
    let mut planner = Planner::default();
    let report = planner.step(state).await.unwrap();
    assert_eq!(report.deferred, 1, "{report:?}");
    assert_eq!(
        state.store.get_run(run.id).await.unwrap().status,
        RunStatus::Pending
    );
    // Within the backoff the run is not tried again.
    let report = planner.step(state).await.unwrap();
    assert_eq!(report, planner::StepReport::default());
    let wait = planner.next_retry_in().unwrap();
    assert!(
        wait > std::time::Duration::ZERO && wait <= std::time::Duration::from_secs(2),
        "{wait:?}"
    );
}

async fn push(
    state: &server::daemon::state::AppState,
    repo: &store::Repo,
    branch: &str,
    before: Option<git2::Oid>,
    after: git2::Oid,
) -> store::Run {
    let mut new = NewRun::new(
        Trigger::Webhook,
        Event::Push,
        &format!("refs/heads/{branch}"),
        &after.to_string(),
    );
    new.before_sha = before.map(|b| b.to_string());
    new.trusted = true;
    state.store.create_run(repo.id, new).await.unwrap()
}

const PATHS: &str = "on:
  push: {}
  pull_request: {}
stages:
  build:
    steps: [\"make\"]
  docs:
    when: { paths: [\"docs/**\"] }
    steps: [\"make docs\"]
";

#[tokio::test]
async fn when_paths_sees_the_paths_a_push_changed() {
    // Two pushes to main: keep both runs alive to compare them.
    let env = TestServer::builder()
        .settings(Settings {
            auto_cancel: Some(false),
            ..Settings::default()
        })
        .build()
        .await;
    let state = &env.state;
    let mut git = GitRepo::bare();
    let base = [
        (".slipway.yml", PATHS),
        ("src/main.rs", "1"),
        ("docs/index.md", "1"),
    ];
    let one = git.commit("refs/heads/main", &[], &base, "one");
    let two = git.commit(
        "refs/heads/main",
        &[one],
        &[
            (".slipway.yml", PATHS),
            ("src/main.rs", "2"),
            ("docs/index.md", "1"),
        ],
        "code only",
    );
    let three = git.commit(
        "refs/heads/main",
        &[two],
        &[
            (".slipway.yml", PATHS),
            ("src/main.rs", "2"),
            ("docs/index.md", "2"),
        ],
        "docs",
    );
    let repo = register(
        state,
        "o/r",
        store::ForgeKind::Github,
        &git.url(),
        "main",
        true,
    )
    .await;
    let code = push(state, &repo, "main", Some(one), two).await;
    let docs = push(state, &repo, "main", Some(two), three).await;
    // A new branch: no `before`, changes unknown, so path filters match.
    let fresh = push(state, &repo, "feature", None, two).await;
    let report = planner::plan_pending(state).await.unwrap();
    assert_eq!(report.planned, 3, "{report:?}");

    let code_stages = state.store.list_stages(code.id).await.unwrap();
    let keys = stage_keys(&code_stages);
    assert_eq!(keys[0], ("build".into(), StageStatus::Queued));
    assert_eq!(keys[1], ("docs".into(), StageStatus::Skipped));
    assert!(
        code_stages[1]
            .stage
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("when.paths"),
        "{:?}",
        code_stages[1].stage
    );
    let plan = state.store.get_run(code.id).await.unwrap().plan.unwrap();
    assert_eq!(plan[0]["event"]["changed_paths"], json!(["src/main.rs"]));

    let docs_stages = state.store.list_stages(docs.id).await.unwrap();
    assert_eq!(
        stage_keys(&docs_stages),
        vec![
            ("build".into(), StageStatus::Queued),
            ("docs".into(), StageStatus::Queued)
        ]
    );
    let fresh_plan = state.store.get_run(fresh.id).await.unwrap().plan.unwrap();
    assert_eq!(fresh_plan[0]["event"]["changed_paths"], Value::Null);
    assert_eq!(
        stage_keys(&state.store.list_stages(fresh.id).await.unwrap()).len(),
        2
    );
}

#[tokio::test]
async fn pull_requests_diff_against_the_merge_base() {
    let env = TestServer::builder().build().await;
    let state = &env.state;
    let mut git = GitRepo::bare();
    let base = git.commit(
        "refs/heads/main",
        &[],
        &[(".slipway.yml", PATHS), ("src/a", "1")],
        "base",
    );
    // The PR touches docs; main moves on with a code change the PR does not include.
    let head = git.commit(
        "refs/pull/7/head",
        &[base],
        &[
            (".slipway.yml", PATHS),
            ("src/a", "1"),
            ("docs/x.md", "new"),
        ],
        "docs pr",
    );
    git.commit(
        "refs/heads/main",
        &[base],
        &[(".slipway.yml", PATHS), ("src/a", "2")],
        "main moves",
    );
    let repo = register(
        state,
        "o/r",
        store::ForgeKind::Github,
        &git.url(),
        "main",
        true,
    )
    .await;
    let mut new = NewRun::new(
        Trigger::Webhook,
        Event::PullRequest,
        "refs/pull/7/head",
        &head.to_string(),
    );
    new.branch = Some("main".into());
    new.source_branch = Some("docs".into());
    new.pr_number = Some(7);
    let run = state.store.create_run(repo.id, new).await.unwrap();
    planner::plan_pending(state).await.unwrap();
    let run = state.store.get_run(run.id).await.unwrap();
    assert_eq!(run.status, RunStatus::Running, "{:?}", run.error);
    assert_eq!(
        run.plan.unwrap()[0]["event"]["changed_paths"],
        json!(["docs/x.md"])
    );
}

#[tokio::test]
async fn auto_cancel_supersedes_older_runs_of_the_branch() {
    let env = TestServer::builder().build().await;
    let state = &env.state;
    assert!(state.config.auto_cancel, "on by default");
    let mut git = GitRepo::bare();
    let one = git.commit("refs/heads/main", &[], &[(".slipway.yml", PIPELINE)], "one");
    let two = git.commit(
        "refs/heads/main",
        &[one],
        &[(".slipway.yml", PIPELINE), ("f", "2")],
        "two",
    );
    let other = git.commit(
        "refs/heads/other",
        &[one],
        &[(".slipway.yml", PIPELINE), ("g", "1")],
        "other",
    );
    let repo = register(
        state,
        "o/r",
        store::ForgeKind::Github,
        &git.url(),
        "main",
        true,
    )
    .await;
    let older = push(state, &repo, "main", None, one).await;
    planner::plan_pending(state).await.unwrap();
    let side = push(state, &repo, "other", Some(one), other).await;
    let newer = push(state, &repo, "main", Some(one), two).await;
    let report = planner::plan_pending(state).await.unwrap();
    assert_eq!(report.planned, 2);
    let older = state.store.get_run(older.id).await.unwrap();
    assert_eq!(older.status, RunStatus::Cancelled);
    assert_eq!(
        older.error.as_deref(),
        Some(format!("superseded by run #{}", newer.number).as_str())
    );
    assert_eq!(
        state.store.get_run(newer.id).await.unwrap().status,
        RunStatus::Running
    );
    assert_eq!(
        state.store.get_run(side.id).await.unwrap().status,
        RunStatus::Running,
        "other branches are untouched"
    );
}

#[tokio::test]
async fn auto_cancel_of_pull_requests_keys_on_the_number() {
    let env = TestServer::builder().build().await;
    let state = &env.state;
    let mut git = GitRepo::bare();
    let base = git.commit(
        "refs/heads/main",
        &[],
        &[(".slipway.yml", PIPELINE)],
        "base",
    );
    let a1 = git.commit(
        "refs/pull/1/head",
        &[base],
        &[(".slipway.yml", PIPELINE), ("a", "1")],
        "a1",
    );
    let b1 = git.commit(
        "refs/pull/2/head",
        &[base],
        &[(".slipway.yml", PIPELINE), ("b", "1")],
        "b1",
    );
    let repo = register(
        state,
        "o/r",
        store::ForgeKind::Github,
        &git.url(),
        "main",
        true,
    )
    .await;
    let pr = |n: i64, sha: git2::Oid| {
        let mut new = NewRun::new(
            Trigger::Webhook,
            Event::PullRequest,
            &format!("refs/pull/{n}/head"),
            &sha.to_string(),
        );
        new.branch = Some("main".into());
        new.pr_number = Some(n);
        new
    };
    let first = state.store.create_run(repo.id, pr(1, a1)).await.unwrap();
    let second = state.store.create_run(repo.id, pr(2, b1)).await.unwrap();
    planner::plan_pending(state).await.unwrap();
    // Two pull requests into main do not cancel each other…
    assert_eq!(
        state.store.get_run(first.id).await.unwrap().status,
        RunStatus::Running
    );
    assert_eq!(
        state.store.get_run(second.id).await.unwrap().status,
        RunStatus::Running
    );
    // …a new push to pull request 1 cancels its older run.
    let a2 = git.commit(
        "refs/pull/1/head",
        &[a1],
        &[(".slipway.yml", PIPELINE), ("a", "2")],
        "a2",
    );
    let third = state.store.create_run(repo.id, pr(1, a2)).await.unwrap();
    planner::plan_pending(state).await.unwrap();
    let first = state.store.get_run(first.id).await.unwrap();
    assert_eq!(first.status, RunStatus::Cancelled);
    assert_eq!(
        first.error,
        Some(format!("superseded by run #{}", third.number))
    );
    assert_eq!(
        state.store.get_run(second.id).await.unwrap().status,
        RunStatus::Running
    );
}

#[tokio::test]
async fn auto_cancel_can_be_turned_off() {
    let env = TestServer::builder()
        .settings(Settings {
            auto_cancel: Some(false),
            ..Settings::default()
        })
        .build()
        .await;
    let state = &env.state;
    let mut git = GitRepo::bare();
    let one = git.commit("refs/heads/main", &[], &[(".slipway.yml", PIPELINE)], "one");
    let two = git.commit(
        "refs/heads/main",
        &[one],
        &[(".slipway.yml", PIPELINE), ("f", "2")],
        "two",
    );
    let repo = register(
        state,
        "o/r",
        store::ForgeKind::Github,
        &git.url(),
        "main",
        true,
    )
    .await;
    let older = push(state, &repo, "main", None, one).await;
    push(state, &repo, "main", Some(one), two).await;
    planner::plan_pending(state).await.unwrap();
    assert_eq!(
        state.store.get_run(older.id).await.unwrap().status,
        RunStatus::Running
    );
}

#[tokio::test]
async fn nothing_triggered_is_a_successful_run_that_says_why() {
    let env = TestServer::builder().build().await;
    let state = &env.state;
    let mut git = GitRepo::bare();
    let yaml = "on: { push: { branches: [main] } }\nstages: { build: { steps: [\"make\"] } }\n";
    let sha = git.commit("refs/heads/feature", &[], &[(".slipway.yml", yaml)], "x");
    let repo = register(
        state,
        "o/r",
        store::ForgeKind::Github,
        &git.url(),
        "main",
        true,
    )
    .await;
    let run = push(state, &repo, "feature", None, sha).await;
    let report = planner::plan_pending(state).await.unwrap();
    assert_eq!(report.planned, 1);
    let run = state.store.get_run(run.id).await.unwrap();
    assert_eq!(run.status, RunStatus::Success);
    assert_eq!(run.plan, Some(json!([])));
    let note = run.error.unwrap();
    assert!(
        note.starts_with("no pipeline triggered: default: on.push.branches"),
        "{note}"
    );
}

#[tokio::test]
async fn manual_parameter_errors_are_error_runs() {
    let env = TestServer::builder().build().await;
    let state = &env.state;
    let mut git = GitRepo::bare();
    let yaml = "on:\n  manual:\n    params:\n      target: { required: true, options: [staging, prod] }\nstages: { deploy: { steps: [\"echo ${{ params.target }}\"] } }\n";
    let sha = git.commit("refs/heads/main", &[], &[(".slipway.yml", yaml)], "x");
    let repo = register(
        state,
        "o/r",
        store::ForgeKind::Github,
        &git.url(),
        "main",
        true,
    )
    .await;
    let mut bad = NewRun::new(
        Trigger::Manual,
        Event::Manual,
        "refs/heads/main",
        &sha.to_string(),
    );
    bad.params = json!({ "target": "moon" });
    let bad = state.store.create_run(repo.id, bad).await.unwrap();
    let mut good = NewRun::new(
        Trigger::Manual,
        Event::Manual,
        "refs/heads/main",
        &sha.to_string(),
    );
    good.params = json!({ "target": "prod" });
    let good = state.store.create_run(repo.id, good).await.unwrap();
    planner::plan_pending(state).await.unwrap();
    let bad = state.store.get_run(bad.id).await.unwrap();
    assert_eq!(bad.status, RunStatus::Error);
    assert!(bad.error.unwrap().contains("moon"));
    let good = state.store.get_run(good.id).await.unwrap();
    assert_eq!(good.status, RunStatus::Running, "{:?}", good.error);
    assert_eq!(good.plan.unwrap()[0]["event"]["params"]["target"], "prod");
}

#[tokio::test]
async fn a_manual_run_that_plans_nothing_is_an_error_run_not_a_success() {
    // The trigger API refuses such a run up front; a run made otherwise (the store, an
    // older server) still never passes for one that did something.
    let env = TestServer::builder().build().await;
    let state = &env.state;
    let mut git = GitRepo::bare();
    let yaml = "on: { push: {} }\nstages: { build: { steps: [\"make\"] } }\n";
    let sha = git.commit("refs/heads/main", &[], &[(".slipway.yml", yaml)], "x");
    let repo = register(
        state,
        "o/r",
        store::ForgeKind::Github,
        &git.url(),
        "main",
        true,
    )
    .await;
    let new = NewRun::new(
        Trigger::Manual,
        Event::Manual,
        "refs/heads/main",
        &sha.to_string(),
    );
    let run = state.store.create_run(repo.id, new).await.unwrap();
    planner::plan_pending(state).await.unwrap();
    let run = state.store.get_run(run.id).await.unwrap();
    assert_eq!(run.status, RunStatus::Error);
    let why = run.error.unwrap();
    assert!(
        why.starts_with("nothing to run: no pipeline takes manual runs (default: the pipeline has no `on.manual` trigger)"),
        "{why}"
    );
}

#[tokio::test]
async fn several_pipeline_files_prefix_stage_keys() {
    let env = TestServer::builder().build().await;
    let state = &env.state;
    let mut git = GitRepo::bare();
    let files = [
        (".slipway/ci.yml", PIPELINE),
        (
            ".slipway/lint.yml",
            "stages: { check: { steps: [\"true\"] } }\n",
        ),
    ];
    let sha = git.commit("refs/heads/main", &[], &files, "x");
    let repo = register(
        state,
        "o/r",
        store::ForgeKind::Github,
        &git.url(),
        "main",
        true,
    )
    .await;
    let run = push(state, &repo, "main", None, sha).await;
    planner::plan_pending(state).await.unwrap();
    let run = state.store.get_run(run.id).await.unwrap();
    let stages = state.store.list_stages(run.id).await.unwrap();
    let mut keys: Vec<String> = stages.iter().map(|s| s.stage.key.clone()).collect();
    keys.sort();
    assert_eq!(keys, ["ci/build", "ci/test", "lint/check"]);
    let test = stages.iter().find(|s| s.stage.key == "ci/test").unwrap();
    assert_eq!(test.stage.needs, ["ci/build"]);
    // The digest covers both files.
    let mut h = <sha2::Sha256 as sha2::Digest>::new();
    sha2::Digest::update(&mut h, PIPELINE);
    sha2::Digest::update(&mut h, files[1].1);
    assert_eq!(
        run.yaml_sha256.unwrap(),
        hex::encode(sha2::Digest::finalize(h))
    );
}

/// How long the spawned planner may take to plan a run.
const WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// The real server with its workers: a webhook over a socket is planned by the spawned
/// planner loop, and a run left pending before the start (a crash mid-planning) is
/// planned at start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spawned_planner_plans_webhook_runs_and_resumes_after_a_crash() {
    // No runner: this test is about planning, so runs must stay `running` to be checked.
    let mut env = TestServer::builder().in_process_runner(false).build().await;
    let state = env.state.clone();
    let mut git = GitRepo::bare();
    let d = adapt_fixture(
        &mut git,
        ForgeKind::Github,
        "push",
        "github/push.json",
        &[(".slipway.yml", PIPELINE)],
        &[(".slipway.yml", PIPELINE), ("x", "1")],
    );
    let repo = register(
        &state,
        "octo-org/hello-world",
        store::ForgeKind::Github,
        &git.url(),
        "main",
        true,
    )
    .await;
    let left_over = push(&state, &repo, "slipway-test-base", None, d.base).await;

    env.serve().await;

    eventually("the left-over run to be planned", WITHIN, || async {
        match state.store.get_run(left_over.id).await.unwrap().status {
            RunStatus::Pending => Err(RunStatus::Pending),
            _ => Ok(()),
        }
    })
    .await;

    let headers = forge_headers(ForgeKind::Github, "push", "live", &d.body, Some(SECRET));
    let mut req = reqwest::Client::new()
        .post(format!("{}/hooks/github/octo-org/hello-world", env.url()))
        .body(d.body.clone());
    for (k, v) in &headers {
        req = req.header(k, v);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status().as_u16(), StatusCode::ACCEPTED.as_u16());
    let number = resp.json::<Value>().await.unwrap()["run"].as_i64().unwrap();
    eventually("the webhook run to be planned", WITHIN, || async {
        let run = state.store.get_run_by_number(repo.id, number).await;
        match run.unwrap().status {
            RunStatus::Pending => Err(RunStatus::Pending),
            _ => Ok(()),
        }
    })
    .await;
    let run = state
        .store
        .get_run_by_number(repo.id, number)
        .await
        .unwrap();
    assert_eq!(run.status, RunStatus::Running, "{:?}", run.error);
    assert_eq!(state.store.list_stages(run.id).await.unwrap().len(), 2);
    let left_over = state.store.get_run(left_over.id).await.unwrap();
    assert_eq!(
        left_over.status,
        RunStatus::Running,
        "{:?}",
        left_over.error
    );

    env.stop().await;
}

/// A stage with pod settings for the Kubernetes backend, service account included:
/// `service_account` is at line 10, column 7.
const SERVICE_ACCOUNT: &str = "on:
  push: {}
  pull_request: {}
stages:
  deploy:
    kubernetes:
      node_selector: { pool: deploy }
      tolerations:
        - { key: dedicated, value: deploy, effect: NoSchedule }
      service_account: deployer
    steps: [\"kubectl apply -f k8s/\"]
";

/// A signed delivery of `fixture` (re-pointed at a commit holding `files`) to a new
/// repository `name` registered with `trusted`; returns the repository and its run.
async fn delivered(
    state: &server::daemon::state::AppState,
    git: &mut GitRepo,
    name: &str,
    trusted: bool,
    (event, fixture): (&str, &str),
) -> (store::Repo, store::Run) {
    let files = [(".slipway.yml", SERVICE_ACCOUNT)];
    let d = adapt_fixture(git, ForgeKind::Github, event, fixture, &files, &files);
    let repo = register(
        state,
        name,
        store::ForgeKind::Github,
        &git.url(),
        "main",
        trusted,
    )
    .await;
    let (status, body) = deliver(state, ForgeKind::Github, name, event, "d1", &d.body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let number = body["run"].as_i64().unwrap();
    let run = state
        .store
        .get_run_by_number(repo.id, number)
        .await
        .unwrap();
    (repo, run)
}

/// The error run the planner (or a rerun) makes of [`SERVICE_ACCOUNT`] when the run is
/// not trusted: one diagnostic, at the `service_account` key, saying why.
async fn assert_refused_service_account(state: &server::daemon::state::AppState, run: &store::Run) {
    let run = state.store.get_run(run.id).await.unwrap();
    assert_eq!(run.status, RunStatus::Error, "{:?}", run.error);
    assert_eq!(
        run.error.as_deref(),
        Some(server::runs::from_plan::UNTRUSTED_REASON)
    );
    let diags = run.diagnostics.expect("diagnostics are stored");
    let diags = diags.as_array().unwrap();
    assert_eq!(diags.len(), 1, "{diags:?}");
    let d = &diags[0];
    assert_eq!(
        (
            &d["file"],
            &d["line"],
            &d["column"],
            &d["severity"],
            &d["code"]
        ),
        (
            &json!(".slipway.yml"),
            &json!(10),
            &json!(7),
            &json!("error"),
            &json!("untrusted-service-account")
        ),
        "{d}"
    );
    let message = d["message"].as_str().unwrap();
    assert!(
        message.contains("service_account: deployer")
            && message.contains("repository must be marked trusted")
            && message.contains("pull requests from forks never get one"),
        "{message}"
    );
    assert!(state.store.list_stages(run.id).await.unwrap().is_empty());
    assert!(run.plan.is_none());
}

#[tokio::test]
async fn a_service_account_is_refused_for_an_untrusted_repository_and_for_fork_pull_requests() {
    let env = TestServer::builder().build().await;
    let state = &env.state;
    let mut git = GitRepo::bare();
    let (_, push) = delivered(
        state,
        &mut git,
        "o/untrusted",
        false,
        ("push", "github/push.json"),
    )
    .await;
    assert!(!push.trusted);
    let mut fork_git = GitRepo::bare();
    let (_, fork) = delivered(
        state,
        &mut fork_git,
        "o/trusted",
        true,
        ("pull_request", "github/pull_request_synchronize_fork.json"),
    )
    .await;
    assert!(fork.fork && !fork.trusted);
    let report = planner::plan_pending(state).await.unwrap();
    assert_eq!(report.errored, 2, "{report:?}");
    assert_refused_service_account(state, &push).await;
    assert_refused_service_account(state, &fork).await;

    // A rerun of a run that never planned goes back to the planner, which refuses it
    // the same way.
    let (_, admin) =
        server::api::tokens::create_token(&state.store, "root", server::store::TokenScope::Admin)
            .await
            .unwrap();
    let (status, body) = rerun(state, "o/untrusted", push.number, &admin).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["status"], "pending");
    planner::plan_pending(state).await.unwrap();
    let again = state
        .store
        .get_run(body["id"].as_i64().unwrap())
        .await
        .unwrap();
    assert!(!again.trusted);
    assert_refused_service_account(state, &again).await;
}

#[tokio::test]
async fn a_trusted_repository_gets_its_service_account_until_trust_is_taken_away() {
    let env = TestServer::builder().build().await;
    let state = &env.state;
    let mut git = GitRepo::bare();
    let (repo, run) = delivered(state, &mut git, "o/r", true, ("push", "github/push.json")).await;
    assert!(run.trusted);
    let report = planner::plan_pending(state).await.unwrap();
    assert_eq!(report.planned, 1, "{report:?}");
    let run = state.store.get_run(run.id).await.unwrap();
    assert_eq!(run.status, RunStatus::Running, "{:?}", run.error);
    let stages = state.store.list_stages(run.id).await.unwrap();
    assert_eq!(
        stage_keys(&stages),
        [("deploy".into(), StageStatus::Queued)]
    );
    // The stored spec holds the pod settings, and the runner gets them as PodSettings.
    let spec = &stages[0].stage.spec;
    assert_eq!(
        spec["kubernetes"]["service_account"],
        json!({ "name": "deployer", "line": 10, "column": 7 })
    );
    let planned: pipelines::PlannedStage = serde_json::from_value(spec.clone()).unwrap();
    let runnable = server::agent::stage_spec::stage_spec(
        &planned,
        "deploy",
        runner::Source::Empty,
        &Default::default(),
        server::agent::stage_spec::OnMissing::Error,
    )
    .unwrap();
    assert_eq!(runnable.pod.service_account.as_deref(), Some("deployer"));
    assert_eq!(runnable.pod.node_selector["pool"], "deploy");
    assert_eq!(runnable.pod.tolerations.len(), 1);

    let (_, admin) =
        server::api::tokens::create_token(&state.store, "root", server::store::TokenScope::Admin)
            .await
            .unwrap();
    // While the repository is trusted, a rerun repeats the plan, service account and all.
    assert!(state.store.cancel_run(run.id, "test").await.unwrap());
    let (status, body) = rerun(state, "o/r", run.number, &admin).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        (&body["status"], &body["trusted"]),
        (&json!("running"), &json!(true))
    );
    let second = body["id"].as_i64().unwrap();
    let stages = state.store.list_stages(second).await.unwrap();
    assert_eq!(
        stages[0].stage.spec["kubernetes"]["service_account"]["name"],
        "deployer"
    );
    assert!(state.store.cancel_run(second, "test").await.unwrap());

    // Trust taken away: a rerun of the same stored plan is an error run, never stages.
    let mut untrusted = repo.clone();
    untrusted.trusted = false;
    state.store.update_repo(&untrusted).await.unwrap();
    let (status, body) = rerun(state, "o/r", run.number, &admin).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["trusted"], false);
    let refused = state
        .store
        .get_run(body["id"].as_i64().unwrap())
        .await
        .unwrap();
    assert_refused_service_account(state, &refused).await;
    // Created finished: the planner has nothing to pick up.
    assert!(state.store.pending_runs(10).await.unwrap().is_empty());
}

/// `POST …/runs/{number}/rerun` through the app, as an admin.
async fn rerun(
    state: &server::daemon::state::AppState,
    repo: &str,
    number: i64,
    admin: &str,
) -> (StatusCode, Value) {
    let req = axum::http::Request::post(format!("/api/repos/{repo}/runs/{number}/rerun"))
        .header("authorization", format!("Bearer {admin}"))
        .body(axum::body::Body::empty())
        .unwrap();
    send(state, req).await
}
