//! The storage suite: every case is an `async fn(Dialect)` run against both databases
//! (`both_databases!`), on a migrated store of its own.
//!
//! Long on purpose: one test per behaviour of this area, each written out end to end;
//! the set-up they share is in `support/`.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use server::store::*;

use crate::support::both_databases;
use crate::support::db::{TestStore, database_url};

both_databases!(
    migrations_apply_twice,
    repo_crud,
    duplicate_deliveries_make_one_run,
    concurrent_runs_get_dense_numbers,
    runs_are_listed_by_status_and_branch,
    invalid_pipeline_becomes_error_run,
    plan_is_validated_before_writing,
    needs_promote_and_failures_skip,
    all_success_with_plan_skips_is_success,
    run_without_stages_succeeds,
    rerun_of_failed_stages_only,
    create_run_planned_is_one_step,
    stage_counts_follow_the_queue,
    retries_and_the_one_infra_retry,
    lease_is_exclusive_under_concurrency,
    global_limit_holds_under_concurrency,
    per_repo_limit,
    heartbeat_ok_cancel_lost,
    expired_lease_requeues_then_errors,
    lease_deadlines_follow_the_store_clock,
    cancel_run_stops_everything,
    supersede_cancels_older_runs_of_branch,
    step_bookkeeping,
    secrets_crud,
    token_lookup,
    cron_claims_once,
    runners_register,
    events_record_the_life_of_a_run,
    reconcile_is_idempotent,
    finish_report_names_the_call_that_ends_the_run,
    stage_results_are_stored_with_the_finish_and_replaced_by_a_retry,
    labels_route_stages_to_runners,
    repo_scopes_route_stages_to_runners,
    runner_capacity_holds_under_concurrency,
    the_last_two_admins_demoted_at_once_leave_one,
);

// ---------------------------------------------------------------- helpers

const LEASE: Duration = Duration::from_secs(60);

fn new_repo(name: &str) -> NewRepo {
    NewRepo {
        api_url: None,
        name: name.to_string(),
        forge: ForgeKind::Github,
        clone_url: format!("https://example.com/{name}.git"),
        default_branch: "main".into(),
        webhook_secret_enc: vec![1, 2, 3, 0, 255],
        forge_token_enc: None,
        trusted: false,
    }
}

fn push(branch: &str) -> NewRun {
    NewRun::new(
        Trigger::Webhook,
        Event::Push,
        &format!("refs/heads/{branch}"),
        "0123456789abcdef0123456789abcdef01234567",
    )
}

async fn repo(store: &Store, name: &str) -> Repo {
    store.create_repo(new_repo(name)).await.unwrap()
}

/// A repository and a planned run of it with these stages.
async fn planned(store: &Store, repo_name: &str, stages: Vec<NewStage>) -> (Repo, Run) {
    let r = match store.get_repo_by_name(repo_name).await {
        Ok(r) => r,
        Err(_) => repo(store, repo_name).await,
    };
    let run = store.create_run(r.id, push("main")).await.unwrap();
    let run = store
        .set_run_planned(
            run.id,
            &json!({"stages": stages.len()}),
            "sha256-of-yaml",
            stages,
        )
        .await
        .unwrap();
    (r, run)
}

/// A registered runner without labels that may run any number of stages; the same
/// runner again for the same name.
async fn runner_id(store: &Store, name: &str) -> RunnerId {
    store
        .register_runner(name, &[], 10_000, &RepoScope::All)
        .await
        .unwrap()
        .id
}

async fn lease(store: &Store) -> Lease {
    store
        .lease_stage(runner_id(store, "r1").await, LEASE, &Limits::UNLIMITED)
        .await
        .unwrap()
        .expect("a queued stage")
}

async fn stage(store: &Store, run: RunId, key: &str) -> StageWithSteps {
    store
        .list_stages(run)
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.stage.key == key)
        .unwrap_or_else(|| panic!("no stage {key}"))
}

async fn status_of(store: &Store, run: RunId, key: &str) -> StageStatus {
    stage(store, run, key).await.stage.status
}

async fn finish(store: &Store, l: &Lease, status: StageStatus) -> Settled {
    store
        .finish_stage(l.stage.id, &l.token, StageOutcome::new(status))
        .await
        .unwrap()
}

fn retried(n: usize, needs: &[&str], key: &str, max_attempts: u32) -> NewStage {
    let mut s = NewStage::new(key, needs, &vec!["step"; n]);
    s.max_attempts = max_attempts;
    s
}

// ---------------------------------------------------------------- outside the matrix

#[tokio::test]
async fn sqlite_in_memory_keeps_its_data() {
    let store = Store::connect("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    let r = repo(&store, "team/app").await;
    // The pool keeps its one connection: the data outlives idle periods and clones.
    let clone = store.clone();
    assert!(
        clone
            .accept_delivery(r.id, "d", push("main"))
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .accept_delivery(r.id, "d", push("main"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.list_runs(r.id, 10, None).await.unwrap().len(), 1);
}

#[tokio::test]
async fn connect_refuses_other_urls() {
    assert!(matches!(
        Store::connect("mysql://x/y").await,
        Err(Error::Invalid(_))
    ));
}

#[test]
fn retryable_errors() {
    assert!(Error::Database(sqlx::Error::PoolTimedOut).is_retryable());
    assert!(!Error::Database(sqlx::Error::PoolClosed).is_retryable());
    assert!(!Error::NotFound("x".into()).is_retryable());
    assert!(!Error::LeaseLost.is_retryable());
}

#[test]
fn test_database_urls() {
    let url = "postgres://u:p@h:5432/postgres";
    assert_eq!(database_url(url, "t"), "postgres://u:p@h:5432/t");
    assert_eq!(
        database_url("postgres://u@h?sslmode=disable", "t"),
        "postgres://u@h/t?sslmode=disable"
    );
}

// ---------------------------------------------------------------- cases

async fn migrations_apply_twice(db: Dialect) {
    let store = TestStore::open(db).await;
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    assert!(store.list_repos().await.unwrap().is_empty());
    let r = repo(&store, "team/app").await;
    store.migrate().await.unwrap();
    assert_eq!(store.get_repo(r.id).await.unwrap(), r);
}

async fn repo_crud(db: Dialect) {
    let store = TestStore::open(db).await;
    let mut new = new_repo("team/app");
    new.forge_token_enc = Some(vec![9; 40]);
    new.trusted = true;
    let a = store.create_repo(new).await.unwrap();
    assert_eq!(a.name, "team/app");
    assert_eq!(a.forge, ForgeKind::Github);
    assert_eq!(a.webhook_secret_enc, vec![1, 2, 3, 0, 255]);
    assert_eq!(a.forge_token_enc, Some(vec![9; 40]));
    assert!(a.trusted);
    assert_eq!(a.next_run_number, 1);
    assert!(
        a.created_at > 1_600_000_000_000,
        "unix ms: {}",
        a.created_at
    );

    let b = repo(&store, "another/lib").await;
    assert_eq!(store.get_repo(a.id).await.unwrap(), a);
    assert_eq!(store.get_repo_by_name("another/lib").await.unwrap(), b);
    let names: Vec<_> = store
        .list_repos()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["another/lib", "team/app"]);

    match store.create_repo(new_repo("team/app")).await {
        Err(Error::Conflict(msg)) => assert!(msg.contains("team/app"), "{msg}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(matches!(
        store.get_repo(a.id + b.id + 100).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        store.get_repo_by_name("nope/nope").await,
        Err(Error::NotFound(_))
    ));

    let mut changed = a.clone();
    changed.forge = ForgeKind::Forgejo;
    changed.clone_url = "ssh://git@forge/team/app.git".into();
    changed.default_branch = "trunk".into();
    changed.forge_token_enc = None;
    changed.trusted = false;
    let updated = store.update_repo(&changed).await.unwrap();
    assert_eq!(updated, changed);
    assert_eq!(store.get_repo(a.id).await.unwrap(), changed);

    let mut clash = b.clone();
    clash.name = "team/app".into();
    assert!(matches!(
        store.update_repo(&clash).await,
        Err(Error::Conflict(_))
    ));

    let run = store.create_run(a.id, push("main")).await.unwrap();
    assert!(store.delete_repo(a.id).await.unwrap());
    assert!(!store.delete_repo(a.id).await.unwrap());
    assert!(matches!(
        store.get_run(run.id).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        store.update_repo(&changed).await,
        Err(Error::NotFound(_))
    ));
}

async fn duplicate_deliveries_make_one_run(db: Dialect) {
    let store = TestStore::open(db).await;
    let r = repo(&store, "team/app").await;
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .accept_delivery(r.id, "delivery-42", push("main"))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut created = Vec::new();
    for t in tasks {
        if let Some(run) = t.await.unwrap() {
            created.push(run);
        }
    }
    assert_eq!(created.len(), 1, "exactly one copy creates a run");
    assert_eq!(created[0].number, 1);
    assert_eq!(created[0].status, RunStatus::Pending);
    let runs = store.list_runs(r.id, 100, None).await.unwrap();
    assert_eq!(runs, created);

    // Another delivery id, or the same id for another repository, is new.
    let next = store
        .accept_delivery(r.id, "delivery-43", push("main"))
        .await
        .unwrap();
    assert_eq!(next.map(|r| r.number), Some(2));
    let other = repo(&store, "team/other").await;
    assert!(
        store
            .accept_delivery(other.id, "delivery-42", push("main"))
            .await
            .unwrap()
            .is_some()
    );
    assert!(!store.record_delivery(r.id, "delivery-42").await.unwrap());
    assert!(store.record_delivery(r.id, "ping-1").await.unwrap());
    assert!(
        store
            .accept_delivery(r.id, "ping-1", push("main"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.get_repo(r.id).await.unwrap().next_run_number, 3);

    match store
        .accept_delivery(r.id + other.id + 100, "x", push("main"))
        .await
    {
        Err(Error::NotFound(_)) => {}
        other => panic!("expected NotFound for an unknown repository, got {other:?}"),
    }
}

async fn concurrent_runs_get_dense_numbers(db: Dialect) {
    let store = TestStore::open(db).await;
    let a = repo(&store, "team/a").await;
    let b = repo(&store, "team/b").await;
    let tasks: Vec<_> = (0..300)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let repo = if i % 3 == 0 { b.id } else { a.id };
                if i % 5 == 0 {
                    Some(store.create_run(repo, push("main")).await.unwrap())
                } else {
                    store
                        .accept_delivery(repo, &format!("d-{i}"), push("main"))
                        .await
                        .unwrap()
                }
            })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().is_some());
    }
    for (repo, n) in [(a.id, 200), (b.id, 100)] {
        let mut numbers: Vec<i64> = store
            .list_runs(repo, 1000, None)
            .await
            .unwrap()
            .iter()
            .map(|r| r.number)
            .collect();
        assert!(numbers.windows(2).all(|w| w[0] > w[1]), "newest first");
        numbers.reverse();
        assert_eq!(numbers, (1..=n).collect::<Vec<i64>>());
    }
    // Paging.
    let page = store.list_runs(a.id, 10, Some(50)).await.unwrap();
    let numbers: Vec<i64> = page.iter().map(|r| r.number).collect();
    assert_eq!(numbers, (40..50).rev().collect::<Vec<i64>>());
    let run = store.get_run_by_number(a.id, 7).await.unwrap();
    assert_eq!((run.repo_id, run.number), (a.id, 7));
    assert_eq!(store.get_run(run.id).await.unwrap(), run);
    assert!(matches!(
        store.get_run_by_number(a.id, 201).await,
        Err(Error::NotFound(_))
    ));
}

async fn runs_are_listed_by_status_and_branch(db: Dialect) {
    let store = TestStore::open(db).await;
    let r = repo(&store, "team/app").await;
    for branch in ["main", "dev", "main", "dev"] {
        store.create_run(r.id, push(branch)).await.unwrap();
    }
    let one = store.get_run_by_number(r.id, 1).await.unwrap();
    assert!(store.cancel_run(one.id, "test").await.unwrap());
    let numbers = |runs: Vec<Run>| runs.iter().map(|r| r.number).collect::<Vec<i64>>();
    let all = store
        .list_runs_where(r.id, 10, None, None, None)
        .await
        .unwrap();
    assert_eq!(numbers(all), [4, 3, 2, 1]);
    let dev = store
        .list_runs_where(r.id, 10, None, None, Some("dev"))
        .await
        .unwrap();
    assert_eq!(numbers(dev), [4, 2]);
    let cancelled = store
        .list_runs_where(r.id, 10, None, Some(RunStatus::Cancelled), None)
        .await
        .unwrap();
    assert_eq!(numbers(cancelled), [1]);
    let pending_main = store
        .list_runs_where(r.id, 1, Some(4), Some(RunStatus::Pending), Some("main"))
        .await
        .unwrap();
    assert_eq!(numbers(pending_main), [3]);
}

async fn invalid_pipeline_becomes_error_run(db: Dialect) {
    let store = TestStore::open(db).await;
    let r = repo(&store, "team/app").await;
    let mut new = push("feature/x");
    new.message = "fix: things".into();
    new.author = "ada".into();
    new.params = json!({"DEPLOY": "yes"});
    let run = store
        .accept_delivery(r.id, "d1", new)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run.branch.as_deref(), Some("feature/x"));
    assert_eq!(run.params, json!({"DEPLOY": "yes"}));
    assert_eq!(store.pending_runs(10).await.unwrap(), vec![run.clone()]);

    let diagnostics = json!([{"file": ".slipway.yml", "line": 3, "column": 5,
        "message": "unknown key `stagez`", "hint": "did you mean `stages`?"}]);
    let failed = store
        .set_run_error(run.id, "pipeline is invalid", Some(diagnostics.clone()))
        .await
        .unwrap();
    assert_eq!(failed.status, RunStatus::Error);
    assert_eq!(failed.error.as_deref(), Some("pipeline is invalid"));
    assert_eq!(failed.diagnostics, Some(diagnostics.clone()));
    assert!(failed.finished_at.is_some());
    let stored = store.get_run(run.id).await.unwrap();
    assert_eq!(stored, failed);
    assert_eq!(stored.message, "fix: things");
    assert!(store.pending_runs(10).await.unwrap().is_empty());

    assert!(matches!(
        store.set_run_planned(run.id, &json!({}), "x", vec![]).await,
        Err(Error::Conflict(_))
    ));
    assert!(matches!(
        store.set_run_error(run.id, "again", None).await,
        Err(Error::Conflict(_))
    ));
    assert_eq!(
        store.get_run(run.id).await.unwrap().diagnostics,
        Some(diagnostics)
    );
}

async fn plan_is_validated_before_writing(db: Dialect) {
    let store = TestStore::open(db).await;
    let r = repo(&store, "team/app").await;
    let run = store.create_run(r.id, push("main")).await.unwrap();
    let bad_plans = [
        vec![NewStage::new("a", &[], &[]), NewStage::new("a", &[], &[])],
        vec![NewStage::new("a", &["ghost"], &[])],
        vec![
            NewStage::new("a", &["c"], &[]),
            NewStage::new("b", &["a"], &[]),
            NewStage::new("c", &["b"], &[]),
            NewStage::new("d", &[], &[]),
        ],
    ];
    for plan in bad_plans {
        match store.set_run_planned(run.id, &json!({}), "x", plan).await {
            Err(Error::Invalid(_)) => {}
            other => panic!("expected Invalid, got {other:?}"),
        }
    }
    assert_eq!(
        store.get_run(run.id).await.unwrap().status,
        RunStatus::Pending
    );
    assert!(store.list_stages(run.id).await.unwrap().is_empty());
    // A stage with the same key twice in one transaction never half-writes.
    let ok = store
        .set_run_planned(
            run.id,
            &json!({"v": 1}),
            "x",
            vec![NewStage::new("a", &[], &["s"])],
        )
        .await
        .unwrap();
    assert_eq!(ok.status, RunStatus::Running);
    assert_eq!(ok.plan, Some(json!({"v": 1})));
    assert_eq!(ok.yaml_sha256.as_deref(), Some("x"));
    assert!(matches!(
        store.set_run_planned(run.id, &json!({}), "x", vec![]).await,
        Err(Error::Conflict(_))
    ));
}

async fn needs_promote_and_failures_skip(db: Dialect) {
    let store = TestStore::open(db).await;
    let (_, run) = planned(
        &store,
        "team/app",
        vec![
            NewStage::new("build", &[], &["compile", "package"]),
            NewStage::new("test", &["build"], &["unit"]),
            NewStage::new("scan", &["build"], &["scan"]),
            NewStage::new("image", &["test", "scan"], &["build", "push"]),
            NewStage::new("deploy", &["image"], &["rollout"]),
        ],
    )
    .await;
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(
        status_of(&store, run.id, "build").await,
        StageStatus::Queued
    );
    assert_eq!(
        status_of(&store, run.id, "test").await,
        StageStatus::Waiting
    );

    let build = lease(&store).await;
    assert_eq!(build.stage.key, "build");
    assert_eq!(build.run.id, run.id);
    assert_eq!(build.steps.len(), 2);
    assert_eq!(build.steps[1].name, "package");
    assert!(
        store
            .lease_stage(runner_id(&store, "r1").await, LEASE, &Limits::UNLIMITED)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        finish(&store, &build, StageStatus::Success).await,
        Settled::Finished(StageStatus::Success)
    );
    assert_eq!(status_of(&store, run.id, "test").await, StageStatus::Queued);
    assert_eq!(status_of(&store, run.id, "scan").await, StageStatus::Queued);
    assert_eq!(
        status_of(&store, run.id, "image").await,
        StageStatus::Waiting
    );

    let first = lease(&store).await;
    let second = lease(&store).await;
    let (test, scan) = if first.stage.key == "test" {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(scan.stage.key, "scan");
    finish(&store, &test, StageStatus::Success).await;
    assert_eq!(
        status_of(&store, run.id, "image").await,
        StageStatus::Waiting,
        "scan still running"
    );
    assert_eq!(
        store.get_run(run.id).await.unwrap().status,
        RunStatus::Running
    );
    store
        .finish_stage(
            scan.stage.id,
            &scan.token,
            StageOutcome::with_reason(StageStatus::Failure, "step `scan` exited 1"),
        )
        .await
        .unwrap();

    let image = stage(&store, run.id, "image").await;
    assert_eq!(image.stage.status, StageStatus::Skipped);
    assert!(
        image.stage.reason.as_deref().unwrap().contains("scan"),
        "{:?}",
        image.stage.reason
    );
    assert!(image.steps.iter().all(|s| s.status == StepStatus::Skipped));
    let deploy = stage(&store, run.id, "deploy").await.stage;
    assert_eq!(deploy.status, StageStatus::Skipped, "skips cascade");
    assert!(deploy.reason.unwrap().contains("image"));
    let scan = stage(&store, run.id, "scan").await.stage;
    assert_eq!(scan.reason.as_deref(), Some("step `scan` exited 1"));
    assert!(scan.finished_at.is_some() && scan.lease_token.is_none());

    let run = store.get_run(run.id).await.unwrap();
    assert_eq!(run.status, RunStatus::Failure);
    assert!(run.finished_at.is_some());
}

async fn all_success_with_plan_skips_is_success(db: Dialect) {
    let store = TestStore::open(db).await;
    let mut docs = NewStage::new("docs", &[], &["mkdocs"]);
    docs.skip = Some("when: branch is not main".into());
    let (_, run) = planned(
        &store,
        "team/app",
        vec![
            NewStage::new("build", &[], &["compile"]),
            docs,
            NewStage::new("publish-docs", &["docs"], &["upload"]),
            NewStage::new("test", &["build"], &["unit"]),
        ],
    )
    .await;
    assert_eq!(
        status_of(&store, run.id, "docs").await,
        StageStatus::Skipped
    );
    assert_eq!(
        status_of(&store, run.id, "publish-docs").await,
        StageStatus::Skipped
    );
    let docs = stage(&store, run.id, "docs").await;
    assert_eq!(
        docs.stage.reason.as_deref(),
        Some("when: branch is not main")
    );
    assert_eq!(docs.steps[0].status, StepStatus::Skipped);

    let build = lease(&store).await;
    assert_eq!(build.stage.key, "build");
    finish(&store, &build, StageStatus::Success).await;
    assert_eq!(
        store.get_run(run.id).await.unwrap().status,
        RunStatus::Running
    );
    let test = lease(&store).await;
    finish(&store, &test, StageStatus::Success).await;
    let run = store.get_run(run.id).await.unwrap();
    assert_eq!(run.status, RunStatus::Success);
    assert!(run.finished_at.unwrap() >= run.started_at.unwrap());
}

async fn run_without_stages_succeeds(db: Dialect) {
    let store = TestStore::open(db).await;
    let (_, run) = planned(&store, "team/app", vec![]).await;
    assert_eq!(run.status, RunStatus::Success);
    assert!(run.finished_at.is_some());
    assert_eq!(store.get_run(run.id).await.unwrap(), run);
    let mut only = NewStage::new("only", &[], &["x"]);
    only.skip = Some("when: event".into());
    let (_, run) = planned(&store, "team/app", vec![only]).await;
    assert_eq!(run.status, RunStatus::Success);
}

async fn rerun_of_failed_stages_only(db: Dialect) {
    let store = TestStore::open(db).await;
    let stages = || {
        vec![
            NewStage::new("build", &[], &["x"]),
            NewStage::new("test", &["build"], &["x"]),
            NewStage::new("deploy", &["test"], &["x"]),
        ]
    };
    let (r, first) = planned(&store, "team/app", stages()).await;
    let build = lease(&store).await;
    let digest = format!("sha256:{}", "e".repeat(64));
    let results = StageResults {
        outputs: [("digest".to_string(), digest.clone())].into(),
        findings: Vec::new(),
    };
    store
        .finish_stage_with(
            build.stage.id,
            &build.token,
            StageOutcome::new(StageStatus::Success),
            &results,
        )
        .await
        .unwrap();
    let test = lease(&store).await;
    finish(&store, &test, StageStatus::Failure).await;
    assert_eq!(
        store.get_run(first.id).await.unwrap().status,
        RunStatus::Failure
    );

    let mut again = push("main");
    again.trigger = Trigger::Rerun;
    again.rerun_of = Some(first.id);
    let rerun = store.create_run(r.id, again).await.unwrap();
    assert_eq!((rerun.rerun_of, rerun.number), (Some(first.id), 2));
    let mut plan = stages();
    plan[0].succeeded = Some(format!("succeeded in run #{}", first.number));
    let rerun = store
        .set_run_planned(
            rerun.id,
            first.plan.as_ref().unwrap(),
            "sha256-of-yaml",
            plan,
        )
        .await
        .unwrap();
    let build = stage(&store, rerun.id, "build").await.stage;
    assert_eq!(build.status, StageStatus::Success);
    assert_eq!(build.reason.as_deref(), Some("succeeded in run #1"));
    // Its outputs carry over for the stages that need them.
    let outputs = store.run_outputs(rerun.id).await.unwrap();
    assert_eq!(outputs.len(), 1);
    assert_eq!(
        (
            outputs[0].stage_id,
            outputs[0].name.as_str(),
            &outputs[0].value
        ),
        (build.id, "digest", &digest)
    );
    assert_eq!(
        status_of(&store, rerun.id, "test").await,
        StageStatus::Queued
    );
    for key in ["test", "deploy"] {
        let l = lease(&store).await;
        assert_eq!(l.stage.key, key);
        finish(&store, &l, StageStatus::Success).await;
    }
    assert_eq!(
        store.get_run(rerun.id).await.unwrap().status,
        RunStatus::Success
    );
}

async fn create_run_planned_is_one_step(db: Dialect) {
    let store = TestStore::open(db).await;
    let (r, first) = planned(
        &store,
        "team/app",
        vec![NewStage::new("build", &[], &["x"])],
    )
    .await;
    let mut again = push("main");
    again.trigger = Trigger::Rerun;
    again.rerun_of = Some(first.id);
    let mut build = NewStage::new("build", &[], &["x"]);
    build.succeeded = Some("succeeded in run #1".into());
    let plan = json!({"stages": 2});
    let run = store
        .create_run_planned(
            r.id,
            again.clone(),
            &plan,
            "sha",
            vec![build, NewStage::new("test", &["build"], &["x"])],
        )
        .await
        .unwrap();
    assert_eq!(run.number, 2);
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(run.plan.as_ref(), Some(&plan));
    assert_eq!(run.rerun_of, Some(first.id));
    // Never visible as pending to a planner.
    assert!(store.pending_runs(10).await.unwrap().is_empty());
    assert_eq!(
        status_of(&store, run.id, "build").await,
        StageStatus::Success
    );
    assert_eq!(status_of(&store, run.id, "test").await, StageStatus::Queued);
    // A bad plan writes nothing, not even the run.
    let err = store
        .create_run_planned(
            r.id,
            again,
            &plan,
            "sha",
            vec![NewStage::new("a", &["nope"], &[])],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    let runs = store.list_runs(r.id, 10, None).await.unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(store.get_repo(r.id).await.unwrap().next_run_number, 3);
}

async fn stage_counts_follow_the_queue(db: Dialect) {
    let store = TestStore::open(db).await;
    assert_eq!(store.stage_counts().await.unwrap(), (0, 0));
    planned(
        &store,
        "team/app",
        vec![
            NewStage::new("a", &[], &["x"]),
            NewStage::new("b", &[], &["x"]),
            NewStage::new("c", &["a"], &["x"]),
        ],
    )
    .await;
    assert_eq!(store.stage_counts().await.unwrap(), (2, 0));
    let l = lease(&store).await;
    assert_eq!(store.stage_counts().await.unwrap(), (1, 1));
    finish(&store, &l, StageStatus::Success).await;
    // `c` was promoted when `a` succeeded.
    assert_eq!(store.stage_counts().await.unwrap(), (2, 0));
}

async fn retries_and_the_one_infra_retry(db: Dialect) {
    let store = TestStore::open(db).await;
    // YAML retry: 2 attempts for failures; no infra retry for a plain failure.
    let (_, run) = planned(&store, "team/a", vec![retried(2, &[], "flaky", 2)]).await;
    let l = lease(&store).await;
    assert_eq!(l.stage.attempt, 1);
    store.start_step(l.stage.id, &l.token, 0).await.unwrap();
    store
        .finish_step(l.stage.id, &l.token, 0, StepStatus::Failure, Some(1), false)
        .await
        .unwrap();
    assert_eq!(
        finish(&store, &l, StageStatus::Failure).await,
        Settled::Retrying { attempt: 2 }
    );
    let s = stage(&store, run.id, "flaky").await;
    assert_eq!((s.stage.status, s.stage.attempt), (StageStatus::Queued, 2));
    assert!(s.stage.lease_token.is_none() && s.stage.runner_id.is_none());
    assert!(s.stage.reason.unwrap().contains("attempt 1 ended failure"));
    assert!(
        s.steps
            .iter()
            .all(|s| s.status == StepStatus::Pending && s.exit_code.is_none())
    );
    assert_eq!(
        store.get_run(run.id).await.unwrap().status,
        RunStatus::Running
    );
    let l2 = lease(&store).await;
    assert_eq!((l2.stage.id, l2.stage.attempt), (l.stage.id, 2));
    assert_ne!(l2.token, l.token);
    assert!(matches!(
        store
            .finish_stage(
                l.stage.id,
                &l.token,
                StageOutcome::new(StageStatus::Success)
            )
            .await,
        Err(Error::LeaseLost)
    ));
    assert_eq!(
        finish(&store, &l2, StageStatus::Failure).await,
        Settled::Finished(StageStatus::Failure)
    );
    assert_eq!(
        store.get_run(run.id).await.unwrap().status,
        RunStatus::Failure
    );

    // No YAML retry: a failure is final, an infrastructure error gets one more attempt.
    let (_, run) = planned(&store, "team/b", vec![retried(1, &[], "once", 1)]).await;
    let l = lease(&store).await;
    assert_eq!(
        finish(&store, &l, StageStatus::TimedOut).await,
        Settled::Finished(StageStatus::TimedOut)
    );
    assert_eq!(
        store.get_run(run.id).await.unwrap().status,
        RunStatus::Failure
    );

    let (_, run) = planned(&store, "team/c", vec![retried(1, &[], "infra", 1)]).await;
    let l = lease(&store).await;
    assert_eq!(
        finish(&store, &l, StageStatus::Error).await,
        Settled::Retrying { attempt: 2 }
    );
    assert!(stage(&store, run.id, "infra").await.stage.infra_retry_used);
    let l = lease(&store).await;
    assert_eq!(
        finish(&store, &l, StageStatus::Error).await,
        Settled::Finished(StageStatus::Error)
    );
    assert_eq!(
        store.get_run(run.id).await.unwrap().status,
        RunStatus::Error
    );

    // YAML retries first, then the one infra retry on top.
    let (_, run) = planned(&store, "team/d", vec![retried(1, &[], "both", 2)]).await;
    let mut settled = Vec::new();
    for _ in 0..3 {
        let l = lease(&store).await;
        settled.push(finish(&store, &l, StageStatus::Error).await);
    }
    assert_eq!(
        settled,
        [
            Settled::Retrying { attempt: 2 },
            Settled::Retrying { attempt: 3 },
            Settled::Finished(StageStatus::Error)
        ]
    );
    assert!(
        store
            .lease_stage(runner_id(&store, "r1").await, LEASE, &Limits::UNLIMITED)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store.get_run(run.id).await.unwrap().status,
        RunStatus::Error
    );
}

async fn lease_is_exclusive_under_concurrency(db: Dialect) {
    let store = TestStore::open(db).await;
    for r in 0..5 {
        let stages = (0..8)
            .map(|i| NewStage::new(&format!("s{i}"), &[], &["x"]))
            .collect();
        planned(&store, &format!("team/r{r}"), stages).await;
    }
    let tasks: Vec<_> = (0..12)
        .map(|runner| {
            let store = store.clone();
            tokio::spawn(async move {
                let runner = runner_id(&store, &format!("r{runner}")).await;
                let mut got = Vec::new();
                while let Some(l) = store
                    .lease_stage(runner, LEASE, &Limits::UNLIMITED)
                    .await
                    .unwrap()
                {
                    assert_eq!(l.stage.runner_id, Some(runner));
                    got.push((l.stage.id, l.token));
                }
                got
            })
        })
        .collect();
    let mut ids = Vec::new();
    let mut tokens = HashSet::new();
    for t in tasks {
        for (id, token) in t.await.unwrap() {
            ids.push(id);
            assert!(tokens.insert(token), "tokens are unique");
        }
    }
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(ids.len(), 40, "every stage leased");
    assert_eq!(unique.len(), 40, "no stage leased twice");
}

async fn global_limit_holds_under_concurrency(db: Dialect) {
    let store = TestStore::open(db).await;
    for r in 0..3 {
        let stages = (0..4)
            .map(|i| NewStage::new(&format!("s{i}"), &[], &["x"]))
            .collect();
        planned(&store, &format!("team/r{r}"), stages).await;
    }
    let limits = Limits {
        global: 3,
        per_repo: 10,
    };
    let tasks: Vec<_> = (0..10)
        .map(|runner| {
            let store = store.clone();
            tokio::spawn(async move {
                let runner = runner_id(&store, &format!("r{runner}")).await;
                store.lease_stage(runner, LEASE, &limits).await.unwrap()
            })
        })
        .collect();
    let mut leases = Vec::new();
    for t in tasks {
        leases.extend(t.await.unwrap());
    }
    assert_eq!(leases.len(), 3, "global limit 3");
    assert!(
        store
            .lease_stage(runner_id(&store, "r99").await, LEASE, &limits)
            .await
            .unwrap()
            .is_none()
    );
    finish(&store, &leases[0], StageStatus::Success).await;
    assert!(
        store
            .lease_stage(runner_id(&store, "r99").await, LEASE, &limits)
            .await
            .unwrap()
            .is_some(),
        "a slot freed"
    );
    assert!(
        store
            .lease_stage(runner_id(&store, "r99").await, LEASE, &limits)
            .await
            .unwrap()
            .is_none()
    );
}

async fn per_repo_limit(db: Dialect) {
    let store = TestStore::open(db).await;
    for r in ["team/a", "team/b"] {
        let stages = (0..4)
            .map(|i| NewStage::new(&format!("s{i}"), &[], &["x"]))
            .collect();
        planned(&store, r, stages).await;
    }
    let limits = Limits {
        global: 100,
        per_repo: 2,
    };
    let tasks: Vec<_> = (0..8)
        .map(|runner| {
            let store = store.clone();
            tokio::spawn(async move {
                let runner = runner_id(&store, &format!("r{runner}")).await;
                store.lease_stage(runner, LEASE, &limits).await.unwrap()
            })
        })
        .collect();
    let mut per_repo = std::collections::HashMap::<RepoId, usize>::new();
    for t in tasks {
        if let Some(l) = t.await.unwrap() {
            *per_repo.entry(l.stage.repo_id).or_default() += 1;
        }
    }
    assert_eq!(per_repo.len(), 2);
    assert!(per_repo.values().all(|n| *n == 2), "{per_repo:?}");
    // Oldest first: with the per-repo limit lifted, repo a's remaining stages come first.
    let a = store.get_repo_by_name("team/a").await.unwrap();
    let next = store
        .lease_stage(runner_id(&store, "r1").await, LEASE, &Limits::UNLIMITED)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.stage.repo_id, a.id);
}

async fn heartbeat_ok_cancel_lost(db: Dialect) {
    let store = TestStore::open(db).await;
    let (_, run) = planned(&store, "team/app", vec![NewStage::new("a", &[], &["x"])]).await;
    let l = lease(&store).await;
    assert!(l.expires_at > now_ms());
    assert_eq!(
        store.heartbeat(l.stage.id, &l.token, LEASE).await.unwrap(),
        Heartbeat::Ok
    );
    let extended = store
        .get_stage(l.stage.id)
        .await
        .unwrap()
        .lease_expires_at
        .unwrap();
    assert!(extended >= l.expires_at);
    assert_eq!(
        store
            .heartbeat(l.stage.id, "not-the-token", LEASE)
            .await
            .unwrap(),
        Heartbeat::Lost
    );
    assert!(store.cancel_run(run.id, "cancelled by ada").await.unwrap());
    assert_eq!(
        store.heartbeat(l.stage.id, &l.token, LEASE).await.unwrap(),
        Heartbeat::Cancel
    );
    assert_eq!(
        finish(&store, &l, StageStatus::Cancelled).await,
        Settled::Finished(StageStatus::Cancelled)
    );
    assert_eq!(
        store.heartbeat(l.stage.id, &l.token, LEASE).await.unwrap(),
        Heartbeat::Lost
    );
}

async fn expired_lease_requeues_then_errors(db: Dialect) {
    let store = TestStore::open(db).await;
    let (_, run) = planned(
        &store,
        "team/app",
        vec![NewStage::new("a", &[], &["x", "y"])],
    )
    .await;
    let l = store
        .lease_stage(
            runner_id(&store, "r1").await,
            Duration::from_millis(1),
            &Limits::UNLIMITED,
        )
        .await
        .unwrap()
        .unwrap();
    store.start_step(l.stage.id, &l.token, 0).await.unwrap();
    assert!(
        store
            .expire_leases(l.expires_at - 1)
            .await
            .unwrap()
            .is_empty(),
        "not yet expired"
    );
    assert_eq!(
        store.expire_leases(now_ms() + 10_000).await.unwrap(),
        vec![l.stage.id]
    );
    let s = stage(&store, run.id, "a").await;
    assert_eq!(s.stage.status, StageStatus::Queued);
    assert_eq!(s.stage.attempt, 2);
    assert!(s.stage.infra_retry_used, "counts as the infra retry");
    assert!(s.stage.reason.unwrap().contains(RUNNER_LOST));
    assert!(s.steps.iter().all(|s| s.status == StepStatus::Pending));
    assert_eq!(
        store.heartbeat(l.stage.id, &l.token, LEASE).await.unwrap(),
        Heartbeat::Lost
    );
    assert!(matches!(
        store
            .finish_stage(
                l.stage.id,
                &l.token,
                StageOutcome::new(StageStatus::Success)
            )
            .await,
        Err(Error::LeaseLost)
    ));
    assert!(matches!(
        store.start_step(l.stage.id, &l.token, 1).await,
        Err(Error::LeaseLost)
    ));

    let l2 = store
        .lease_stage(
            runner_id(&store, "r2").await,
            Duration::from_millis(1),
            &Limits::UNLIMITED,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(l2.stage.id, l.stage.id);
    store.start_step(l2.stage.id, &l2.token, 0).await.unwrap();
    assert_eq!(
        store.expire_leases(now_ms() + 10_000).await.unwrap(),
        vec![l.stage.id]
    );
    let s = stage(&store, run.id, "a").await;
    assert_eq!(s.stage.status, StageStatus::Error);
    assert_eq!(s.stage.reason.as_deref(), Some(RUNNER_LOST));
    assert_eq!(
        s.steps[0].status,
        StepStatus::Error,
        "the step that was running"
    );
    assert_eq!(s.steps[1].status, StepStatus::Skipped);
    assert_eq!(
        store.get_run(run.id).await.unwrap().status,
        RunStatus::Error
    );
    assert!(
        store
            .expire_leases(now_ms() + 10_000)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Lease deadlines, heartbeats and expiry read the store's clock: stepping a manual
/// clock expires a lease, without waiting for it.
async fn lease_deadlines_follow_the_store_clock(db: Dialect) {
    let opened = TestStore::open(db).await;
    let clock = std::sync::Arc::new(server::clock::ManualClock::starting_at(1_000_000));
    let store = Store::clone(&opened).with_clock(clock.clone());
    let (_, run) = planned(&store, "team/app", vec![NewStage::new("a", &[], &["x"])]).await;
    let l = lease(&store).await;
    assert_eq!(l.expires_at, 1_000_000 + 60_000);
    assert_eq!(l.stage.started_at, Some(1_000_000));
    clock.advance(Duration::from_secs(30));
    assert_eq!(
        store.heartbeat(l.stage.id, &l.token, LEASE).await.unwrap(),
        Heartbeat::Ok
    );
    clock.advance(LEASE);
    assert!(
        store
            .expire_leases(store.now_ms())
            .await
            .unwrap()
            .is_empty(),
        "the heartbeat moved the deadline to now + the lease"
    );
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        store.expire_leases(store.now_ms()).await.unwrap(),
        vec![l.stage.id]
    );
    let s = stage(&store, run.id, "a").await;
    assert_eq!(s.stage.status, StageStatus::Queued);
    assert_eq!(s.stage.queued_at, Some(1_000_000 + 90_001));
}

async fn cancel_run_stops_everything(db: Dialect) {
    let store = TestStore::open(db).await;
    let (_, run) = planned(
        &store,
        "team/app",
        vec![
            retried(1, &[], "a", 3),
            NewStage::new("b", &[], &["x"]),
            NewStage::new("c", &["a"], &["x"]),
        ],
    )
    .await;
    let a = lease(&store).await;
    assert_eq!(a.stage.key, "a");
    assert!(store.cancel_run(run.id, "cancelled by ada").await.unwrap());
    assert!(!store.cancel_run(run.id, "twice").await.unwrap());
    let cancelled = store.get_run(run.id).await.unwrap();
    assert_eq!(cancelled.status, RunStatus::Cancelled);
    assert_eq!(cancelled.error.as_deref(), Some("cancelled by ada"));
    assert!(stage(&store, run.id, "a").await.stage.cancel_requested);
    assert_eq!(status_of(&store, run.id, "a").await, StageStatus::Running);
    for key in ["b", "c"] {
        let s = stage(&store, run.id, key).await;
        assert_eq!(s.stage.status, StageStatus::Cancelled, "{key}");
        assert_eq!(s.steps[0].status, StepStatus::Skipped);
    }
    assert!(
        store
            .lease_stage(runner_id(&store, "r1").await, LEASE, &Limits::UNLIMITED)
            .await
            .unwrap()
            .is_none()
    );
    // A cancelled stage is never retried, even with attempts left.
    assert_eq!(
        finish(&store, &a, StageStatus::Failure).await,
        Settled::Finished(StageStatus::Failure)
    );
    assert_eq!(
        store.get_run(run.id).await.unwrap().status,
        RunStatus::Cancelled
    );
    assert!(matches!(
        store.cancel_run(run.id + 1000, "x").await,
        Err(Error::NotFound(_))
    ));

    // A pending (unplanned) run can be cancelled too, and then not planned.
    let r = store.get_repo_by_name("team/app").await.unwrap();
    let pending = store.create_run(r.id, push("main")).await.unwrap();
    assert!(store.cancel_run(pending.id, "no").await.unwrap());
    assert!(matches!(
        store
            .set_run_planned(pending.id, &json!({}), "x", vec![])
            .await,
        Err(Error::Conflict(_))
    ));
}

async fn supersede_cancels_older_runs_of_branch(db: Dialect) {
    let store = TestStore::open(db).await;
    let r = repo(&store, "team/app").await;
    let old_pending = store.create_run(r.id, push("main")).await.unwrap();
    let old_running = store.create_run(r.id, push("main")).await.unwrap();
    store
        .set_run_planned(
            old_running.id,
            &json!({}),
            "x",
            vec![NewStage::new("a", &[], &["x"])],
        )
        .await
        .unwrap();
    let l = lease(&store).await;
    let other_branch = store.create_run(r.id, push("dev")).await.unwrap();
    let mut pr = push("main");
    pr.event = Event::PullRequest;
    let pr = store.create_run(r.id, pr).await.unwrap();
    let finished = store.create_run(r.id, push("main")).await.unwrap();
    store
        .set_run_planned(finished.id, &json!({}), "x", vec![])
        .await
        .unwrap();
    let newest = store.create_run(r.id, push("main")).await.unwrap();
    let later = store.create_run(r.id, push("main")).await.unwrap();

    let cancelled = store
        .supersede(r.id, "main", Event::Push, newest.id)
        .await
        .unwrap();
    assert_eq!(cancelled, vec![old_pending.id, old_running.id]);
    for id in [old_pending.id, old_running.id] {
        let run = store.get_run(id).await.unwrap();
        assert_eq!(run.status, RunStatus::Cancelled);
        assert_eq!(
            run.error,
            Some(format!("superseded by run #{}", newest.number))
        );
    }
    assert_eq!(
        store.heartbeat(l.stage.id, &l.token, LEASE).await.unwrap(),
        Heartbeat::Cancel
    );
    for (run, status) in [
        (other_branch, RunStatus::Pending),
        (pr, RunStatus::Pending),
        (finished, RunStatus::Success),
        (newest.clone(), RunStatus::Pending),
        (later, RunStatus::Pending),
    ] {
        assert_eq!(
            store.get_run(run.id).await.unwrap().status,
            status,
            "run #{}",
            run.number
        );
    }
    assert!(
        store
            .supersede(r.id, "main", Event::Push, newest.id)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn step_bookkeeping(db: Dialect) {
    let store = TestStore::open(db).await;
    let (_, run) = planned(
        &store,
        "team/app",
        vec![NewStage::new("a", &[], &["one", "two", "three"])],
    )
    .await;
    let l = lease(&store).await;
    let (id, token) = (l.stage.id, l.token.as_str());
    let s0 = store.start_step(id, token, 0).await.unwrap();
    assert_eq!((s0.status, s0.name.as_str()), (StepStatus::Running, "one"));
    assert!(s0.started_at.is_some());
    assert!(matches!(
        store.start_step(id, token, 0).await,
        Err(Error::Conflict(_))
    ));
    assert!(matches!(
        store.start_step(id, "stale", 1).await,
        Err(Error::LeaseLost)
    ));
    assert!(matches!(
        store.start_step(id, token, 7).await,
        Err(Error::NotFound(_))
    ));
    store.add_step_log_stats(s0.id, 10, 400).await.unwrap();
    store.add_step_log_stats(s0.id, 5, 100).await.unwrap();
    assert!(matches!(
        store.add_step_log_stats(s0.id + 1000, 1, 1).await,
        Err(Error::NotFound(_))
    ));
    let done = store
        .finish_step(id, token, 0, StepStatus::Success, Some(0), false)
        .await
        .unwrap();
    assert_eq!(
        (done.status, done.exit_code, done.log_lines, done.log_bytes),
        (StepStatus::Success, Some(0), 15, 500)
    );
    assert!(matches!(
        store
            .finish_step(id, token, 0, StepStatus::Failure, Some(1), false)
            .await,
        Err(Error::Conflict(_))
    ));
    assert!(matches!(
        store
            .finish_step(id, token, 1, StepStatus::Running, None, false)
            .await,
        Err(Error::Invalid(_))
    ));
    store.start_step(id, token, 1).await.unwrap();
    let oom = store
        .finish_step(id, token, 1, StepStatus::Failure, Some(137), true)
        .await
        .unwrap();
    assert!(oom.oom_killed);
    assert!(matches!(
        store
            .finish_stage(id, token, StageOutcome::new(StageStatus::Queued))
            .await,
        Err(Error::Invalid(_))
    ));
    finish(&store, &l, StageStatus::Failure).await;
    let s = stage(&store, run.id, "a").await;
    let steps: Vec<_> = s
        .steps
        .iter()
        .map(|s| (s.idx, s.status, s.exit_code))
        .collect();
    assert_eq!(
        steps,
        [
            (0, StepStatus::Success, Some(0)),
            (1, StepStatus::Failure, Some(137)),
            (2, StepStatus::Skipped, None)
        ]
    );
    assert_eq!(store.list_steps(id).await.unwrap(), s.steps);
    assert!(matches!(
        store.start_step(id, token, 2).await,
        Err(Error::LeaseLost)
    ));
}

async fn secrets_crud(db: Dialect) {
    let store = TestStore::open(db).await;
    let a = repo(&store, "team/a").await;
    let b = repo(&store, "team/b").await;
    store
        .put_secret(a.id, "TOKEN", b"enc-1", false)
        .await
        .unwrap();
    store
        .put_secret(a.id, "REGISTRY_AUTH", b"enc-2", true)
        .await
        .unwrap();
    store
        .put_secret(b.id, "TOKEN", b"other", false)
        .await
        .unwrap();
    let before = store.list_secrets(a.id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    store
        .put_secret(a.id, "TOKEN", b"enc-3", true)
        .await
        .unwrap();

    let names: Vec<_> = store.list_secrets(a.id).await.unwrap();
    assert_eq!(
        names.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["REGISTRY_AUTH", "TOKEN"]
    );
    let token = &names[1];
    assert!(token.allow_pull_requests);
    assert_eq!(
        token.created_at, before[1].created_at,
        "upsert keeps created_at"
    );
    assert!(token.updated_at > before[1].updated_at);
    let values = store.get_secret_values_enc(a.id).await.unwrap();
    assert_eq!(
        values[1],
        SecretValue {
            name: "TOKEN".into(),
            value_enc: b"enc-3".to_vec(),
            allow_pull_requests: true
        }
    );
    assert_eq!(
        store.get_secret_values_enc(b.id).await.unwrap()[0].value_enc,
        b"other"
    );

    assert!(store.delete_secret(a.id, "TOKEN").await.unwrap());
    assert!(!store.delete_secret(a.id, "TOKEN").await.unwrap());
    assert_eq!(store.list_secrets(a.id).await.unwrap().len(), 1);
    assert_eq!(store.list_secrets(b.id).await.unwrap().len(), 1);
}

async fn token_lookup(db: Dialect) {
    let store = TestStore::open(db).await;
    let admin = store
        .create_token("ada's laptop", "hash-admin", TokenScope::Admin)
        .await
        .unwrap();
    let runner = store
        .create_token("runner-1", "hash-runner", TokenScope::Runner)
        .await
        .unwrap();
    assert_eq!(admin.last_used_at, None);
    assert!(matches!(
        store
            .create_token("dup", "hash-admin", TokenScope::Hook)
            .await,
        Err(Error::Conflict(_))
    ));
    let found = store
        .find_token_by_hash("hash-runner")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((found.id, found.scope), (runner.id, TokenScope::Runner));
    assert!(found.last_used_at.is_some());
    assert!(
        store
            .find_token_by_hash("hash-nope")
            .await
            .unwrap()
            .is_none()
    );
    let list = store.list_tokens().await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0], admin);
    assert_eq!(list[1].last_used_at, found.last_used_at);
    assert!(store.delete_token(admin.id).await.unwrap());
    assert!(!store.delete_token(admin.id).await.unwrap());
    assert!(
        store
            .find_token_by_hash("hash-admin")
            .await
            .unwrap()
            .is_none()
    );
}

async fn cron_claims_once(db: Dialect) {
    let store = TestStore::open(db).await;
    let r = repo(&store, "team/app").await;
    let at = 1_700_000_000_000;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.claim_cron(r.id, "ci", "nightly", at).await.unwrap() })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        wins += usize::from(t.await.unwrap());
    }
    assert_eq!(wins, 1);
    assert!(!store.claim_cron(r.id, "ci", "nightly", at).await.unwrap());
    assert!(
        !store
            .claim_cron(r.id, "ci", "nightly", at - 60_000)
            .await
            .unwrap()
    );
    assert!(
        store.claim_cron(r.id, "ci", "hourly", at).await.unwrap(),
        "another schedule"
    );
    assert!(
        store
            .claim_cron(r.id, "ci", "nightly", at + 86_400_000)
            .await
            .unwrap()
    );
    assert_eq!(
        store.cron_last_fired(r.id, "ci", "nightly").await.unwrap(),
        Some(at + 86_400_000)
    );
    assert_eq!(
        store.cron_last_fired(r.id, "ci", "weekly").await.unwrap(),
        None
    );
}

async fn runners_register(db: Dialect) {
    let store = TestStore::open(db).await;
    let a = store
        .register_runner("host-a", &["linux".into()], 2, &RepoScope::All)
        .await
        .unwrap();
    assert_eq!(
        (a.labels.clone(), a.capacity),
        (vec!["linux".to_string()], 2)
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    let again = store
        .register_runner(
            "host-a",
            &["linux".into(), "docker".into()],
            4,
            &RepoScope::All,
        )
        .await
        .unwrap();
    assert_eq!(again.id, a.id);
    assert_eq!(again.capacity, 4);
    assert_eq!(again.labels, ["linux", "docker"]);
    assert!(again.last_seen_at > a.last_seen_at);
    assert_eq!(again.created_at, a.created_at);
    store
        .register_runner("host-b", &[], 1, &RepoScope::All)
        .await
        .unwrap();
    store.touch_runner(a.id).await.unwrap();
    assert!(matches!(
        store.touch_runner(a.id + 100).await,
        Err(Error::NotFound(_))
    ));
    let names: Vec<_> = store
        .list_runners()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["host-a", "host-b"]);
}

async fn events_record_the_life_of_a_run(db: Dialect) {
    let store = TestStore::open(db).await;
    let (_, run) = planned(
        &store,
        "team/app",
        vec![
            NewStage::new("a", &[], &["x"]),
            NewStage::new("b", &["a"], &["x"]),
        ],
    )
    .await;
    let a = lease(&store).await;
    finish(&store, &a, StageStatus::Success).await;
    let b = lease(&store).await;
    finish(&store, &b, StageStatus::Success).await;
    let events = store.events_after(0, Some(run.id), 100).await.unwrap();
    assert!(events.windows(2).all(|w| w[0].id < w[1].id));
    let seen: Vec<(Option<StageId>, &str)> = events
        .iter()
        .map(|e| (e.stage_id, e.status.as_str()))
        .collect();
    let (sa, sb) = (Some(a.stage.id), Some(b.stage.id));
    assert_eq!(
        seen,
        [
            (None, "pending"),
            (None, "running"),
            (sa, "queued"),
            (sb, "waiting"),
            (sa, "running"),
            (sa, "success"),
            (sb, "queued"),
            (sb, "running"),
            (sb, "success"),
            (None, "success"),
        ]
    );
    let tail = store.events_after(events[7].id, None, 100).await.unwrap();
    assert_eq!(tail, events[8..]);
    assert_eq!(
        store.events_after(0, Some(run.id), 2).await.unwrap(),
        events[..2]
    );
}

async fn reconcile_is_idempotent(db: Dialect) {
    let store = TestStore::open(db).await;
    let (_, run) = planned(
        &store,
        "team/app",
        vec![
            NewStage::new("a", &[], &["x"]),
            NewStage::new("b", &["a"], &["x"]),
        ],
    )
    .await;
    let before = store.list_stages(run.id).await.unwrap();
    let events = store.events_after(0, None, 1000).await.unwrap().len();
    assert_eq!(store.reconcile_run(run.id).await.unwrap(), run);
    assert_eq!(store.reconcile_run(run.id).await.unwrap(), run);
    assert_eq!(store.list_stages(run.id).await.unwrap(), before);
    assert_eq!(
        store.events_after(0, None, 1000).await.unwrap().len(),
        events
    );
    assert_eq!(store.active_runs().await.unwrap(), vec![run.clone()]);

    let a = lease(&store).await;
    finish(&store, &a, StageStatus::Failure).await;
    let done = store.get_run(run.id).await.unwrap();
    assert_eq!(done.status, RunStatus::Failure);
    assert_eq!(store.reconcile_run(run.id).await.unwrap(), done);
    assert_eq!(store.reconcile_run(run.id).await.unwrap(), done);
    assert!(store.active_runs().await.unwrap().is_empty());
    assert!(matches!(
        store.reconcile_run(run.id + 1000).await,
        Err(Error::NotFound(_))
    ));
}

/// Exactly one `finish_stage_report` ends a run, and it says how; finishing any other
/// stage, or re-queuing one, says nothing.
async fn finish_report_names_the_call_that_ends_the_run(db: Dialect) {
    let store = TestStore::open(db).await;
    let (_, run) = planned(
        &store,
        "team/app",
        vec![
            NewStage::new("a", &[], &["one"]),
            NewStage::new("b", &[], &["two"]),
        ],
    )
    .await;
    let a = lease(&store).await;
    let b = lease(&store).await;
    let report = store
        .finish_stage_report(
            a.stage.id,
            &a.token,
            StageOutcome::new(StageStatus::Success),
        )
        .await
        .unwrap();
    assert_eq!(report.settled, Settled::Finished(StageStatus::Success));
    assert_eq!(report.run_finished, None, "b is still running");
    let report = store
        .finish_stage_report(
            b.stage.id,
            &b.token,
            StageOutcome::new(StageStatus::Failure),
        )
        .await
        .unwrap();
    assert_eq!(report.settled, Settled::Finished(StageStatus::Failure));
    assert_eq!(report.run_finished, Some(RunStatus::Failure));
    assert_eq!(
        store.get_run(run.id).await.unwrap().status,
        RunStatus::Failure
    );
}

fn finding(
    rule: &str,
    severity: runner::Severity,
    path: Option<&str>,
    line: Option<u32>,
) -> runner::Finding {
    runner::Finding {
        tool: "slipway-secrets".into(),
        rule: rule.into(),
        severity,
        path: path.map(str::to_string),
        line,
        message: format!("{rule} found"),
    }
}

fn image_results(tag: &str, digest_byte: char, findings: Vec<runner::Finding>) -> StageResults {
    StageResults {
        outputs: [
            (
                OUTPUT_IMAGE.to_string(),
                format!("127.0.0.1:5000/team/app:{tag}"),
            ),
            (
                OUTPUT_DIGEST.to_string(),
                format!("sha256:{}", digest_byte.to_string().repeat(64)),
            ),
        ]
        .into(),
        findings,
    }
}

async fn stage_results_are_stored_with_the_finish_and_replaced_by_a_retry(db: Dialect) {
    let store = TestStore::open(db).await;
    use runner::Severity::*;
    let mut build = retried(1, &[], "build", 2);
    build.spec = json!({"stage": "build"});
    let mut other = NewStage::new("other", &["build"], &["s"]);
    other.spec = json!({"stage": "other"});
    let (_, run) = planned(&store, "team/results", vec![build, other]).await;
    let l = lease(&store).await;
    assert_eq!(l.stage.key, "build");

    // Results that cannot be stored: nothing is written, the stage is still leased.
    let mut bad = image_results("1", 'a', vec![finding("x", High, None, None)]);
    bad.outputs
        .insert(OUTPUT_DIGEST.into(), "sha256:nope".into());
    let err = store
        .finish_stage_with(
            l.stage.id,
            &l.token,
            StageOutcome::new(StageStatus::Success),
            &bad,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    assert_eq!(
        status_of(&store, run.id, "build").await,
        StageStatus::Running
    );
    assert!(store.list_findings(run.id).await.unwrap().is_empty());
    assert!(store.run_outputs(run.id).await.unwrap().is_empty());

    // Attempt 1 fails with results: they are stored with the finish.
    let first = image_results(
        "1",
        'a',
        vec![
            finding("github-token", High, Some("src/config.rs"), Some(3)),
            finding("high-entropy-string", Medium, Some("a.txt"), Some(1)),
        ],
    );
    let settled = store
        .finish_stage_with(
            l.stage.id,
            &l.token,
            StageOutcome::new(StageStatus::Failure),
            &first,
        )
        .await
        .unwrap()
        .settled;
    assert_eq!(settled, Settled::Retrying { attempt: 2 });
    let found = store.list_findings(run.id).await.unwrap();
    let view: Vec<_> = found
        .iter()
        .map(|f| {
            (
                f.stage_key.as_str(),
                f.rule.as_str(),
                f.severity,
                f.path.as_deref(),
                f.line,
            )
        })
        .collect();
    assert_eq!(
        view,
        [
            (
                "build",
                "github-token",
                High,
                Some("src/config.rs"),
                Some(3)
            ),
            (
                "build",
                "high-entropy-string",
                Medium,
                Some("a.txt"),
                Some(1)
            ),
        ]
    );
    assert_eq!(found[0].message, "github-token found");
    assert_eq!(found[0].tool, "slipway-secrets");
    assert_eq!(found[0].run_id, run.id);
    let images = store.list_images(run.id).await.unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].reference, "127.0.0.1:5000/team/app:1");
    assert_eq!(images[0].digest, format!("sha256:{}", "a".repeat(64)));

    // Attempt 2 replaces them: its own findings, outputs and image, nothing of attempt 1.
    let l2 = lease(&store).await;
    assert_eq!((l2.stage.key.as_str(), l2.stage.attempt), ("build", 2));
    let second = image_results("2", 'b', vec![finding("B608", Critical, None, None)]);
    store
        .finish_stage_with(
            l2.stage.id,
            &l2.token,
            StageOutcome::new(StageStatus::Success),
            &second,
        )
        .await
        .unwrap();
    let found = store.list_findings(run.id).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0].rule.as_str(), found[0].severity),
        ("B608", Critical)
    );
    assert_eq!((found[0].path.as_deref(), found[0].line), (None, None));
    let outputs = store.run_outputs(run.id).await.unwrap();
    let view: Vec<_> = outputs
        .iter()
        .map(|o| {
            (
                o.stage_key.as_str(),
                o.stage_name.as_deref(),
                o.name.as_str(),
                o.value.as_str(),
            )
        })
        .collect();
    let digest_b = format!("sha256:{}", "b".repeat(64));
    assert_eq!(
        view,
        [
            ("build", Some("build"), "digest", digest_b.as_str()),
            ("build", Some("build"), "image", "127.0.0.1:5000/team/app:2"),
        ]
    );
    let images = store.list_images(run.id).await.unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(
        (images[0].reference.as_str(), images[0].digest.as_str()),
        ("127.0.0.1:5000/team/app:2", digest_b.as_str())
    );
    // The run detail shows each stage's outputs.
    let s = stage(&store, run.id, "build").await;
    assert_eq!(s.outputs.get("digest"), Some(&digest_b));
    assert!(stage(&store, run.id, "other").await.outputs.is_empty());

    // A plain finish stores nothing for its stage.
    let l3 = lease(&store).await;
    assert_eq!(l3.stage.key, "other");
    finish(&store, &l3, StageStatus::Success).await;
    assert_eq!(store.list_findings(run.id).await.unwrap().len(), 1);
    assert_eq!(store.run_outputs(run.id).await.unwrap().len(), 2);
    assert_eq!(
        store.get_run(run.id).await.unwrap().status,
        RunStatus::Success
    );
}

fn labelled(key: &str, labels: &[&str]) -> NewStage {
    let mut s = NewStage::new(key, &[], &["x"]);
    s.labels = labels.iter().map(|l| l.to_string()).collect();
    s
}

async fn registered(store: &Store, name: &str, labels: &[&str], capacity: u32) -> RunnerId {
    let labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
    store
        .register_runner(name, &labels, capacity, &RepoScope::All)
        .await
        .unwrap()
        .id
}

async fn lease_key(store: &Store, runner: RunnerId) -> Option<String> {
    store
        .lease_stage(runner, LEASE, &Limits::UNLIMITED)
        .await
        .unwrap()
        .map(|l| {
            assert_eq!(l.stage.runner_id, Some(runner));
            l.stage.key
        })
}

async fn labels_route_stages_to_runners(db: Dialect) {
    let store = TestStore::open(db).await;
    // Queue order: the unlabelled stage is the newest, so a runner that can only take
    // it must skip the older ones rather than stop at the head of the queue.
    let (_, run) = planned(
        &store,
        "team/app",
        vec![
            labelled("gpu", &["gpu"]),
            labelled("gpu-linux", &["gpu", "linux"]),
            labelled("docker", &["backend:docker"]),
            labelled("any", &[]),
        ],
    )
    .await;
    assert_eq!(
        stage(&store, run.id, "gpu-linux").await.stage.labels,
        ["gpu", "linux"]
    );
    let queued = store.queued_stage_labels(100).await.unwrap();
    let seen: Vec<(&str, usize)> = queued
        .iter()
        .map(|q| (q.key.as_str(), q.labels.len()))
        .collect();
    assert_eq!(
        seen,
        [("gpu", 1), ("gpu-linux", 2), ("docker", 1), ("any", 0)]
    );
    assert!(queued.iter().all(|q| q.run_id == run.id));

    assert!(matches!(
        store.lease_stage(12_345, LEASE, &Limits::UNLIMITED).await,
        Err(Error::NotFound(_))
    ));
    // A label is matched whole: `gpu-large` is not `gpu`.
    let large = registered(&store, "large", &["gpu-large", "backend:local"], 5).await;
    let plain = registered(&store, "plain", &["backend:local"], 5).await;
    let gpu = registered(&store, "gpu", &["gpu", "backend:local"], 5).await;
    let big = registered(&store, "big", &["linux", "gpu", "backend:docker"], 5).await;
    assert_eq!(lease_key(&store, large).await.as_deref(), Some("any"));
    assert_eq!(lease_key(&store, large).await, None);
    assert_eq!(lease_key(&store, plain).await, None);
    assert_eq!(lease_key(&store, gpu).await.as_deref(), Some("gpu"));
    assert_eq!(
        lease_key(&store, gpu).await,
        None,
        "gpu-linux needs linux too"
    );
    // Registering again with more labels counts from the next lease on.
    let again = registered(&store, "gpu", &["gpu", "linux", "backend:local"], 5).await;
    assert_eq!(again, gpu);
    assert_eq!(lease_key(&store, gpu).await.as_deref(), Some("gpu-linux"));
    assert_eq!(lease_key(&store, gpu).await, None);
    assert_eq!(lease_key(&store, big).await.as_deref(), Some("docker"));
    assert_eq!(lease_key(&store, big).await, None);
    assert!(store.queued_stage_labels(100).await.unwrap().is_empty());
}

async fn runner_capacity_holds_under_concurrency(db: Dialect) {
    let store = TestStore::open(db).await;
    let stages = (0..6)
        .map(|i| NewStage::new(&format!("s{i}"), &[], &["x"]))
        .collect();
    planned(&store, "team/app", stages).await;
    let small = registered(&store, "small", &["backend:local"], 2).await;
    // Many lease requests of one runner at once (e.g. a runner whose slots outnumber
    // its registered capacity) never get it more than its capacity.
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .lease_stage(small, LEASE, &Limits::UNLIMITED)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut leases = Vec::new();
    for t in tasks {
        leases.extend(t.await.unwrap());
    }
    assert_eq!(leases.len(), 2, "capacity 2");
    // Other runners are not held back by it.
    let other = registered(&store, "other", &["backend:local"], 3).await;
    for _ in 0..3 {
        assert!(lease_key(&store, other).await.is_some());
    }
    assert_eq!(lease_key(&store, other).await, None, "capacity 3");
    let running = store.running_per_runner().await.unwrap();
    assert_eq!(
        (running.get(&small), running.get(&other), running.len()),
        (Some(&2), Some(&3), 2)
    );
    // A finished stage frees a slot; a retried one too (it is queued again).
    finish(&store, &leases[0], StageStatus::Success).await;
    let third = store
        .lease_stage(small, LEASE, &Limits::UNLIMITED)
        .await
        .unwrap()
        .expect("a slot freed");
    assert_eq!(lease_key(&store, small).await, None);
    // A larger capacity counts from the next lease on: a third stage at once.
    registered(&store, "small", &["backend:local"], 3).await;
    let (_, run) = planned(
        &store,
        "team/app",
        vec![
            NewStage::new("late", &[], &["x"]),
            NewStage::new("later", &[], &["x"]),
        ],
    )
    .await;
    assert_eq!(lease_key(&store, small).await.as_deref(), Some("late"));
    assert_eq!(
        lease_key(&store, small).await,
        None,
        "capacity 3, with 3 running"
    );
    finish(&store, &third, StageStatus::Success).await;
    assert_eq!(lease_key(&store, small).await.as_deref(), Some("later"));
    assert_eq!(
        status_of(&store, run.id, "late").await,
        StageStatus::Running
    );
    assert_eq!(
        status_of(&store, run.id, "later").await,
        StageStatus::Running
    );
}

/// A runner leases only stages of repositories in its scope; the queue skips the
/// others however old they are.
async fn repo_scopes_route_stages_to_runners(db: Dialect) {
    let store = TestStore::open(db).await;
    let (_, acme) = planned(&store, "acme/web", vec![labelled("a", &[])]).await;
    // `team` is a prefix of `teammate`: an owner matches whole.
    let (_, mate) = planned(&store, "teammate/x", vec![labelled("m", &[])]).await;
    let (_, team) = planned(&store, "team/app", vec![labelled("t", &[])]).await;
    let scoped = |name: &'static str, scope: RepoScope| {
        let store = &store;
        async move { store.register_runner(name, &[], 5, &scope).await.unwrap() }
    };
    let team_runner = scoped("team", RepoScope::Owner("team".into())).await;
    assert_eq!(team_runner.repos, RepoScope::Owner("team".into()));
    let named = scoped("named", RepoScope::Repos(vec!["teammate/x".into()])).await;
    let queued = store.queued_stage_labels(10).await.unwrap();
    let repos: Vec<&str> = queued.iter().map(|q| q.repo.as_str()).collect();
    assert_eq!(repos, ["acme/web", "teammate/x", "team/app"]);

    assert_eq!(
        lease_key(&store, team_runner.id).await.as_deref(),
        Some("t")
    );
    assert_eq!(lease_key(&store, team_runner.id).await, None);
    assert_eq!(lease_key(&store, named.id).await.as_deref(), Some("m"));
    assert_eq!(lease_key(&store, named.id).await, None);
    assert_eq!(status_of(&store, acme.id, "a").await, StageStatus::Queued);
    // Registering again under the same name takes the new scope.
    let all = scoped("named", RepoScope::All).await;
    assert_eq!(all.id, named.id);
    assert_eq!(lease_key(&store, all.id).await.as_deref(), Some("a"));
    for run in [team.id, mate.id] {
        assert!(
            store
                .list_stages(run)
                .await
                .unwrap()
                .iter()
                .all(|s| s.stage.status == StageStatus::Running)
        );
    }
}

/// Two admins demoted at the same moment, each the other's "another admin": one change
/// must be refused, or nobody could manage people any more. On PostgreSQL the two
/// transactions run side by side (READ COMMITTED), so only a lock makes the second see
/// the first.
async fn the_last_two_admins_demoted_at_once_leave_one(db: Dialect) {
    let store = TestStore::open(db).await;
    let admin = Some((Role::Admin, None));
    let a = store.create_user("test", "a", "x", admin).await.unwrap();
    let b = store.create_user("test", "b", "x", admin).await.unwrap();
    for round in 0..20 {
        let (ra, rb) = tokio::join!(
            store.set_role("test", &a, None, None),
            store.set_role("test", &b, None, None),
        );
        let refused = [&ra, &rb]
            .iter()
            .filter(|r| matches!(r, Err(Error::Conflict(m)) if m.contains("last enabled admin")))
            .count();
        assert!(
            ra.is_ok() != rb.is_ok() && refused == 1,
            "round {round}: exactly one demotion may pass: {ra:?} / {rb:?}"
        );
        let demoted = if ra.is_ok() { &a } else { &b };
        store
            .set_role("test", demoted, None, Some(Role::Admin))
            .await
            .unwrap();
    }
}
