//! Bitbucket Cloud, Bitbucket Data Center and Gitee: deliveries through the real
//! webhook route (tower `oneshot`), re-pointed at commits of a real bare repository and
//! planned; signatures, pings, ignored events; build statuses recorded by a stand-in
//! forge API; the forge names through the CLI and both databases.
//!
//! Long on purpose: three forges, each with its own payloads, signatures and status
//! API, one test per behaviour, written out in full; what they share is in `support/`.
//!
//! Fixture sources (payload shapes, trimmed of avatars and rendered HTML):
//! * `bitbucket/` — drone/go-scm `scm/driver/bitbucket/testdata/webhooks/` (push,
//!   push_tag_create, push_branch_delete, pr_created, pr_updated), matching Atlassian's
//!   Bitbucket Cloud "Event payloads" page; `push_multi.json` combines three of their
//!   changes, `pullrequest_created_fork.json` gives `pr_created` another source repository.
//! * `bitbucket-dc/` — Woodpecker `server/forge/bitbucketdatacenter/fixtures/`
//!   (HookPush, HookPullRequestOpened, HookPullRequestOpenedFromFork) and drone/go-scm
//!   `scm/driver/stash/testdata/webhooks/` (push_tag_create, push_branch_delete,
//!   pr_from_ref_updated), matching Atlassian's Data Center "Event payload" page;
//!   `ping.json` is the `diagnostics:ping` body.
//! * `gitee/` — drone/go-scm `scm/driver/gitee/testdata/webhooks/` (push, tag_create,
//!   pr_open, pr_update, pr_labeled, push_branch_delete), matching Gitee's help page
//!   "WebHook 推送数据格式说明".

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde_json::json;
use server::forge::{self, ForgeKind, Parsed, PrAction, VerifyError};
use server::store::{self, Dialect, Event, RunStatus, Trigger};

use crate::support::both_databases;
use crate::support::forge::{
    FakeForge, PIPELINE, SECRET, adapt_fixture, deliver, fixture, forge_headers, gitee_sign,
    hook_request, parse_event, register, runs, send, store_forge,
};
use crate::support::git::GitRepo;
use crate::support::process;
use crate::support::test_server::TestServer;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn ignored(kind: ForgeKind, event: &str, body: &[u8]) -> String {
    match forge::parse(kind, event, body) {
        Ok(Parsed::Ignored { reason }) => reason,
        other => panic!("{kind} {event}: expected Ignored, got {other:?}"),
    }
}

// ------------------------------------------------------------ every event, planned

struct Case {
    kind: ForgeKind,
    event: &'static str,
    fixture: &'static str,
    expect: Event,
}

const CASES: &[Case] = &[
    Case {
        kind: ForgeKind::Bitbucket,
        event: "repo:push",
        fixture: "bitbucket/push.json",
        expect: Event::Push,
    },
    Case {
        kind: ForgeKind::Bitbucket,
        event: "repo:push",
        fixture: "bitbucket/push_tag.json",
        expect: Event::Tag,
    },
    Case {
        kind: ForgeKind::Bitbucket,
        event: "pullrequest:created",
        fixture: "bitbucket/pullrequest_created.json",
        expect: Event::PullRequest,
    },
    Case {
        kind: ForgeKind::Bitbucket,
        event: "pullrequest:updated",
        fixture: "bitbucket/pullrequest_updated.json",
        expect: Event::PullRequest,
    },
    Case {
        kind: ForgeKind::BitbucketDc,
        event: "repo:refs_changed",
        fixture: "bitbucket-dc/push.json",
        expect: Event::Push,
    },
    Case {
        kind: ForgeKind::BitbucketDc,
        event: "repo:refs_changed",
        fixture: "bitbucket-dc/push_tag.json",
        expect: Event::Tag,
    },
    Case {
        kind: ForgeKind::BitbucketDc,
        event: "pr:opened",
        fixture: "bitbucket-dc/pr_opened.json",
        expect: Event::PullRequest,
    },
    Case {
        kind: ForgeKind::BitbucketDc,
        event: "pr:from_ref_updated",
        fixture: "bitbucket-dc/pr_from_ref_updated.json",
        expect: Event::PullRequest,
    },
    Case {
        kind: ForgeKind::Gitee,
        event: "Push Hook",
        fixture: "gitee/push.json",
        expect: Event::Push,
    },
    Case {
        kind: ForgeKind::Gitee,
        event: "Tag Push Hook",
        fixture: "gitee/tag_push.json",
        expect: Event::Tag,
    },
    Case {
        kind: ForgeKind::Gitee,
        event: "Merge Request Hook",
        fixture: "gitee/merge_request_open.json",
        expect: Event::PullRequest,
    },
    Case {
        kind: ForgeKind::Gitee,
        event: "Merge Request Hook",
        fixture: "gitee/merge_request_update.json",
        expect: Event::PullRequest,
    },
];

/// Push, tag, pull request opened and updated for each new forge: 202, a pending run
/// with the event's ref and commit, then planned from the real repository.
#[tokio::test]
async fn each_new_forge_delivery_becomes_a_planned_run() {
    let env = TestServer::builder().build().await;
    let state = &env.state;
    for (i, case) in CASES.iter().enumerate() {
        let mut git = GitRepo::bare();
        let d = adapt_fixture(
            &mut git,
            case.kind,
            case.event,
            case.fixture,
            &[(".slipway.yml", PIPELINE)],
            &[(".slipway.yml", PIPELINE), ("src/lib.rs", "// changed")],
        );
        assert!(!d.event.repository.is_empty(), "{}", case.fixture);
        // Registered under the path the payload names (the hook refuses another
        // repository's events); fixtures of one forge share it, so the previous
        // case's registration goes first.
        let name = d.event.repository.clone();
        if let Ok(old) = state.store.get_repo_by_name(&name).await {
            state.store.delete_repo(old.id).await.unwrap();
        }
        let repo = register(
            state,
            &name,
            store_forge(case.kind),
            &git.url(),
            "main",
            true,
        )
        .await;
        let (status, body) = deliver(
            state,
            case.kind,
            &name,
            case.event,
            &format!("d-{i}"),
            &d.body,
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{}: {body}", case.fixture);
        assert_eq!(body, json!({ "run": 1 }), "{}", case.fixture);

        let run = state.store.get_run_by_number(repo.id, 1).await.unwrap();
        assert_eq!(run.trigger, Trigger::Webhook);
        assert_eq!(run.event, case.expect, "{}", case.fixture);
        assert_eq!(run.sha, d.head.to_string(), "{}", case.fixture);
        assert_eq!(run.git_ref, d.event.git_ref, "{}", case.fixture);
        assert!(run.trusted, "{}", case.fixture);
        if let Some(pr) = &d.event.pr {
            assert_eq!(run.pr_number, Some(pr.number as i64));
            assert_eq!(run.branch.as_deref(), Some(pr.target_branch.as_str()));
            assert_eq!(
                run.source_branch.as_deref(),
                Some(pr.source_branch.as_str())
            );
            assert!(!run.fork, "{}", case.fixture);
        } else {
            assert_eq!(run.branch, d.event.branch);
            assert_eq!(run.tag, d.event.tag);
        }
        assert!(
            run.pusher.is_some(),
            "{}: the sender is recorded",
            case.fixture
        );

        let report = server::workers::planner::plan_pending(state).await.unwrap();
        assert_eq!(report.planned, 1, "{}: {report:?}", case.fixture);
        let run = state.store.get_run(run.id).await.unwrap();
        assert_eq!(
            run.status,
            RunStatus::Running,
            "{}: {:?}",
            case.fixture,
            run.error
        );
    }
}

// ------------------------------------------------------------ Bitbucket Cloud

#[test]
fn bitbucket_cloud_payloads_parse_as_documented() {
    let push = parse_event(
        ForgeKind::Bitbucket,
        "repo:push",
        &fixture("bitbucket/push.json"),
    );
    assert_eq!(push.kind, Event::Push);
    assert_eq!(push.git_ref, "refs/heads/master");
    assert_eq!(push.after, "141977fedf5cf35aa290ac87d4b5177ac4cd9de1");
    assert_eq!(
        push.before.as_deref(),
        Some("40e7580cf11311d84a6e5e97e2cbba6df1675750")
    );
    assert_eq!(push.repository, "brydzewski/foo");
    assert_eq!(push.clone_url, "https://bitbucket.org/brydzewski/foo.git");
    // The account id, unique and stable, is the sender; usernames are gone.
    assert_eq!(
        push.sender.as_deref(),
        Some("557058:2a6349dc-4346-4805-bd84-3abdd0812d17")
    );

    let tag = parse_event(
        ForgeKind::Bitbucket,
        "repo:push",
        &fixture("bitbucket/push_tag.json"),
    );
    assert_eq!(tag.kind, Event::Tag);
    assert_eq!(tag.tag.as_deref(), Some("feature/x"));
    assert_eq!(tag.before, None, "a created ref has no before");

    // Pull requests carry 12-digit hashes and have no pull refs: the source branch.
    let pr = parse_event(
        ForgeKind::Bitbucket,
        "pullrequest:created",
        &fixture("bitbucket/pullrequest_created.json"),
    );
    assert_eq!(pr.kind, Event::PullRequest);
    assert_eq!(pr.after, "507a576e59b3");
    assert_eq!(pr.git_ref, "refs/heads/develop");
    assert_eq!(pr.branch.as_deref(), Some("master"));
    let p = pr.pr.unwrap();
    assert_eq!((p.number, p.action, p.fork), (1, PrAction::Opened, false));
    let upd = parse_event(
        ForgeKind::Bitbucket,
        "pullrequest:updated",
        &fixture("bitbucket/pullrequest_updated.json"),
    );
    assert_eq!(upd.pr.unwrap().action, PrAction::Synchronized);
    assert_eq!(upd.after, "0704fc5beccc");

    let fork = ignored(
        ForgeKind::Bitbucket,
        "pullrequest:created",
        &fixture("bitbucket/pullrequest_created_fork.json"),
    );
    assert!(fork.contains("another repository"), "{fork}");
    let other = ignored(ForgeKind::Bitbucket, "pullrequest:fulfilled", b"{}");
    assert!(other.contains("pullrequest:fulfilled"), "{other}");
}

/// One run per change of a multi-ref push, each de-duplicated on its own; the deleted
/// branch in the same push starts nothing.
#[tokio::test]
async fn a_bitbucket_push_of_several_refs_makes_one_run_per_ref() {
    let env = TestServer::builder().build().await;
    let state = &env.state;
    let repo = register(
        state,
        "brydzewski/foo",
        store::ForgeKind::Bitbucket,
        "/srv/git/foo.git",
        "master",
        true,
    )
    .await;
    let body = fixture("bitbucket/push_multi.json");
    match forge::parse(ForgeKind::Bitbucket, "repo:push", &body).unwrap() {
        Parsed::Events(evs) => assert_eq!(evs.len(), 2),
        other => panic!("expected two events, got {other:?}"),
    }
    let name = "brydzewski/foo";
    let (status, body_json) = deliver(
        state,
        ForgeKind::Bitbucket,
        name,
        "repo:push",
        "multi-1",
        &body,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body_json}");
    assert_eq!(body_json, json!({ "runs": [1, 2] }));
    let mut got: Vec<(Event, String)> = runs(state, &repo)
        .await
        .into_iter()
        .map(|r| (r.event, r.git_ref))
        .collect();
    got.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        got,
        vec![
            (Event::Push, "refs/heads/master".to_string()),
            (Event::Tag, "refs/tags/v1.0.0".to_string()),
        ]
    );
    // Bitbucket retries with the same request UUID: nothing new.
    let (status, again) = deliver(
        state,
        ForgeKind::Bitbucket,
        name,
        "repo:push",
        "multi-1",
        &body,
    )
    .await;
    assert_eq!(
        (status, again),
        (StatusCode::OK, json!({ "duplicate": true }))
    );
    assert_eq!(runs(state, &repo).await.len(), 2);
}

/// The 12-digit head of a Bitbucket Cloud pull request is resolved against the
/// fetched source branch; the run then holds the full id.
#[tokio::test]
async fn an_abbreviated_bitbucket_pull_request_head_is_resolved_when_planned() {
    let env = TestServer::builder().build().await;
    let state = &env.state;
    let mut git = GitRepo::bare();
    let base = git.commit(
        "refs/heads/master",
        &[],
        &[(".slipway.yml", PIPELINE)],
        "base",
    );
    let head = git.commit(
        "refs/heads/develop",
        &[base],
        &[(".slipway.yml", PIPELINE), ("a.txt", "x")],
        "feature",
    );
    let abbreviated = &head.to_string()[..12];
    let body = String::from_utf8(fixture("bitbucket/pullrequest_created.json"))
        .unwrap()
        .replace("507a576e59b3", abbreviated)
        .into_bytes();
    let repo = register(
        state,
        "brydzewski/foo",
        store::ForgeKind::Bitbucket,
        &git.url(),
        "master",
        true,
    )
    .await;
    let (status, out) = deliver(
        state,
        ForgeKind::Bitbucket,
        "brydzewski/foo",
        "pullrequest:created",
        "pr-abbrev",
        &body,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{out}");
    let run = state.store.get_run_by_number(repo.id, 1).await.unwrap();
    assert_eq!(run.sha, abbreviated);
    let report = server::workers::planner::plan_pending(state).await.unwrap();
    assert_eq!(report.planned, 1, "{report:?}");
    let run = state.store.get_run(run.id).await.unwrap();
    assert_eq!(run.status, RunStatus::Running, "{:?}", run.error);
    assert_eq!(run.sha, head.to_string(), "the full id is recorded");

    // The branch moved on before planning: the run fails, naming the abbreviation.
    let moved = git.commit(
        "refs/heads/develop",
        &[head],
        &[(".slipway.yml", PIPELINE)],
        "next",
    );
    assert!(!moved.to_string().starts_with(abbreviated));
    let (status, _) = deliver(
        state,
        ForgeKind::Bitbucket,
        "brydzewski/foo",
        "pullrequest:updated",
        "pr-abbrev-2",
        &body,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    server::workers::planner::plan_pending(state).await.unwrap();
    let run = state.store.get_run_by_number(repo.id, 2).await.unwrap();
    assert_eq!(run.status, RunStatus::Error);
    assert!(
        run.error.as_deref().unwrap_or("").contains(abbreviated),
        "{:?}",
        run.error
    );
}

#[tokio::test]
async fn bitbucket_signatures_pings_and_ignored_events() {
    let env = TestServer::builder().build().await;
    let state = &env.state;
    let mut git = GitRepo::bare();
    let d = adapt_fixture(
        &mut git,
        ForgeKind::BitbucketDc,
        "repo:refs_changed",
        "bitbucket-dc/push.json",
        &[(".slipway.yml", PIPELINE)],
        &[(".slipway.yml", PIPELINE)],
    );
    let dc = register(
        state,
        "DEV/app",
        store::ForgeKind::BitbucketDc,
        &git.url(),
        "main",
        true,
    )
    .await;
    let cloud = register(
        state,
        "ws/app",
        store::ForgeKind::Bitbucket,
        &git.url(),
        "main",
        true,
    )
    .await;

    for (kind, name, event) in [
        (ForgeKind::BitbucketDc, "DEV/app", "repo:refs_changed"),
        (ForgeKind::Bitbucket, "ws/app", "repo:push"),
    ] {
        // Wrong secret, missing signature, no `sha256=` prefix: 401, nothing stored.
        let wrong = forge_headers(kind, event, "x1", &d.body, Some("not the secret"));
        let (status, body) = send(state, hook_request(kind, name, &wrong, d.body.clone())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{kind}: {body}");
        let unsigned = forge_headers(kind, event, "x2", &d.body, None);
        let (status, body) = send(state, hook_request(kind, name, &unsigned, d.body.clone())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{kind}: {body}");
        assert!(body.to_string().contains("x-hub-signature"), "{body}");
        let bare: Vec<(String, String)> = forge_headers(kind, event, "x3", &d.body, Some(SECRET))
            .into_iter()
            .map(|(k, v)| match k.as_str() {
                "x-hub-signature" => (k, v.trim_start_matches("sha256=").to_string()),
                _ => (k, v),
            })
            .collect();
        let (status, _) = send(state, hook_request(kind, name, &bare, d.body.clone())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{kind}");
        // Events that start nothing are acknowledged.
        let (status, body) = deliver(state, kind, name, "repo:fork", "fork-1", b"{}").await;
        assert_eq!(status, StatusCode::OK, "{kind}: {body}");
        assert!(
            body["ignored"].as_str().unwrap().contains("repo:fork"),
            "{body}"
        );
    }
    assert!(runs(state, &dc).await.is_empty());
    assert!(runs(state, &cloud).await.is_empty());

    // Data Center's "Test connection".
    let ping = fixture("bitbucket-dc/ping.json");
    let (status, body) = deliver(
        state,
        ForgeKind::BitbucketDc,
        "DEV/app",
        "diagnostics:ping",
        "p1",
        &ping,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "ping": true, "duplicate": false }));

    // A deleted branch is acknowledged, not built.
    let del = fixture("bitbucket-dc/push_branch_delete.json");
    let (status, body) = deliver(
        state,
        ForgeKind::BitbucketDc,
        "DEV/app",
        "repo:refs_changed",
        "del",
        &del,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["ignored"].as_str().unwrap().contains("deleted"),
        "{body}"
    );

    // The real delivery goes through.
    let (status, body) = deliver(
        state,
        ForgeKind::BitbucketDc,
        "DEV/app",
        "repo:refs_changed",
        "ok",
        &d.body,
    )
    .await;
    assert_eq!((status, body), (StatusCode::ACCEPTED, json!({ "run": 1 })));
}

// ------------------------------------------------------------ Bitbucket Data Center

#[test]
fn bitbucket_data_center_payloads_parse_as_documented() {
    let push = parse_event(
        ForgeKind::BitbucketDc,
        "repo:refs_changed",
        &fixture("bitbucket-dc/push.json"),
    );
    assert_eq!(push.git_ref, "refs/heads/renovate-all");
    assert_eq!(push.after, "76797d54bca87db6d1e3e82ee40622c7908aa514");
    assert_eq!(
        push.before.as_deref(),
        Some("e0e15221b987fd8296141c0faa6a79f7c86ca4ce")
    );
    assert_eq!(push.message, "chore(deps): update all");
    assert_eq!(push.repository, "DEV/deployment-automation");
    assert_eq!(
        push.clone_url,
        "https://bitbucket.example.com/scm/dev/deployment-automation.git"
    );
    assert_eq!(push.sender.as_deref(), Some("renovatebot"));

    let pr = parse_event(
        ForgeKind::BitbucketDc,
        "pr:opened",
        &fixture("bitbucket-dc/pr_opened.json"),
    );
    let p = pr.pr.as_ref().unwrap();
    assert_eq!(pr.git_ref, format!("refs/pull-requests/{}/from", p.number));
    assert_eq!((p.action, p.fork), (PrAction::Opened, false));

    let fork = parse_event(
        ForgeKind::BitbucketDc,
        "pr:opened",
        &fixture("bitbucket-dc/pr_opened_fork.json"),
    );
    let p = fork.pr.unwrap();
    assert!(p.fork, "the source repository has another id");
    assert_eq!(fork.git_ref, "refs/pull-requests/114/from");
    assert_eq!(
        p.head_clone_url,
        "https://bitbucket.example.com/scm/~john.doe_example.com/deployment-automation.git"
    );

    let upd = parse_event(
        ForgeKind::BitbucketDc,
        "pr:from_ref_updated",
        &fixture("bitbucket-dc/pr_from_ref_updated.json"),
    );
    assert_eq!(upd.pr.as_ref().unwrap().action, PrAction::Synchronized);
    assert_eq!(
        upd.before.as_deref(),
        Some("caf52ccb18c039cd9b930ed1f7b3edfb34cb92dd"),
        "previousFromHash"
    );
    let modified = ignored(ForgeKind::BitbucketDc, "pr:modified", b"{}");
    assert!(modified.contains("pr:modified"), "{modified}");
}

/// A fork pull request on Data Center is built from `refs/pull-requests/N/from` in the
/// target repository, but untrusted.
#[tokio::test]
async fn bitbucket_data_center_fork_pull_requests_are_untrusted() {
    let env = TestServer::builder().build().await;
    let state = &env.state;
    let mut git = GitRepo::bare();
    let d = adapt_fixture(
        &mut git,
        ForgeKind::BitbucketDc,
        "pr:opened",
        "bitbucket-dc/pr_opened_fork.json",
        &[(".slipway.yml", PIPELINE)],
        &[(".slipway.yml", PIPELINE)],
    );
    let repo = register(
        state,
        "DEV/app",
        store::ForgeKind::BitbucketDc,
        &git.url(),
        "master",
        true,
    )
    .await;
    let (status, body) = deliver(
        state,
        ForgeKind::BitbucketDc,
        "DEV/app",
        "pr:opened",
        "f1",
        &d.body,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let run = state.store.get_run_by_number(repo.id, 1).await.unwrap();
    assert!(run.fork);
    assert!(!run.trusted, "fork pull requests never get secrets");
    assert_eq!(run.git_ref, "refs/pull-requests/114/from");
}

// ------------------------------------------------------------ Gitee

#[test]
fn gitee_payloads_parse_as_documented() {
    let push = parse_event(ForgeKind::Gitee, "Push Hook", &fixture("gitee/push.json"));
    assert_eq!(push.git_ref, "refs/heads/feat-2-1");
    assert_eq!(push.after, "9921e45e570db8e57e544650baf837932fb2100f");
    assert_eq!(push.repository, "kit101/drone-yml-test");
    assert_eq!(push.sender.as_deref(), Some("kit101"));
    let tag = parse_event(
        ForgeKind::Gitee,
        "Tag Push Hook",
        &fixture("gitee/tag_push.json"),
    );
    assert_eq!((tag.kind, tag.tag.as_deref()), (Event::Tag, Some("1.3")));
    let pr = parse_event(
        ForgeKind::Gitee,
        "Merge Request Hook",
        &fixture("gitee/merge_request_open.json"),
    );
    assert_eq!(pr.git_ref, "refs/pull/9/head");
    assert_eq!(pr.after, "dc8fa2ebe050d63f639c5b834311e96bc2303523");
    let p = pr.pr.unwrap();
    assert_eq!(
        (p.action, p.fork, p.source_branch.as_str()),
        (PrAction::Opened, false, "feat-3")
    );
    let upd = parse_event(
        ForgeKind::Gitee,
        "Merge Request Hook",
        &fixture("gitee/merge_request_update.json"),
    );
    assert_eq!(upd.pr.unwrap().action, PrAction::Synchronized);

    let labeled = ignored(
        ForgeKind::Gitee,
        "Merge Request Hook",
        &fixture("gitee/merge_request_labeled.json"),
    );
    assert!(labeled.contains("update_label"), "{labeled}");
    let deleted = ignored(
        ForgeKind::Gitee,
        "Push Hook",
        &fixture("gitee/push_delete.json"),
    );
    assert!(deleted.contains("deleted"), "{deleted}");
    let note = ignored(ForgeKind::Gitee, "Note Hook", b"{}");
    assert!(note.contains("Note Hook"), "{note}");
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

#[test]
fn gitee_tokens_signatures_and_their_timestamp_window() {
    let secret = b"gitee-secret";
    let now = SystemTime::now();
    let ts = now
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    let sig = gitee_sign(secret, &ts);
    let verify = |h: &HeaderMap| forge::verify_at(ForgeKind::Gitee, h, b"{}", secret, now);

    // Password mode: the token is the secret itself.
    assert_eq!(
        verify(&headers(&[("x-gitee-token", "gitee-secret")])),
        Ok(())
    );
    assert_eq!(
        verify(&headers(&[("x-gitee-token", "gitee-secret2")])),
        Err(VerifyError::Mismatch)
    );
    // Signature mode, plain base64 or percent-encoded as Gitee's doc shows for URLs.
    let signed = headers(&[("x-gitee-token", &sig), ("x-gitee-timestamp", &ts)]);
    assert_eq!(verify(&signed), Ok(()));
    let encoded = sig
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    assert_eq!(
        verify(&headers(&[
            ("x-gitee-token", &encoded),
            ("x-gitee-timestamp", &ts)
        ])),
        Ok(())
    );
    // The password is not accepted in place of a signature, nor a signature of another
    // timestamp.
    assert!(
        verify(&headers(&[
            ("x-gitee-token", "gitee-secret"),
            ("x-gitee-timestamp", &ts)
        ]))
        .is_err()
    );
    let other_ts = (ts.parse::<u128>().unwrap() - 1).to_string();
    assert_eq!(
        verify(&headers(&[
            ("x-gitee-token", &sig),
            ("x-gitee-timestamp", &other_ts)
        ])),
        Err(VerifyError::Mismatch)
    );
    // Outside the window either way: stale (a replay), whatever the signature.
    let window = forge::GITEE_MAX_SKEW.as_millis();
    for off in [window + 1000, 3_600_000] {
        for t in [now_ms() - off, now_ms() + off] {
            let t = t.to_string();
            let h = headers(&[
                ("x-gitee-token", &gitee_sign(secret, &t)),
                ("x-gitee-timestamp", &t),
            ]);
            assert_eq!(verify(&h), Err(VerifyError::Stale), "{off}");
        }
    }
    // Just inside the window is fine.
    let t = (now_ms() - window + 5_000).to_string();
    let h = headers(&[
        ("x-gitee-token", &gitee_sign(secret, &t)),
        ("x-gitee-timestamp", &t),
    ]);
    assert_eq!(
        forge::verify_at(ForgeKind::Gitee, &h, b"{}", secret, now),
        Ok(())
    );
    assert!(matches!(
        verify(&headers(&[
            ("x-gitee-token", &sig),
            ("x-gitee-timestamp", "soon")
        ])),
        Err(VerifyError::MalformedHeader {
            header: "x-gitee-timestamp",
            ..
        })
    ));
    assert_eq!(
        verify(&HeaderMap::new()),
        Err(VerifyError::MissingHeader {
            header: "x-gitee-token"
        })
    );
}

#[tokio::test]
async fn gitee_deliveries_are_verified_and_deduplicated_without_a_delivery_header() {
    let env = TestServer::builder().build().await;
    let state = &env.state;
    let mut git = GitRepo::bare();
    let d = adapt_fixture(
        &mut git,
        ForgeKind::Gitee,
        "Push Hook",
        "gitee/push.json",
        &[(".slipway.yml", PIPELINE)],
        &[(".slipway.yml", PIPELINE)],
    );
    let repo = register(
        state,
        "kit101/app",
        store::ForgeKind::Gitee,
        &git.url(),
        "main",
        true,
    )
    .await;
    let name = "kit101/app";
    let signed = forge_headers(ForgeKind::Gitee, "Push Hook", "", &d.body, Some(SECRET));
    let (status, body) = send(
        state,
        hook_request(ForgeKind::Gitee, name, &signed, d.body.clone()),
    )
    .await;
    assert_eq!((status, body), (StatusCode::ACCEPTED, json!({ "run": 1 })));
    // The same delivery again (same timestamp, same body): one run.
    let (status, body) = send(
        state,
        hook_request(ForgeKind::Gitee, name, &signed, d.body.clone()),
    )
    .await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({ "duplicate": true }))
    );

    // A stale timestamp with a valid signature: 401, nothing stored.
    let old = (now_ms() - 3_600_000).to_string();
    let stale = vec![
        ("x-gitee-event".to_string(), "Push Hook".to_string()),
        ("x-gitee-timestamp".to_string(), old.clone()),
        (
            "x-gitee-token".to_string(),
            gitee_sign(SECRET.as_bytes(), &old),
        ),
    ];
    let (status, body) = send(
        state,
        hook_request(ForgeKind::Gitee, name, &stale, d.body.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.to_string().contains("X-Gitee-Timestamp"), "{body}");
    // A wrong password: 401.
    let bad = vec![
        ("x-gitee-event".to_string(), "Push Hook".to_string()),
        ("x-gitee-token".to_string(), "guess".to_string()),
    ];
    let (status, _) = send(
        state,
        hook_request(ForgeKind::Gitee, name, &bad, d.body.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The webhook page's "test" delivery: a ping, whatever its event header says.
    let mut ping = forge_headers(ForgeKind::Gitee, "Push Hook", "", &d.body, Some(SECRET));
    ping.push(("x-gitee-ping".to_string(), "true".to_string()));
    let (status, body) = send(
        state,
        hook_request(ForgeKind::Gitee, name, &ping, d.body.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ping"], true, "{body}");
    // Password mode, another event that starts nothing: acknowledged.
    let note = vec![
        ("x-gitee-event".to_string(), "Note Hook".to_string()),
        ("x-gitee-token".to_string(), SECRET.to_string()),
    ];
    let (status, body) = send(
        state,
        hook_request(ForgeKind::Gitee, name, &note, b"{}".to_vec()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["ignored"].as_str().unwrap().contains("Note Hook"),
        "{body}"
    );
    assert_eq!(runs(state, &repo).await.len(), 1);
}

// ------------------------------------------------------------ statuses

use crate::status::report;

#[tokio::test]
async fn bitbucket_cloud_gets_a_build_status_with_bearer_auth() {
    let forge = FakeForge::start().await;
    let (sha, sent) = report(
        store::ForgeKind::Bitbucket,
        &format!("{}/team/app.git", forge.url),
    )
    .await;
    assert_eq!(sent, 1);
    let last = forge.last();
    assert_eq!(last.method, "POST");
    assert_eq!(
        last.path,
        format!("/2.0/repositories/team/app/commit/{sha}/statuses/build")
    );
    assert_eq!(last.header("authorization"), "Bearer forge-token-123");
    let body = last.json();
    assert_eq!(body["state"], "SUCCESSFUL");
    // One status per pipeline and event (a run without stages: the event's).
    assert_eq!(body["key"], "slipway/manual");
    assert_eq!(body["name"], "slipway/manual");
    assert!(
        body["url"]
            .as_str()
            .unwrap()
            .ends_with("/repos/team/app/runs/1"),
        "{body}"
    );
    assert!(
        body["description"].as_str().unwrap().contains("run #1"),
        "{body}"
    );
    assert!(body.get("target_url").is_none(), "{body}");
}

#[tokio::test]
async fn bitbucket_data_center_gets_a_repository_build_status() {
    let forge = FakeForge::start().await;
    // Served under a context path, as `…/scm/PROJECT/slug.git` clone URLs say.
    let (sha, sent) = report(
        store::ForgeKind::BitbucketDc,
        &format!("{}/bitbucket/scm/team/app.git", forge.url),
    )
    .await;
    assert_eq!(sent, 1);
    let last = forge.last();
    assert_eq!(last.method, "POST");
    assert_eq!(
        last.path,
        format!("/bitbucket/rest/api/latest/projects/team/repos/app/commits/{sha}/builds")
    );
    assert_eq!(last.header("authorization"), "Bearer forge-token-123");
    let body = last.json();
    assert_eq!(body["state"], "SUCCESSFUL");
    assert_eq!(body["key"], "slipway/manual");
    assert_eq!(body["ref"], "refs/heads/main");
    assert!(
        body["url"]
            .as_str()
            .unwrap()
            .ends_with("/repos/team/app/runs/1"),
        "{body}"
    );
}

#[tokio::test]
async fn gitee_has_no_status_api_and_is_skipped() {
    let forge = FakeForge::start().await;
    let (_, sent) = report(
        store::ForgeKind::Gitee,
        &format!("{}/team/app.git", forge.url),
    )
    .await;
    assert_eq!(sent, 0);
    assert!(forge.requests().is_empty(), "nothing is sent to Gitee");
    assert!(!ForgeKind::Gitee.has_status_api());
}

#[test]
fn new_forges_api_bases_and_states() {
    use server::forge::api_base_for;
    let cases = [
        (
            ForgeKind::Bitbucket,
            "https://bitbucket.org/ws/app.git",
            "https://api.bitbucket.org",
            "ws/app",
        ),
        (
            ForgeKind::Bitbucket,
            "git@bitbucket.org:ws/app.git",
            "https://api.bitbucket.org",
            "ws/app",
        ),
        (
            ForgeKind::BitbucketDc,
            "https://bb.example.com/scm/proj/app.git",
            "https://bb.example.com",
            "proj/app",
        ),
        (
            ForgeKind::BitbucketDc,
            "https://bb.example.com/bitbucket/scm/proj/app.git",
            "https://bb.example.com/bitbucket",
            "proj/app",
        ),
        (
            ForgeKind::BitbucketDc,
            "ssh://git@bb.example.com:7999/proj/app.git",
            "https://bb.example.com",
            "proj/app",
        ),
        (
            ForgeKind::Gitee,
            "https://gitee.com/owner/app.git",
            "https://gitee.com/api/v5",
            "owner/app",
        ),
    ];
    for (kind, url, base, path) in cases {
        assert_eq!(
            api_base_for(kind, url, path).as_deref(),
            Some(base),
            "{kind} {url}"
        );
    }
}

// ------------------------------------------------------------ names: CLI and databases

both_databases!(the_new_forge_names_are_stored_by_both_databases);

async fn the_new_forge_names_are_stored_by_both_databases(db: Dialect) {
    let env = TestServer::builder().on(db).build().await;
    let state = &env.state;
    for (i, kind) in [
        ForgeKind::Bitbucket,
        ForgeKind::BitbucketDc,
        ForgeKind::Gitee,
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("o{i}/app");
        let repo = register(state, &name, store_forge(kind), "/srv/x.git", "main", false).await;
        let again = state.store.get_repo_by_name(&name).await.unwrap();
        assert_eq!((repo.forge, again.forge), (kind, kind));
    }
}

#[test]
fn repo_add_accepts_the_new_forges_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for (forge, name) in [
        ("bitbucket", "ws/app"),
        ("bitbucket-dc", "PROJ/app"),
        ("gitee", "own/app"),
    ] {
        let out = process::slipway()
            .args([
                "repo",
                "add",
                name,
                "--forge",
                forge,
                "--clone-url",
                "/srv/app.git",
            ])
            .arg("--data-dir")
            .arg(&data)
            .env("SLIPWAY_PUBLIC_URL", "https://ci.example")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{forge}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("https://ci.example/hooks/{forge}/{name}")),
            "{stdout}"
        );
    }
    let out = process::slipway()
        .args(["repo", "list", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("PROJ/app\tbitbucket-dc\t"), "{listed}");
    assert!(listed.contains("ws/app\tbitbucket\t"), "{listed}");
    assert!(listed.contains("own/app\tgitee\t"), "{listed}");
}

/// Migration 0011 rebuilds `repos` and `identities` on SQLite: re-run on a database
/// holding repositories, runs and identities, it keeps every child row (dropping the
/// old table must not cascade), the AUTOINCREMENT high-water mark and the children's
/// foreign keys, and accepts the new names afterwards.
#[tokio::test]
async fn the_sqlite_rebuild_of_0011_keeps_children_and_ids() {
    use sqlx::{Connection, Row, SqliteConnection};
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}?mode=rwc", dir.path().join("db.sqlite").display());
    let store = store::Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    store.close().await;

    let mut c = SqliteConnection::connect(&url).await.unwrap();
    for sql in [
        "PRAGMA foreign_keys = ON",
        "INSERT INTO users (name, password_hash, created_at) VALUES ('ada', 'x', 0)",
        "INSERT INTO repos (name, forge, clone_url, default_branch, webhook_secret_enc, created_at) \
         VALUES ('a/one', 'github', '/x', 'main', x'00', 0), ('a/two', 'gitea', '/y', 'main', x'00', 0)",
        "INSERT INTO runs (repo_id, number, status, trigger_kind, event, git_ref, sha, created_at) \
         VALUES (1, 1, 'success', 'manual', 'manual', 'refs/heads/main', 'abc', 0)",
        "INSERT INTO identities (user_id, forge, login, created_at) VALUES (1, 'github', 'ada', 0)",
        // A deleted repository: its id must not come back.
        "DELETE FROM repos WHERE name = 'a/two'",
        "DELETE FROM _sqlx_migrations WHERE version = 11",
    ] {
        sqlx::query(sql)
            .execute(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    c.close().await.unwrap();

    let store = store::Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    store.close().await;

    let mut c = SqliteConnection::connect(&url).await.unwrap();
    let count = |sql: &'static str| sqlx::query(sql);
    let runs: i64 = count("SELECT COUNT(*) FROM runs")
        .fetch_one(&mut c)
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        runs, 1,
        "the run survived the rebuild of its repository's table"
    );
    let ids: i64 = count("SELECT COUNT(*) FROM identities")
        .fetch_one(&mut c)
        .await
        .unwrap()
        .get(0);
    assert_eq!(ids, 1);
    let seq: i64 = count("SELECT seq FROM sqlite_sequence WHERE name = 'repos'")
        .fetch_one(&mut c)
        .await
        .unwrap()
        .get(0);
    assert_eq!(seq, 2, "the high-water mark is kept");
    let parent: String =
        count("SELECT \"table\" FROM pragma_foreign_key_list('runs') WHERE \"from\" = 'repo_id'")
            .fetch_one(&mut c)
            .await
            .unwrap()
            .get(0);
    assert_eq!(parent, "repos");
    sqlx::query("PRAGMA foreign_keys = ON")
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO repos (name, forge, clone_url, default_branch, webhook_secret_enc, created_at) \
         VALUES ('a/three', 'bitbucket-dc', '/z', 'main', x'00', 0)",
    )
    .execute(&mut c)
    .await
    .unwrap();
    let id: i64 = count("SELECT id FROM repos WHERE name = 'a/three'")
        .fetch_one(&mut c)
        .await
        .unwrap()
        .get(0);
    assert_eq!(id, 3);
    let refused = sqlx::query(
        "INSERT INTO identities (user_id, forge, login, created_at) VALUES (1, 'svn', 'x', 0)",
    )
    .execute(&mut c)
    .await;
    assert!(refused.is_err(), "the CHECK still refuses unknown forges");
    // Deleting the repository still cascades to its runs: the foreign keys work.
    sqlx::query("DELETE FROM repos WHERE id = 1")
        .execute(&mut c)
        .await
        .unwrap();
    let runs: i64 = count("SELECT COUNT(*) FROM runs")
        .fetch_one(&mut c)
        .await
        .unwrap()
        .get(0);
    assert_eq!(runs, 0);
}

/// Every value of the new forges' fixtures replaced in turn by hostile values and
/// other JSON types, parsed as each of that forge's events: an error or an ignore,
/// never a panic.
#[test]
fn mutated_new_forge_payloads_never_panic() {
    use serde_json::Value;
    fn paths(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        out.push(prefix.clone());
        let children: Vec<(String, &Value)> = match v {
            Value::Object(m) => m.iter().map(|(k, c)| (k.clone(), c)).collect(),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(i, c)| (i.to_string(), c))
                .collect(),
            _ => Vec::new(),
        };
        for (k, child) in children {
            prefix.push(k);
            paths(child, prefix, out);
            prefix.pop();
        }
    }
    fn at<'a>(v: &'a mut Value, path: &[String]) -> &'a mut Value {
        path.iter().fold(v, |v, k| match v {
            Value::Object(m) => m.get_mut(k).unwrap(),
            Value::Array(a) => &mut a[k.parse::<usize>().unwrap()],
            _ => unreachable!(),
        })
    }
    let replacements = [
        Value::Null,
        json!(""),
        json!(-1),
        json!([]),
        json!({}),
        json!("0000000000000000000000000000000000000000"),
        json!("refs/heads/a..b"),
        json!("é".repeat(300)),
    ];
    let sets: &[(ForgeKind, &[&str], &[&str])] = &[
        (
            ForgeKind::Bitbucket,
            &["repo:push", "pullrequest:created"],
            &[
                "bitbucket/push_multi.json",
                "bitbucket/pullrequest_created.json",
            ],
        ),
        (
            ForgeKind::BitbucketDc,
            &[
                "repo:refs_changed",
                "pr:from_ref_updated",
                "diagnostics:ping",
            ],
            &[
                "bitbucket-dc/push.json",
                "bitbucket-dc/pr_from_ref_updated.json",
            ],
        ),
        (
            ForgeKind::Gitee,
            &["Push Hook", "Merge Request Hook"],
            &["gitee/tag_push.json", "gitee/merge_request_update.json"],
        ),
    ];
    let mut parses = 0usize;
    for (kind, events, files) in sets {
        for file in *files {
            let original: Value = serde_json::from_slice(&fixture(file)).unwrap();
            let mut all = Vec::new();
            paths(&original, &mut Vec::new(), &mut all);
            for path in &all {
                for r in &replacements {
                    let mut v = original.clone();
                    *at(&mut v, path) = r.clone();
                    let body = serde_json::to_vec(&v).unwrap();
                    for event in *events {
                        let _ = forge::parse(*kind, event, &body);
                        parses += 1;
                    }
                }
            }
        }
    }
    assert!(parses > 5_000, "only {parses} parses");
}
