//! The runner protocol end to end: a real server on 127.0.0.1:0 with SQLite, a real git
//! repository, runs planned from YAML, executed by the in-process runner or by the real
//! `slipway runner` binary.
//!
//! Long on purpose: one test per behaviour of this area, each written out end to end;
//! the set-up they share is in `support/`.

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use server::protocol::*;
use server::store::*;

use crate::support::both_databases;
use crate::support::process::{self, Killed, slipway, wait_exit};
use crate::support::test_server::TestServer;

/// The real `slipway runner`, with its token in the environment.
fn spawn_runner(server: &TestServer, token: &str, name: &str, extra: &[&str]) -> Killed {
    let work = server.dir.path().join(format!("runner-{name}"));
    let mut cmd = process::runner(&server.url(), name, &work, token);
    cmd.args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit());
    Killed::spawn(&mut cmd)
}

const FILES: &[(&str, &str)] = &[
    ("README.md", "hello from the repository\n"),
    ("scripts/greet.sh", "#!/bin/sh\necho \"greetings, $1\"\n"),
];

// ---------------------------------------------------------------- tests

both_databases!(
    in_process_runner_runs_a_pipeline,
    secrets_are_injected_masked_and_withheld_from_forks,
    stage_results_are_stored_and_outputs_reach_later_stages,
);

async fn in_process_runner_runs_a_pipeline(db: Dialect) {
    let server = TestServer::builder().on(db).heartbeat_secs(3).start().await;
    let (repo, sha) = server.repo(FILES).await;
    let yaml = "\
stages:
  build:
    steps:
      - name: source
        run: |
          cat README.md
          sh scripts/greet.sh world
      - name: count
        run: |
          for i in 1 2 3; do echo \"line $i\"; done
          echo oops >&2
  test:
    needs: [build]
    steps:
      - name: check
        run: echo tested
";
    let run = server.run(&repo, &sha, yaml, false).await;
    let run = server.wait_run(run.id, Duration::from_secs(60)).await;
    assert_eq!(
        run.status,
        RunStatus::Success,
        "{}",
        server.dump(run.id).await
    );

    let build = server.stage(run.id, "build").await;
    assert_eq!(build.stage.status, StageStatus::Success);
    assert_eq!(build.stage.attempt, 1);
    for step in &build.steps {
        assert_eq!(step.status, StepStatus::Success);
        assert_eq!(step.exit_code, Some(0));
        assert!(step.started_at.is_some() && step.finished_at.is_some());
    }
    assert_eq!(
        server.log_lines(&build.stage, 0),
        ["hello from the repository", "greetings, world"]
    );
    let count = server
        .state
        .logs
        .read(TestServer::key(&build.stage, 1), 1, 100)
        .unwrap();
    // Two pipes: the order between stdout and stderr lines is not defined.
    let of = |stream| {
        count
            .iter()
            .filter(|l| l.stream == stream)
            .map(|l| String::from_utf8_lossy(&l.bytes).into_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        of(server::logs::Stream::Stdout),
        ["line 1", "line 2", "line 3"]
    );
    assert_eq!(of(server::logs::Stream::Stderr), ["oops"]);
    assert_eq!(
        count.iter().map(|l| l.number).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    // The counters in the database agree with what is on disk.
    assert_eq!(build.steps[1].log_lines, 4);
    assert_eq!(build.steps[1].log_bytes, 4 * 7 - 2);
    let test = server.stage(run.id, "test").await;
    assert_eq!(test.stage.status, StageStatus::Success);
    assert_eq!(server.log_lines(&test.stage, 0), ["tested"]);
    // Followers are told the logs are complete.
    let progress = server
        .state
        .logs
        .subscribe(TestServer::key(&test.stage, 0))
        .unwrap();
    assert!(progress.borrow().done);
    // The in-process runner registered under its own name.
    let runners = server.state.store.list_runners().await.unwrap();
    assert!(
        runners
            .iter()
            .any(|r| r.name.starts_with("in-process runner")),
        "{runners:?}"
    );
    server.stop().await;
}

const SECRET: &str = "hunter2-s3cr3t-Value";

async fn secrets_are_injected_masked_and_withheld_from_forks(db: Dialect) {
    let server = TestServer::builder().on(db).heartbeat_secs(3).start().await;
    let (repo, sha) = server.repo(FILES).await;
    server.secret(&repo, "API_TOKEN", SECRET, false).await;
    server
        .secret(&repo, "PR_OK", "pr-visible-value", true)
        .await;
    server
        .secret(&repo, "UNUSED", "never-sent-value", false)
        .await;
    let yaml = "\
on: { push: {}, pull_request: {} }
stages:
  use:
    env:
      PR_VALUE: ${{ secrets.PR_OK }}
    steps:
      - name: leak
        env:
          TOKEN: ${{ secrets.API_TOKEN }}
        run: |
          if [ -n \"${TOKEN:-}\" ]; then echo has-secret; else echo no-secret; fi
          if [ \"${TOKEN:-}\" = 'hunter2-s3cr3t-Value' ]; then echo injected-ok; fi
          echo \"raw: $TOKEN\"
          printf '%s' \"$TOKEN\" | base64
          printf 'split: %s' \"$(printf '%s' \"$TOKEN\" | cut -c1-7)\"
          sleep 0.3
          printf '%s\\n' \"$(printf '%s' \"$TOKEN\" | cut -c8-)\"
          echo \"pr: $PR_VALUE\"
          env | grep -c never-sent-value || true
";
    let run = server.run(&repo, &sha, yaml, false).await;
    let run = server.wait_run(run.id, Duration::from_secs(60)).await;
    assert_eq!(
        run.status,
        RunStatus::Success,
        "{}",
        server.dump(run.id).await
    );
    let stage = server.stage(run.id, "use").await;
    let text = server.log_text(&stage.stage, 0);
    assert!(text.contains("has-secret"), "{text}");
    assert!(text.contains("injected-ok"), "{text}");
    assert!(text.contains("raw: "), "{text}");
    assert!(text.contains("split: "), "{text}");
    assert!(
        text.contains("\n0"),
        "an unreferenced secret reached the step: {text}"
    );

    let fork = server.run(&repo, &sha, yaml, true).await;
    let fork = server.wait_run(fork.id, Duration::from_secs(60)).await;
    assert_eq!(
        fork.status,
        RunStatus::Success,
        "{}",
        server.dump(fork.id).await
    );
    let stage = server.stage(fork.id, "use").await;
    let text = server.log_text(&stage.stage, 0);
    assert!(text.contains("no-secret"), "a fork saw a secret: {text}");
    assert!(!text.contains("injected-ok"), "{text}");
    // A secret marked for pull requests is still given (and masked).
    assert!(text.contains("pr: "), "{text}");

    // Nothing stored on disk holds a secret, raw or base64, whole or split.
    let stored = server.all_log_bytes();
    let stored = String::from_utf8_lossy(&stored);
    let b64 = base64::engine::general_purpose::STANDARD.encode(SECRET);
    for needle in [
        SECRET,
        b64.trim_end_matches('='),
        "pr-visible-value",
        "s3cr3t",
    ] {
        assert!(
            !stored.contains(needle),
            "{needle:?} is in the stored logs:\n{stored}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_undefined_secret_fails_the_stage_with_a_reason() {
    let server = TestServer::builder().heartbeat_secs(3).start().await;
    let (repo, sha) = server.repo(FILES).await;
    let yaml = "\
stages:
  deploy:
    steps:
      - run: echo \"${{ secrets.NOPE }}\"
  after:
    needs: [deploy]
    steps:
      - run: echo never
";
    let run = server.run(&repo, &sha, yaml, false).await;
    let run = server.wait_run(run.id, Duration::from_secs(60)).await;
    assert_eq!(run.status, RunStatus::Failure);
    let deploy = server.stage(run.id, "deploy").await;
    assert_eq!(deploy.stage.status, StageStatus::Failure);
    assert_eq!(
        deploy.stage.reason.as_deref(),
        Some("secret `NOPE` is not defined for this repository")
    );
    assert_eq!(deploy.steps[0].status, StepStatus::Skipped);
    assert_eq!(
        server.stage(run.id, "after").await.stage.status,
        StageStatus::Skipped
    );
    server.stop().await;
}

/// The planner never plans a service account into an untrusted run
/// (`tests/planner.rs`); a stage that got there anyway (here: planned directly, as a
/// fork's pull request) is refused when leased, before any pod could be asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_service_account_stage_of_an_untrusted_run_is_refused_at_lease() {
    let server = TestServer::builder().heartbeat_secs(3).start().await;
    let (repo, sha) = server.repo(FILES).await;
    let yaml = "\
stages:
  deploy:
    kubernetes: { service_account: deployer }
    steps:
      - run: echo never
";
    let run = server.run(&repo, &sha, yaml, true).await;
    assert!(!run.trusted);
    let run = server.wait_run(run.id, Duration::from_secs(60)).await;
    assert_eq!(run.status, RunStatus::Failure);
    let deploy = server.stage(run.id, "deploy").await;
    assert_eq!(deploy.stage.status, StageStatus::Failure);
    assert_eq!(
        deploy.stage.reason.as_deref(),
        Some("the stage asks for service account `deployer`, but the run is not trusted")
    );
    assert_eq!(deploy.steps[0].status, StepStatus::Skipped);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_step_fails_the_stage_and_skips_dependents() {
    let server = TestServer::builder().heartbeat_secs(3).start().await;
    let (repo, sha) = server.repo(FILES).await;
    let yaml = "\
stages:
  build:
    steps:
      - name: ok
        run: echo fine
      - name: broken
        run: |
          echo about to fail
          exit 3
      - name: never
        run: echo unreachable
  test:
    needs: [build]
    steps:
      - run: echo unreachable
";
    let run = server.run(&repo, &sha, yaml, false).await;
    let run = server.wait_run(run.id, Duration::from_secs(60)).await;
    assert_eq!(
        run.status,
        RunStatus::Failure,
        "{}",
        server.dump(run.id).await
    );
    let build = server.stage(run.id, "build").await;
    assert_eq!(build.stage.status, StageStatus::Failure);
    assert_eq!(
        build.stage.reason.as_deref(),
        Some("step `broken` exited with code 3")
    );
    let steps: Vec<_> = build
        .steps
        .iter()
        .map(|s| (s.status, s.exit_code))
        .collect();
    assert_eq!(
        steps,
        [
            (StepStatus::Success, Some(0)),
            (StepStatus::Failure, Some(3)),
            (StepStatus::Skipped, None)
        ]
    );
    assert_eq!(server.log_lines(&build.stage, 1), ["about to fail"]);
    assert!(server.log_lines(&build.stage, 2).is_empty());
    let test = server.stage(run.id, "test").await;
    assert_eq!(test.stage.status, StageStatus::Skipped);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_a_run_stops_its_running_step() {
    let server = TestServer::builder().heartbeat_secs(3).start().await;
    let (repo, sha) = server.repo(FILES).await;
    let yaml = "\
stages:
  slow:
    steps:
      - name: wait
        run: |
          echo started
          sleep 300
          echo finished
";
    let run = server.run(&repo, &sha, yaml, false).await;
    let slow = server.stage(run.id, "slow").await;
    server
        .wait_for_log(&slow.stage, 0, "started", Duration::from_secs(30))
        .await;
    let cancelled_at = Instant::now();
    assert!(
        server
            .state
            .store
            .cancel_run(run.id, "cancelled by a test")
            .await
            .unwrap()
    );
    let stages = server
        .wait_stages_settled(run.id, Duration::from_secs(30))
        .await;
    let elapsed = cancelled_at.elapsed();
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}");
    assert_eq!(stages[0].stage.status, StageStatus::Cancelled);
    assert_eq!(stages[0].steps[0].status, StepStatus::Cancelled);
    assert!(!server.log_text(&slow.stage, 0).contains("finished"));
    let run = server.state.store.get_run(run.id).await.unwrap();
    assert_eq!(run.status, RunStatus::Cancelled);
    server.stop().await;
}

/// The protocol spoken directly: auth, stale tokens, idempotent logs and steps.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_lease_tokens_are_refused() {
    let clock = std::sync::Arc::new(server::clock::ManualClock::new());
    let server = TestServer::builder()
        .in_process_runner(false)
        .heartbeat_secs(3)
        .clock(clock.clone())
        .start()
        .await;
    let (repo, sha) = server.repo(FILES).await;
    let run = server
        .run(
            &repo,
            &sha,
            "stages:\n  one:\n    steps:\n      - name: s\n        run: echo hi\n",
            false,
        )
        .await;
    let token = server.runner_token("test runner").await;
    let http = reqwest::Client::new();
    let base = server.url();
    let post = |path: String, body: serde_json::Value, auth: Option<&str>| {
        let mut req = http.post(format!("{base}{path}")).json(&body);
        if let Some(t) = auth {
            req = req.bearer_auth(t);
        }
        req.send()
    };

    // No token / a wrong token: 401, nothing registered.
    let r = post(
        REGISTER.into(),
        serde_json::json!({"name": "x", "capacity": 1}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 401);
    let r = post(
        REGISTER.into(),
        serde_json::json!({"name": "x", "capacity": 1}),
        Some("slp_wrong"),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 401);
    assert!(server.state.store.list_runners().await.unwrap().is_empty());
    // Labels must be plain words: a `,` or a space could never be asked for.
    for labels in [serde_json::json!(["a,b"]), serde_json::json!(["two words"])] {
        let r = post(
            REGISTER.into(),
            serde_json::json!({"name": "x", "labels": labels, "capacity": 1}),
            Some(&token),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 422, "{labels}");
    }
    assert!(server.state.store.list_runners().await.unwrap().is_empty());

    let reg: RegisterResponse = post(
        REGISTER.into(),
        serde_json::json!({"name": "direct", "labels": ["a"], "capacity": 1}),
        Some(&token),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(reg.lease_secs, 3);
    assert_eq!(reg.heartbeat_secs, 1);

    let lease: LeaseResponse = post(
        LEASE.into(),
        serde_json::json!({"runner_id": reg.runner_id}),
        Some(&token),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(lease.run_id, run.id);
    assert_eq!(lease.attempt, 1);
    assert_eq!(lease.steps, ["s"]);
    assert_eq!(lease.log_offsets, [0]);
    assert_eq!(lease.sha, sha);
    assert!(lease.run_url.ends_with(&format!("/runs/{}", run.number)));
    assert!(lease.secrets.is_empty());
    let id = lease.stage_id;

    // The source is the commit's tree as a tar.
    let tar = http
        .get(format!(
            "{base}{}?lease_token={}",
            source_path(id),
            lease.lease_token
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(tar.status(), 200);
    let bytes = tar.bytes().await.unwrap();
    let mut archive = tar::Archive::new(&bytes[..]);
    let mut names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    names.sort();
    assert!(names.contains(&"README.md".to_string()), "{names:?}");
    assert!(names.iter().any(|n| n.ends_with("greet.sh")), "{names:?}");

    let good = serde_json::json!({"lease_token": lease.lease_token});
    let bad = serde_json::json!({"lease_token": "0123456789abcdef"});
    let lines = |first: u64, texts: &[&str]| {
        serde_json::json!({
            "lease_token": lease.lease_token,
            "first_line": first,
            "lines": texts.iter().map(|t| serde_json::json!({
                "time_ms": 1, "stream": "stdout",
                "data_b64": base64::engine::general_purpose::STANDARD.encode(t)
            })).collect::<Vec<_>>(),
        })
    };
    let mut bad_logs = lines(1, &["x"]);
    bad_logs["lease_token"] = "nope".into();
    let stale_requests = [
        (heartbeat_path(id), bad.clone()),
        (step_path(id, 0, "start"), bad.clone()),
        (step_path(id, 0, "logs"), bad_logs),
        (
            step_path(id, 0, "finish"),
            serde_json::json!({"lease_token": "nope", "status": "success", "exit_code": 0}),
        ),
        (
            finish_path(id),
            serde_json::json!({"lease_token": "nope", "status": "success"}),
        ),
        (
            waiting_path(id),
            serde_json::json!({"lease_token": "nope", "reason": "forged"}),
        ),
    ];
    for (path, body) in &stale_requests {
        let r = post(path.clone(), body.clone(), Some(&token))
            .await
            .unwrap();
        assert_eq!(r.status(), 409, "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "lease_lost", "{path}");
    }
    let r = http
        .get(format!("{base}{}?lease_token=nope", source_path(id)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);

    assert_eq!(
        server.state.store.get_stage(id).await.unwrap().waiting,
        None
    );

    // Why the set-up waits: stored masked with the repository's secrets (set after the
    // lease: masking happens on arrival), then withdrawn.
    server
        .secret(&repo, "QUOTA_NOTE", "s3cr3t-quota-word", false)
        .await;
    let r = post(
        waiting_path(id),
        serde_json::json!({"lease_token": lease.lease_token,
            "reason": "exceeded quota: s3cr3t-quota-word"}),
        Some(&token),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 204);
    let waiting = server.state.store.get_stage(id).await.unwrap().waiting;
    let waiting = waiting.expect("the reason is stored");
    assert!(
        waiting.starts_with("exceeded quota: ") && !waiting.contains("s3cr3t"),
        "{waiting}"
    );
    let r = post(
        waiting_path(id),
        serde_json::json!({"lease_token": lease.lease_token, "reason": null}),
        Some(&token),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        server.state.store.get_stage(id).await.unwrap().waiting,
        None
    );

    // With the right token: heartbeat, a step, idempotent log batches.
    let hb: HeartbeatResponse = post(heartbeat_path(id), good.clone(), Some(&token))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(hb.action, HeartbeatAction::Continue);
    for _ in 0..2 {
        let r = post(step_path(id, 0, "start"), good.clone(), Some(&token))
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "starting twice is acknowledged");
    }
    let r = post(
        step_path(id, 0, "logs"),
        lines(1, &["a", "b", "c"]),
        Some(&token),
    )
    .await
    .unwrap();
    assert_eq!(r.json::<LogAck>().await.unwrap().lines, 3);
    // A resend overlapping what is stored: only "d" is new.
    let r = post(
        step_path(id, 0, "logs"),
        lines(2, &["b", "c", "d"]),
        Some(&token),
    )
    .await
    .unwrap();
    assert_eq!(r.json::<LogAck>().await.unwrap().lines, 4);
    // A gap is refused.
    let r = post(step_path(id, 0, "logs"), lines(9, &["z"]), Some(&token))
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let stage = server.state.store.get_stage(id).await.unwrap();
    assert_eq!(server.log_lines(&stage, 0), ["a", "b", "c", "d"]);
    let steps = server.state.store.list_steps(id).await.unwrap();
    assert_eq!(steps[0].log_lines, 4);
    assert_eq!(steps[0].log_bytes, 8);

    // What the runner sends: binary frames, the lease token in a header. Masked on
    // arrival like JSON batches; a resend of stored lines is harmless.
    let frames = |lines: &[(u8, &[u8])]| {
        let mut body = Vec::new();
        for (stream, bytes) in lines {
            body.push(*stream);
            body.extend_from_slice(&7i64.to_le_bytes());
            body.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            body.extend_from_slice(bytes);
        }
        body
    };
    let post_frames = |query: &str, lease: Option<&str>, content_type: &str, body: Vec<u8>| {
        let mut req = http
            .post(format!("{base}{}{query}", step_path(id, 0, "logs")))
            .bearer_auth(&token)
            .header("content-type", content_type)
            .body(body);
        if let Some(lease) = lease {
            req = req.header(LEASE_HEADER, lease);
        }
        req.send()
    };
    let good_frames = frames(&[
        (0, b"d"),
        (1, b"e to stderr"),
        (0, b"key=s3cr3t-quota-word, not \xff UTF-8"),
    ]);
    // Sent twice: the resend adds nothing.
    for attempt in 1..=2 {
        let lease = Some(lease.lease_token.as_str());
        let r = post_frames("?first_line=4", lease, LOG_FRAMES, good_frames.clone())
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "attempt {attempt}");
        assert_eq!(
            r.json::<LogAck>().await.unwrap().lines,
            6,
            "attempt {attempt}"
        );
    }
    let key = server::logs::StepKey {
        run: stage.run_id,
        stage: stage.id,
        step: 0,
    };
    let stored = server.state.logs.read(key, 1, 100).unwrap();
    let texts: Vec<&[u8]> = stored.iter().map(|l| &l.bytes[..]).collect();
    assert_eq!(
        texts,
        [
            &b"a"[..],
            b"b",
            b"c",
            b"d",
            b"e to stderr",
            b"key=********, not \xff UTF-8"
        ]
    );
    assert_eq!(stored[4].stream, server::logs::Stream::Stderr);
    assert_eq!((stored[4].time_ms, stored[3].time_ms), (7, 1));
    let steps = server.state.store.list_steps(id).await.unwrap();
    assert_eq!(steps[0].log_lines, 6);
    let fresh = b"e to stderr\n".len() + b"key=********, not \xff UTF-8\n".len();
    assert_eq!(steps[0].log_bytes, 8 + fresh as i64);
    // Refused, each with what was wrong, and nothing stored.
    let mut cut = frames(&[(0, b"f")]);
    cut.truncate(5);
    let mut long = frames(&[(0, b"f")]);
    long[9] = 9;
    let lease_token = Some(lease.lease_token.as_str());
    let one = || frames(&[(0, b"f")]);
    // Refused for how it was sent: (query, lease header, content type, status, says).
    let refusals = [
        ("?first_line=7", Some("nope"), LOG_FRAMES, 409, "lease_lost"),
        (
            "?first_line=7",
            None,
            LOG_FRAMES,
            400,
            "x-slipway-lease header is missing",
        ),
        ("", lease_token, LOG_FRAMES, 400, "first_line"),
        (
            "?first_line=7",
            lease_token,
            "text/plain",
            415,
            "not `text/plain`",
        ),
    ];
    for (query, lease, content_type, status, says) in refusals {
        let r = post_frames(query, lease, content_type, one())
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{says}");
        let text = r.text().await.unwrap();
        assert!(text.contains(says), "{says}: {text}");
    }
    // Refused for a malformed body, naming the frame and what is wrong with it.
    let malformed = [
        (frames(&[(0, b"f"), (2, b"g")]), "frame 2 has stream 2"),
        (cut, "frame 1 is cut short"),
        (long, "frame 1 says 9 bytes but 1 are left"),
        (
            frames(&[(0, b"f\ng")]),
            "frame 1: a log line may not contain a newline",
        ),
    ];
    for (body, says) in malformed {
        let r = post_frames("?first_line=7", lease_token, LOG_FRAMES, body)
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{says}");
        let text = r.text().await.unwrap();
        assert!(text.contains(says), "{says}: {text}");
    }
    assert_eq!(server.state.logs.count(key).unwrap(), 6);

    // The lease runs out (no heartbeat for 3 s, stepped on the server's clock, plus one
    // expiry period): the stage is queued again and the old token is refused everywhere.
    clock.advance(Duration::from_secs(3 + 1));
    let s = server
        .wait_stage(id, Duration::from_secs(15), |s| {
            s.status == StageStatus::Queued
        })
        .await;
    assert_eq!(s.attempt, 2);
    assert!(
        s.reason
            .as_deref()
            .unwrap_or_default()
            .contains("runner lost"),
        "{s:?}"
    );
    for (path, body) in [
        (heartbeat_path(id), good.clone()),
        (step_path(id, 0, "logs"), lines(7, &["late"])),
        (
            finish_path(id),
            serde_json::json!({"lease_token": lease.lease_token, "status": "success"}),
        ),
    ] {
        let r = post(path.clone(), body, Some(&token)).await.unwrap();
        assert_eq!(r.status(), 409, "{path}");
    }

    // The second attempt continues the log after the first attempt's lines.
    let again: LeaseResponse = post(
        LEASE.into(),
        serde_json::json!({"runner_id": reg.runner_id}),
        Some(&token),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!((again.stage_id, again.attempt), (id, 2));
    assert_eq!(again.log_offsets, [6]);
    let r = post(
        finish_path(id),
        serde_json::json!({"lease_token": again.lease_token, "status": "skipped"}),
        Some(&token),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400, "a stage cannot finish as skipped");
    let done: StageFinished = post(
        finish_path(id),
        serde_json::json!({"lease_token": again.lease_token, "status": "success"}),
        Some(&token),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(done.status, StageStatus::Success.as_str());
    let run = server.wait_run(run.id, Duration::from_secs(5)).await;
    assert_eq!(run.status, RunStatus::Success);

    // Nothing left: a lease request waits, then answers 204.
    let started = Instant::now();
    let r = post(
        LEASE.into(),
        serde_json::json!({"runner_id": reg.runner_id}),
        Some(&token),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 204);
    assert!(started.elapsed() >= Duration::from_secs(LONG_POLL_SECS - 1));
    // An unknown runner id is told so (and would register again).
    let r = post(
        LEASE.into(),
        serde_json::json!({"runner_id": 999_999}),
        Some(&token),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_remote_runner_process_runs_stages() {
    let server = TestServer::builder()
        .in_process_runner(false)
        .heartbeat_secs(3)
        .start()
        .await;
    let (repo, sha) = server.repo(FILES).await;
    let token = server.runner_token("remote").await;
    let mut runner = spawn_runner(&server, &token, "remote-1", &[]);
    let run = server
        .run(
            &repo,
            &sha,
            "stages:\n  one:\n    steps:\n      - name: s\n        run: cat README.md\n",
            false,
        )
        .await;
    let run = server.wait_run(run.id, Duration::from_secs(60)).await;
    assert_eq!(
        run.status,
        RunStatus::Success,
        "{}",
        server.dump(run.id).await
    );
    let one = server.stage(run.id, "one").await;
    assert_eq!(
        server.log_lines(&one.stage, 0),
        ["hello from the repository"]
    );
    let runners = server.state.store.list_runners().await.unwrap();
    assert_eq!(one.stage.runner_id, Some(runners[0].id));
    assert_eq!(runners[0].name, "remote-1");

    // SIGTERM: the idle runner exits cleanly and promptly.
    let stopped = Instant::now();
    Command::new("kill")
        .args(["-TERM", &runner.id().to_string()])
        .status()
        .unwrap();
    let status = wait_exit(&mut runner, Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    assert!(stopped.elapsed() < Duration::from_secs(15));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_runner_without_a_valid_token_exits_with_an_error() {
    let server = TestServer::builder()
        .in_process_runner(false)
        .heartbeat_secs(3)
        .start()
        .await;
    let mut runner = spawn_runner(&server, "slp_not-a-token", "bad", &[]);
    let status = wait_exit(&mut runner, Duration::from_secs(15));
    assert!(!status.success());
    let out = slipway()
        .args(["runner", "--server", &server.url()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SLIPWAY_RUNNER_TOKEN"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop().await;
}

/// Labels are checked before the runner contacts anyone: a label that could never be
/// asked for, or a `backend:` label the runner's backend did not set, is refused.
#[test]
fn a_runner_refuses_bad_labels() {
    for (labels, complaint) in [
        ("gpu,two words", "contains ' '"),
        ("backend:docker", "adds `backend:<name>`"),
    ] {
        let out = slipway()
            .args([
                "runner",
                "--server",
                "http://127.0.0.1:9",
                "--labels",
                labels,
            ])
            .env("SLIPWAY_RUNNER_TOKEN", "slp_unused")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{labels}: {stderr}");
        assert!(stderr.contains(complaint), "{labels}: {stderr}");
    }
}

/// `kill -9` of a runner mid-step: within the heartbeat timeout the stage is queued
/// again and a second runner completes it; nothing stays `running`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_runner_is_replaced_within_the_heartbeat_timeout() {
    let clock = std::sync::Arc::new(server::clock::ManualClock::new());
    let server = TestServer::builder()
        .in_process_runner(false)
        .heartbeat_secs(3)
        .clock(clock.clone())
        .start()
        .await;
    let (repo, sha) = server.repo(FILES).await;
    let token = server.runner_token("remote").await;
    let marks = server.dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let mark = marks.join("ran-once");
    let pidfile = marks.join("pid");
    let yaml = format!(
        "\
stages:
  flaky:
    steps:
      - name: work
        run: |
          if [ -e '{mark}' ]; then
            echo second attempt
          else
            touch '{mark}'
            echo $$ > '{pid}'
            echo first attempt
            sleep 300
          fi
",
        mark = mark.display(),
        pid = pidfile.display()
    );
    let mut first = spawn_runner(&server, &token, "first", &[]);
    let run = server.run(&repo, &sha, &yaml, false).await;
    let flaky = server.stage(run.id, "flaky").await;
    server
        .wait_for_log(&flaky.stage, 0, "first attempt", Duration::from_secs(60))
        .await;
    first.kill().unwrap();
    let killed_at = Instant::now();
    first.wait().unwrap();
    // The step's process group outlives a SIGKILLed runner; don't leak it.
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", pid.trim())])
        .status();

    // Re-queued within the timeout (3 s) plus one expiry period (1 s), stepped on the
    // server's clock.
    clock.advance(Duration::from_secs(3 + 1));
    let requeued = server
        .wait_stage(flaky.stage.id, Duration::from_secs(15), |s| {
            s.status == StageStatus::Queued
        })
        .await;
    let took = killed_at.elapsed();
    assert!(took < Duration::from_secs(8), "re-queued after {took:?}");
    assert_eq!(requeued.attempt, 2);
    assert!(
        requeued
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("runner lost"),
        "{requeued:?}"
    );

    let mut second = spawn_runner(&server, &token, "second", &[]);
    let run = server.wait_run(run.id, Duration::from_secs(60)).await;
    assert_eq!(
        run.status,
        RunStatus::Success,
        "{}",
        server.dump(run.id).await
    );
    let flaky = server.stage(run.id, "flaky").await;
    assert_eq!(flaky.stage.attempt, 2);
    // Both attempts' output is kept, the retry's after the first's.
    assert_eq!(
        server.log_lines(&flaky.stage, 0),
        ["first attempt", "second attempt"]
    );
    let stages = server.state.store.list_stages(run.id).await.unwrap();
    assert!(
        stages
            .iter()
            .all(|s| s.stage.status != StageStatus::Running)
    );
    let _ = second.kill();
    let _ = second.wait();
    server.stop().await;
}

/// The server stops in the middle of a stage run by its in-process runner: shutdown
/// does not hang on it, and after a restart on the same data dir the stage runs again
/// and the run finishes; nothing stays `running`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_server_finishes_what_its_runner_was_running() {
    let server = TestServer::builder().heartbeat_secs(3).start().await;
    let (repo, sha) = server.repo(FILES).await;
    let mark = server.dir.path().join("ran-once");
    let yaml = format!(
        "stages:\n  s:\n    steps:\n      - run: |\n          if [ -e '{m}' ]; then echo again; else touch '{m}'; echo once; sleep 300; fi\n",
        m = mark.display()
    );
    let run = server.run(&repo, &sha, &yaml, false).await;
    let s = server.stage(run.id, "s").await;
    server
        .wait_for_log(&s.stage, 0, "once", Duration::from_secs(60))
        .await;
    let stopping = Instant::now();
    let dir = server.stop_keeping_dir().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(20),
        "shutdown took {:?}",
        stopping.elapsed()
    );

    let server = TestServer::builder()
        .dir(dir)
        .heartbeat_secs(3)
        .start()
        .await;
    let run = server.wait_run(run.id, Duration::from_secs(60)).await;
    assert_eq!(
        run.status,
        RunStatus::Success,
        "{}",
        server.dump(run.id).await
    );
    let s = server.stage(run.id, "s").await;
    assert_eq!(s.stage.attempt, 2);
    assert_eq!(server.log_lines(&s.stage, 0), ["once", "again"]);
    server.stop().await;
}

/// SIGTERM with no grace: the runner cancels its stage and hands it back at once (an
/// infrastructure error, retried elsewhere) instead of waiting for the lease to expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopping_runner_hands_its_stage_back() {
    let server = TestServer::builder()
        .in_process_runner(false)
        .heartbeat_secs(30)
        .start()
        .await;
    let (repo, sha) = server.repo(FILES).await;
    let token = server.runner_token("remote").await;
    let marks = server.dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let mark = marks.join("ran-once");
    let yaml = format!(
        "stages:\n  s:\n    steps:\n      - run: |\n          if [ -e '{m}' ]; then echo again; else touch '{m}'; echo once; sleep 300; fi\n",
        m = mark.display()
    );
    let mut first = spawn_runner(&server, &token, "first", &["--shutdown-grace", "0"]);
    let run = server.run(&repo, &sha, &yaml, false).await;
    let s = server.stage(run.id, "s").await;
    server
        .wait_for_log(&s.stage, 0, "once", Duration::from_secs(60))
        .await;
    Command::new("kill")
        .args(["-TERM", &first.id().to_string()])
        .status()
        .unwrap();
    let status = wait_exit(&mut first, Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    // Handed back well before the 30 s lease would have expired.
    let requeued = server.state.store.get_stage(s.stage.id).await.unwrap();
    assert_eq!(requeued.status, StageStatus::Queued, "{requeued:?}");
    assert!(
        requeued
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("runner shut down"),
        "{requeued:?}"
    );
    let mut second = spawn_runner(&server, &token, "second", &[]);
    let run = server.wait_run(run.id, Duration::from_secs(60)).await;
    assert_eq!(
        run.status,
        RunStatus::Success,
        "{}",
        server.dump(run.id).await
    );
    let _ = second.kill();
    let _ = second.wait();
    server.stop().await;
}

/// Stage `build` is finished by hand through the protocol with outputs and findings;
/// stage `deploy` (which needs it) then runs on a real runner agent with the local
/// backend and prints the outputs it was given.
async fn stage_results_are_stored_and_outputs_reach_later_stages(db: Dialect) {
    let server = TestServer::builder()
        .on(db)
        .in_process_runner(false)
        .heartbeat_secs(3)
        .start()
        .await;
    let (repo, sha) = server.repo(FILES).await;
    let token = server.runner_token("results runner").await;
    let admin = server::crypto::generate_token("slp_");
    server
        .state
        .store
        .create_token(
            "admin",
            &server::crypto::hash_token(&admin),
            TokenScope::Admin,
        )
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let base = server.url();
    let post = |path: String, body: serde_json::Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let reg: RegisterResponse = post(
        REGISTER.into(),
        serde_json::json!({"name": "by hand", "capacity": 1}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let lease = || async {
        post(
            LEASE.into(),
            serde_json::json!({"runner_id": reg.runner_id}),
        )
        .await
        .unwrap()
        .json::<LeaseResponse>()
        .await
        .unwrap()
    };

    // Results that cannot be stored end the stage as an error (retried), saying why,
    // and store nothing.
    let run = server
        .run(
            &repo,
            &sha,
            "stages:\n  one:\n    steps:\n      - name: s\n        run: echo hi\n",
            false,
        )
        .await;
    let l = lease().await;
    let r: StageFinished = post(
        finish_path(l.stage_id),
        serde_json::json!({
            "lease_token": l.lease_token, "status": "success",
            "outputs": {"image": "127.0.0.1:5000/team/app:1", "digest": "sha256:nope"},
            "findings": [{"tool": "t", "rule": "r", "severity": "high", "path": null,
                          "line": null, "message": "m"}],
        }),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(r.settled, "retrying");
    let one = server.stage(run.id, "one").await;
    assert!(
        one.stage
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("the runner reported unusable results: output `digest`"),
        "{:?}",
        one.stage.reason
    );
    assert!(one.outputs.is_empty());
    assert!(
        server
            .state
            .store
            .list_findings(run.id)
            .await
            .unwrap()
            .is_empty()
    );
    let l = lease().await;
    // A runner that predates results sends none: still accepted.
    post(
        finish_path(l.stage_id),
        serde_json::json!({"lease_token": l.lease_token, "status": "success"}),
    )
    .await
    .unwrap()
    .error_for_status()
    .unwrap();
    server.wait_run(run.id, Duration::from_secs(10)).await;

    let yaml = "stages:
  build:
    steps:
      - name: s
        run: echo build
  deploy:
    needs: [build]
    steps:
      - name: d
        run: echo \"deploying ${{ stages.build.outputs.image }}@${{ stages.build.outputs.digest }}\"
";
    let run = server.run(&repo, &sha, yaml, false).await;
    let l = lease().await;
    assert_eq!(l.stage_key, "build");
    let digest = format!("sha256:{}", "d".repeat(64));
    let done: StageFinished = post(
        finish_path(l.stage_id),
        serde_json::json!({
            "lease_token": l.lease_token, "status": "success",
            "outputs": {"image": "127.0.0.1:5000/team/app:1", "digest": digest},
            "findings": [
                {"tool": "slipway-secrets", "rule": "github-token", "severity": "high",
                 "path": "src/config.rs", "line": 3,
                 "message": "GitHub personal access token (ghp_****)"},
                {"tool": "bandit", "rule": "B101", "severity": "note", "path": null,
                 "line": null, "message": "assert used"}
            ],
        }),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(done.status, StageStatus::Success.as_str());

    // `deploy` runs on a real agent and sees `build`'s outputs in its environment.
    let shutdown = tokio_util::sync::CancellationToken::new();
    let work = server.dir.path().join("agent-work");
    let backend = std::sync::Arc::new(runner::LocalBackend::new(Some(work.clone())));
    let agent = server::agent::Agent::new(
        reqwest::Url::parse(&base).unwrap(),
        token.clone(),
        "agent",
        backend,
    )
    .with_work_dir(work);
    let agent = tokio::spawn(agent.run(shutdown.clone()));
    let finished = server.wait_run(run.id, Duration::from_secs(60)).await;
    shutdown.cancel();
    agent.await.unwrap().unwrap();
    assert_eq!(
        finished.status,
        RunStatus::Success,
        "{}",
        server.dump(run.id).await
    );
    let deploy = server.stage(run.id, "deploy").await;
    assert_eq!(
        server.log_lines(&deploy.stage, 0),
        [format!("deploying 127.0.0.1:5000/team/app:1@{digest}")]
    );

    // Through the API: the findings with their stage, the outputs in the run detail.
    let get = |path: String| http.get(format!("{base}{path}")).bearer_auth(&admin).send();
    let prefix = format!("/api/repos/{}/runs/{}", repo.name, run.number);
    let r = get(format!("{prefix}/findings")).await.unwrap();
    assert_eq!(r.status(), 200);
    let findings: serde_json::Value = r.json().await.unwrap();
    let view: Vec<_> = findings
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["stage_key"].as_str().unwrap().to_string(),
                f["rule"].as_str().unwrap().to_string(),
                f["severity"].as_str().unwrap().to_string(),
                f["path"].clone(),
                f["line"].clone(),
            )
        })
        .collect();
    assert_eq!(
        view,
        [
            (
                "build".to_string(),
                "github-token".to_string(),
                "high".to_string(),
                serde_json::json!("src/config.rs"),
                serde_json::json!(3)
            ),
            (
                "build".to_string(),
                "B101".to_string(),
                "note".to_string(),
                serde_json::Value::Null,
                serde_json::Value::Null
            ),
        ]
    );
    let detail: serde_json::Value = get(prefix.clone()).await.unwrap().json().await.unwrap();
    let build = detail["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == "build")
        .unwrap();
    assert_eq!(build["outputs"]["digest"], digest.as_str());
    assert_eq!(build["outputs"]["image"], "127.0.0.1:5000/team/app:1");
    let images = server.state.store.list_images(run.id).await.unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].digest, digest);
    let r = get(format!("/api/repos/{}/runs/999/findings", repo.name))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    server.stop().await;
}

/// `POST /api/runner/resume`: a restarted runner takes back the stage it left running
/// with a new lease token (the old one stops working) and the secret values; a runner
/// of another name, another attempt or a stage that moved on gets 409, and the answer
/// never shows the token or a value in its `Debug` form.
#[tokio::test]
async fn a_restarted_runner_resumes_its_stage_with_a_new_token() {
    let server = TestServer::builder()
        .in_process_runner(false)
        .heartbeat_secs(30)
        .start()
        .await;
    let (repo, sha) = server.repo(FILES).await;
    server
        .secret(&repo, "API_TOKEN", "tok_resume_5e6f7a8b", false)
        .await;
    let yaml = "stages:\n  one:\n    steps:\n      - name: s\n        run: echo $T\n        env:\n          T: ${{ secrets.API_TOKEN }}\n";
    let _run = server.run(&repo, &sha, yaml, false).await;
    let token = server.runner_token("resumer").await;
    let http = reqwest::Client::new();
    let base = server.url();
    let post = |path: &str, body: serde_json::Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let register = |name: &str| {
        let body = serde_json::json!({"name": name, "capacity": 1});
        let post = &post;
        async move {
            post(REGISTER, body)
                .await
                .unwrap()
                .json::<RegisterResponse>()
                .await
                .unwrap()
                .runner_id
        }
    };
    let me = register("pod-runner").await;
    let lease: LeaseResponse = post(LEASE, serde_json::json!({"runner_id": me}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let record = AdoptionRecord::from(&lease);
    let kept = serde_json::to_string(&record).unwrap();
    assert!(!kept.contains("tok_resume_5e6f7a8b") && !kept.contains(&lease.lease_token));

    // Another runner may not take it, nor may anyone resume another attempt.
    let other = register("someone-else").await;
    let refused = |runner: i64, attempt: i64| {
        let post = &post;
        let stage = lease.stage_id;
        async move {
            post(
                RESUME,
                serde_json::json!({"runner_id": runner, "stage_id": stage, "attempt": attempt}),
            )
            .await
            .unwrap()
            .status()
            .as_u16()
        }
    };
    assert_eq!(refused(other, 1).await, 409);
    assert_eq!(refused(me, 2).await, 409);

    // The same runner, registered again after its restart: a new token and the values.
    let again = register("pod-runner").await;
    let resumed: ResumeResponse = post(
        RESUME,
        serde_json::json!({"runner_id": again, "stage_id": lease.stage_id, "attempt": 1}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_ne!(resumed.lease_token, lease.lease_token);
    assert_eq!(resumed.secrets["API_TOKEN"], "tok_resume_5e6f7a8b");
    let shown = format!("{resumed:?}");
    assert!(
        !shown.contains("tok_resume") && !shown.contains(&resumed.lease_token),
        "{shown}"
    );
    // The old token no longer works; the new one does.
    let beat = |t: &str| {
        http.post(format!("{base}{}", heartbeat_path(lease.stage_id)))
            .bearer_auth(&token)
            .json(&serde_json::json!({"lease_token": t}))
            .send()
    };
    assert_eq!(beat(&lease.lease_token).await.unwrap().status(), 409);
    assert!(
        beat(&resumed.lease_token)
            .await
            .unwrap()
            .status()
            .is_success()
    );
    let lease = record.resume(resumed);
    assert_eq!(lease.secrets["API_TOKEN"], "tok_resume_5e6f7a8b");
    server.stop().await;
}
