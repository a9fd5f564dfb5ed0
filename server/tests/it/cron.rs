//! The cron worker, with time injected: schedules read from the default branch of a real
//! repository fire once per due instant, never for instants before they were first
//! seen, and at most once for a stretch of downtime.

use chrono::{DateTime, TimeZone, Utc};
use server::store::{self, Event, RunStatus, Trigger};
use server::workers::cron::Cron;
use server::workers::planner;

use crate::support::forge::{PIPELINE, register, runs};
use crate::support::git::GitRepo;
use crate::support::test_server::TestServer;

fn t(day: u32, h: u32, m: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, day, h, m, s).unwrap()
}

const NIGHTLY: &str = "name: nightly
on:
  push: {}
  cron: { nightly: \"0 3 * * *\" }
stages:
  long-tests:
    when: { event: cron }
    steps: [\"make long-tests\"]
  quick:
    steps: [\"make quick\"]
";

const OTHER: &str = "name: other
on:
  cron: { nightly: \"0 3 * * *\" }
stages:
  other:
    steps: [\"true\"]
";

#[tokio::test]
async fn a_due_schedule_fires_once_and_is_planned() {
    let env = TestServer::builder().build().await;
    let state = &env.state;
    let mut git = GitRepo::bare();
    let files = [(".slipway/nightly.yml", NIGHTLY), ("README", "x")];
    let head = git.commit("refs/heads/main", &[], &files, "init");
    let repo = register(
        state,
        "o/r",
        store::ForgeKind::Github,
        &git.url(),
        "main",
        true,
    )
    .await;
    let mut cron = Cron::default();

    // First sight at midnight: registered, nothing fires (not even yesterday's 03:00).
    assert!(cron.tick(state, t(1, 0, 0, 0)).await.unwrap().is_empty());
    assert_eq!(
        state
            .store
            .cron_last_fired(repo.id, "nightly", "nightly")
            .await
            .unwrap(),
        Some(t(1, 0, 0, 0).timestamp_millis())
    );
    // Before 03:00: nothing.
    assert!(cron.tick(state, t(1, 2, 59, 59)).await.unwrap().is_empty());

    // The main branch moves before the schedule fires; the run builds the new head.
    let head2 = git.commit(
        "refs/heads/main",
        &[head],
        &[(".slipway/nightly.yml", NIGHTLY), ("README", "y")],
        "more",
    );
    let fired = cron.tick(state, t(1, 3, 0, 7)).await.unwrap();
    assert_eq!(fired.len(), 1);
    let run = &fired[0];
    assert_eq!((run.trigger, run.event), (Trigger::Cron, Event::Cron));
    assert_eq!(run.git_ref, "refs/heads/main");
    assert_eq!(run.branch.as_deref(), Some("main"));
    assert_eq!(run.sha, head2.to_string());
    assert_eq!(run.params["__cron"], "nightly");
    assert_eq!(run.params["__pipeline"], "nightly");

    // The same instant never fires twice, from this worker or a second replica.
    assert!(cron.tick(state, t(1, 3, 0, 22)).await.unwrap().is_empty());
    assert!(
        Cron::default()
            .tick(state, t(1, 3, 0, 40))
            .await
            .unwrap()
            .is_empty()
    );

    // The planner plans it like any run: the cron-only stage runs.
    planner::plan_pending(state).await.unwrap();
    let planned = state.store.get_run(run.id).await.unwrap();
    assert_eq!(planned.status, RunStatus::Running, "{:?}", planned.error);
    let plan = planned.plan.unwrap();
    assert_eq!(plan[0]["event"]["cron"], "nightly");
    assert_eq!(plan[0]["event"]["params"], serde_json::json!({}));
    let mut keys: Vec<String> = state
        .store
        .list_stages(run.id)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.stage.key)
        .collect();
    keys.sort();
    assert_eq!(keys, ["long-tests", "quick"]);
}

#[tokio::test]
async fn downtime_fires_only_the_latest_missed_instant() {
    let env = TestServer::builder().build().await;
    let state = &env.state;
    let mut git = GitRepo::bare();
    git.commit(
        "refs/heads/main",
        &[],
        &[(".slipway/nightly.yml", NIGHTLY)],
        "init",
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
    let mut cron = Cron::default();
    assert!(cron.tick(state, t(1, 12, 0, 0)).await.unwrap().is_empty());
    // Down from the 1st at noon to the 5th at noon: four 03:00s were missed, one fires.
    let mut restarted = Cron::default();
    let fired = restarted.tick(state, t(5, 12, 0, 0)).await.unwrap();
    assert_eq!(fired.len(), 1);
    assert_eq!(
        state
            .store
            .cron_last_fired(repo.id, "nightly", "nightly")
            .await
            .unwrap(),
        Some(t(5, 3, 0, 0).timestamp_millis())
    );
    assert!(
        restarted
            .tick(state, t(5, 12, 0, 15))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(runs(state, &repo).await.len(), 1);
}

#[tokio::test]
async fn a_schedule_belongs_to_its_pipeline() {
    let env = TestServer::builder().build().await;
    let state = &env.state;
    let mut git = GitRepo::bare();
    git.commit(
        "refs/heads/main",
        &[],
        &[
            (".slipway/nightly.yml", NIGHTLY),
            (".slipway/other.yml", OTHER),
        ],
        "init",
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
    let mut cron = Cron::default();
    cron.tick(state, t(1, 0, 0, 0)).await.unwrap();
    let fired = cron.tick(state, t(1, 3, 0, 0)).await.unwrap();
    // Two pipelines each with a `nightly` schedule: two runs, one per pipeline.
    assert_eq!(fired.len(), 2);
    planner::plan_pending(state).await.unwrap();
    for run in &fired {
        let stages = state.store.list_stages(run.id).await.unwrap();
        let pipelines: std::collections::BTreeSet<String> =
            stages.iter().map(|s| s.stage.pipeline.clone()).collect();
        assert_eq!(
            pipelines.len(),
            1,
            "one pipeline per cron run: {pipelines:?}"
        );
        assert_eq!(
            pipelines.into_iter().next().unwrap(),
            run.params["__pipeline"].as_str().unwrap()
        );
    }
    assert_eq!(runs(state, &repo).await.len(), 2);
}

#[tokio::test]
async fn repositories_without_schedules_or_branch_fire_nothing() {
    let env = TestServer::builder().build().await;
    let state = &env.state;
    let mut git = GitRepo::bare();
    git.commit(
        "refs/heads/main",
        &[],
        &[(".slipway.yml", PIPELINE)],
        "init",
    );
    let plain = register(
        state,
        "o/plain",
        store::ForgeKind::Github,
        &git.url(),
        "main",
        true,
    )
    .await;
    let empty = GitRepo::bare();
    let nobranch = register(
        state,
        "o/empty",
        store::ForgeKind::Github,
        &empty.url(),
        "main",
        true,
    )
    .await;
    let unreachable = register(
        state,
        "o/down",
        store::ForgeKind::Github,
        "http://127.0.0.1:9/x.git",
        "main",
        true,
    )
    .await;
    let mut cron = Cron::default();
    for h in [0, 3, 4] {
        assert!(cron.tick(state, t(1, h, 0, 0)).await.unwrap().is_empty());
    }
    for r in [&plain, &nobranch, &unreachable] {
        assert!(runs(state, r).await.is_empty());
    }
}
