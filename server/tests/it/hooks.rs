//! The webhook endpoint and the plain-git hook, driven through the real router (tower
//! `oneshot`) and over real sockets, with deliveries made from the forge fixtures and
//! re-pointed at commits of a real bare repository.
//!
//! Long on purpose: one test per behaviour of this area, each written out end to end;
//! the set-up they share is in `support/`.

use std::io::Write as _;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use proptest::prelude::*;
use serde_json::{Value, json};
use server::crypto::{generate_token, hash_token};
use server::daemon::config::Settings;
use server::forge::ForgeKind;
use server::store::{self, Dialect, Event, RunStatus, StageStatus, TokenScope, Trigger};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::both_databases;
use crate::support::forge::{
    Delivery, PIPELINE, SECRET, adapt_fixture, deliver, fixture, forge_headers, form_body,
    form_delivery, hook_request, parse_event, register, runs, send, store_forge,
};
use crate::support::git::GitRepo;
use crate::support::process::slipway;
use crate::support::test_server::TestServer;

// ------------------------------------------------------------ every forge, end to end

struct Case {
    kind: ForgeKind,
    event: &'static str,
    fixture: &'static str,
    expect: Event,
}

const CASES: &[Case] = &[
    Case {
        kind: ForgeKind::Github,
        event: "push",
        fixture: "github/push.json",
        expect: Event::Push,
    },
    Case {
        kind: ForgeKind::Github,
        event: "pull_request",
        fixture: "github/pull_request_opened.json",
        expect: Event::PullRequest,
    },
    Case {
        kind: ForgeKind::Github,
        event: "push",
        fixture: "github/push_tag.json",
        expect: Event::Tag,
    },
    Case {
        kind: ForgeKind::Gitlab,
        event: "Push Hook",
        fixture: "gitlab/push.json",
        expect: Event::Push,
    },
    Case {
        kind: ForgeKind::Gitlab,
        event: "Merge Request Hook",
        fixture: "gitlab/merge_request_open.json",
        expect: Event::PullRequest,
    },
    Case {
        kind: ForgeKind::Gitea,
        event: "push",
        fixture: "gitea/push.json",
        expect: Event::Push,
    },
    Case {
        kind: ForgeKind::Gitea,
        event: "pull_request",
        fixture: "gitea/pull_request_opened.json",
        expect: Event::PullRequest,
    },
    Case {
        kind: ForgeKind::Forgejo,
        event: "push",
        fixture: "forgejo/push.json",
        expect: Event::Push,
    },
    Case {
        kind: ForgeKind::Forgejo,
        event: "pull_request",
        fixture: "forgejo/pull_request_opened.json",
        expect: Event::PullRequest,
    },
];

both_databases!(
    each_forge_delivery_becomes_a_planned_run,
    a_thousand_concurrent_copies_make_one_run,
);

async fn each_forge_delivery_becomes_a_planned_run(db: Dialect) {
    let env = TestServer::builder().on(db).build().await;
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
        let name = format!("org{i}/app");
        let default = d
            .event
            .pr
            .as_ref()
            .map(|p| p.target_branch.clone())
            .or(d.event.branch.clone())
            .unwrap_or_else(|| "main".into());
        let repo = register(
            state,
            &name,
            store_forge(case.kind),
            &git.url(),
            &default,
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
        assert_eq!(run.status, RunStatus::Pending);
        assert_eq!(run.trigger, Trigger::Webhook);
        assert_eq!(run.event, case.expect, "{}", case.fixture);
        assert_eq!(run.sha, d.head.to_string());
        assert_eq!(run.git_ref, d.event.git_ref);
        assert!(
            run.trusted,
            "{}: same-repository events of a trusted repo are trusted",
            case.fixture
        );
        if let Some(pr) = &d.event.pr {
            assert_eq!(run.pr_number, Some(pr.number as i64));
            assert_eq!(run.branch.as_deref(), Some(pr.target_branch.as_str()));
            assert_eq!(
                run.source_branch.as_deref(),
                Some(pr.source_branch.as_str())
            );
            assert!(!run.fork);
        } else {
            assert_eq!(run.branch, d.event.branch);
            assert_eq!(run.tag, d.event.tag);
        }

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
        assert_eq!(
            run.yaml_sha256.as_deref(),
            Some(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(PIPELINE)).as_str())
        );
        let plan = run.plan.clone().unwrap();
        assert_eq!(plan[0]["pipeline"], "default");
        assert_eq!(plan[0]["event"]["sha"], d.head.to_string());
        let stages = state.store.list_stages(run.id).await.unwrap();
        let got: Vec<(&str, StageStatus, Vec<&str>)> = stages
            .iter()
            .map(|s| {
                (
                    s.stage.key.as_str(),
                    s.stage.status,
                    s.steps.iter().map(|st| st.name.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("build", StageStatus::Queued, vec!["compile"]),
                ("test", StageStatus::Waiting, vec!["unit"]),
            ],
            "{}",
            case.fixture
        );
    }
}

async fn github_repo(env: &TestServer) -> (GitRepo, store::Repo, Delivery) {
    let mut git = GitRepo::bare();
    let d = adapt_fixture(
        &mut git,
        ForgeKind::Github,
        "push",
        "github/push.json",
        &[(".slipway.yml", PIPELINE)],
        &[(".slipway.yml", PIPELINE)],
    );
    let repo = register(
        &env.state,
        "octo-org/hello-world",
        store::ForgeKind::Github,
        &git.url(),
        "main",
        true,
    )
    .await;
    (git, repo, d)
}

// ------------------------------------------------------------ authentication

#[tokio::test]
async fn bad_or_missing_signatures_get_401_and_store_nothing() {
    let env = TestServer::builder().build().await;
    let state = &env.state;
    let (_git, repo, d) = github_repo(&env).await;
    let name = "octo-org/hello-world";

    // Signed with the wrong secret.
    let headers = forge_headers(ForgeKind::Github, "push", "dup-1", &d.body, Some("wrong"));
    let (status, body) = send(
        state,
        hook_request(ForgeKind::Github, name, &headers, d.body.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");

    // Signed correctly, then one byte of the body changed.
    let mut tampered = d.body.clone();
    let at = tampered.len() / 2;
    tampered[at] ^= 1;
    let headers = forge_headers(ForgeKind::Github, "push", "dup-1", &d.body, Some(SECRET));
    let (status, _) = send(
        state,
        hook_request(ForgeKind::Github, name, &headers, tampered),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // No signature at all.
    let headers = forge_headers(ForgeKind::Github, "push", "dup-1", &d.body, None);
    let (status, body) = send(
        state,
        hook_request(ForgeKind::Github, name, &headers, d.body.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("x-hub-signature-256"),
        "{body}"
    );

    assert!(runs(state, &repo).await.is_empty());
    // Nothing was recorded: the same delivery id, properly signed, is still new.
    let (status, body) = deliver(state, ForgeKind::Github, name, "push", "dup-1", &d.body).await;
    assert_eq!((status, body), (StatusCode::ACCEPTED, json!({ "run": 1 })));
}

#[tokio::test]
async fn gitlab_token_and_gitea_signature_are_checked() {
    let env = TestServer::builder().build().await;
    let state = &env.state;
    let git = GitRepo::bare();
    let gl = register(
        state,
        "g/lab",
        store::ForgeKind::Gitlab,
        &git.url(),
        "master",
        true,
    )
    .await;
    let gt = register(
        state,
        "g/tea",
        store::ForgeKind::Gitea,
        &git.url(),
        "main",
        true,
    )
    .await;
    let body = fixture("gitlab/push.json");
    let headers = forge_headers(
        ForgeKind::Gitlab,
        "Push Hook",
        "x",
        &body,
        Some("not the token"),
    );
    let (status, _) = send(
        state,
        hook_request(ForgeKind::Gitlab, "g/lab", &headers, body),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let body = fixture("gitea/push.json");
    let headers = forge_headers(ForgeKind::Gitea, "push", "x", &body, None);
    let (status, _) = send(
        state,
        hook_request(ForgeKind::Gitea, "g/tea", &headers, body),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(runs(state, &gl).await.is_empty() && runs(state, &gt).await.is_empty());
}

#[tokio::test]
async fn unknown_repositories_and_forge_mismatches_are_404() {
    let env = TestServer::builder().build().await;
    let state = &env.state;
    let (_git, repo, d) = github_repo(&env).await;
    let (status, _) = deliver(
        state,
        ForgeKind::Github,
        "octo-org/nope",
        "push",
        "a",
        &d.body,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Registered as GitHub, addressed as Gitea.
    let (status, _) = deliver(
        state,
        ForgeKind::Gitea,
        "octo-org/hello-world",
        "push",
        "a",
        &d.body,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = send(
        state,
        axum::http::Request::post("/hooks/bitbucket/octo-org/hello-world")
            .body(axum::body::Body::from(d.body.clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(runs(state, &repo).await.is_empty());
}

// ------------------------------------------------------------ payload handling

#[tokio::test]
async fn pings_ignored_events_and_malformed_payloads() {
    let env = TestServer::builder().build().await;
    let state = &env.state;
    let (_git, repo, d) = github_repo(&env).await;
    let name = "octo-org/hello-world";

    let ping = fixture("github/ping.json");
    let (status, body) = deliver(state, ForgeKind::Github, name, "ping", "p1", &ping).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "ping": true, "duplicate": false }));
    let (_, body) = deliver(state, ForgeKind::Github, name, "ping", "p1", &ping).await;
    assert_eq!(
        body["duplicate"], true,
        "the ping's delivery id was recorded"
    );

    let (status, body) = deliver(state, ForgeKind::Github, name, "issues", "i1", b"{}").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body["ignored"].as_str().unwrap().contains("issues"),
        "{body}"
    );

    let deleted = fixture("github/push_delete.json");
    let (status, body) = deliver(state, ForgeKind::Github, name, "push", "del", &deleted).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["ignored"].as_str().unwrap().contains("deleted"),
        "{body}"
    );

    // Signed but broken: 400 with the reason, nothing stored.
    for (i, bad) in [
        &b"{not json"[..],
        br#"{"ref": "refs/heads/main"}"#,
        br#"{"ref": "refs/heads/main", "before": "x", "after": "nothex", "repository": {"clone_url": "u"}}"#,
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("bad-{i}");
        let (status, body) = deliver(state, ForgeKind::Github, name, "push", &id, bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["code"], "bad_request");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
        // The delivery id was not recorded.
        let (status, _) = deliver(state, ForgeKind::Github, name, "push", &id, &d.body).await;
        assert!(status == StatusCode::ACCEPTED || status == StatusCode::OK);
    }
    // Only the deliveries re-sent with a valid body created runs (all for one commit,
    // each a distinct delivery).
    assert_eq!(runs(state, &repo).await.len(), 3);

    // No delivery id: 400.
    let headers: Vec<(String, String)> =
        forge_headers(ForgeKind::Github, "push", "z", &d.body, Some(SECRET))
            .into_iter()
            .filter(|(k, _)| k != "x-github-delivery")
            .collect();
    let (status, body) = send(
        state,
        hook_request(ForgeKind::Github, name, &headers, d.body.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(runs(state, &repo).await.len(), 3);
}

#[tokio::test]
async fn a_repeated_delivery_is_acknowledged_once() {
    let env = TestServer::builder().build().await;
    let state = &env.state;
    let (_git, repo, d) = github_repo(&env).await;
    let name = "octo-org/hello-world";
    let (status, body) = deliver(state, ForgeKind::Github, name, "push", "same", &d.body).await;
    assert_eq!((status, body), (StatusCode::ACCEPTED, json!({ "run": 1 })));
    let (status, body) = deliver(state, ForgeKind::Github, name, "push", "same", &d.body).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({ "duplicate": true }))
    );
    assert_eq!(runs(state, &repo).await.len(), 1);
}

#[tokio::test]
async fn fork_pull_requests_are_untrusted() {
    let env = TestServer::builder().build().await;
    let state = &env.state;
    let mut git = GitRepo::bare();
    let d = adapt_fixture(
        &mut git,
        ForgeKind::Github,
        "pull_request",
        "github/pull_request_synchronize_fork.json",
        &[(".slipway.yml", PIPELINE)],
        &[(".slipway.yml", PIPELINE)],
    );
    assert!(d.event.pr.as_ref().unwrap().fork);
    let repo = register(
        state,
        "o/r",
        store::ForgeKind::Github,
        &git.url(),
        "main",
        true,
    )
    .await;
    let (status, _) = deliver(
        state,
        ForgeKind::Github,
        "o/r",
        "pull_request",
        "f",
        &d.body,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let run = state.store.get_run_by_number(repo.id, 1).await.unwrap();
    assert!(run.fork && !run.trusted);
    server::workers::planner::plan_pending(state).await.unwrap();
    let run = state.store.get_run(run.id).await.unwrap();
    assert_eq!(run.status, RunStatus::Running, "{:?}", run.error);
    assert_eq!(run.plan.unwrap()[0]["event"]["fork"], true);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Mutated payloads (signed, so they reach the parser) never cause a 5xx or a
    /// panic; a 4xx stores nothing.
    #[test]
    fn fuzzed_payloads_get_4xx_and_store_nothing(
        fixture_idx in 0usize..CASES.len(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        FUZZ.with(|f| {
            let (rt, env) = f;
            rt.block_on(async {
                let case = &CASES[fixture_idx];
                let mut body = fixture(case.fixture);
                for (idx, byte, op) in &edits {
                    let i = idx.index(body.len().max(1));
                    match op {
                        0 if i < body.len() => body[i] = *byte,
                        1 => body.insert(i.min(body.len()), *byte),
                        _ if i < body.len() => { body.remove(i); }
                        _ => {}
                    }
                }
                let name = format!("fuzz/{fixture_idx}");
                let repo = env.state.store.get_repo_by_name(&name).await.unwrap();
                let before = runs(&env.state, &repo).await.len();
                let id = format!("fuzz-{}", FUZZ_ID.fetch_add(1, Ordering::Relaxed));
                let (status, body_json) = deliver(&env.state, case.kind, &name, case.event, &id, &body).await;
                prop_assert!(!status.is_server_error(), "{status}: {body_json}");
                let after = runs(&env.state, &repo).await.len();
                if status.is_client_error() {
                    // 403: a mutation in the payload's repository name and clone URL.
                    prop_assert!(
                        status == StatusCode::BAD_REQUEST || status == StatusCode::FORBIDDEN,
                        "{status}: {body_json}"
                    );
                    prop_assert_eq!(before, after);
                } else if status == StatusCode::ACCEPTED {
                    prop_assert_eq!(before + 1, after);
                } else {
                    prop_assert_eq!(status, StatusCode::OK);
                    prop_assert_eq!(before, after);
                }
                Ok(())
            })
        })?;
    }
}

static FUZZ_ID: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static FUZZ: (tokio::runtime::Runtime, TestServer) = {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let env = rt.block_on(async {
            let env = TestServer::builder().build().await;
            // One repository per fixture, registered with the fixture's clone URL: the
            // unmutated payloads are about the repository they are delivered to.
            for (i, case) in CASES.iter().enumerate() {
                let ev = parse_event(case.kind, case.event, &fixture(case.fixture));
                register(&env.state, &format!("fuzz/{i}"), store_forge(case.kind), &ev.clone_url, "main", true).await;
            }
            env
        });
        (rt, env)
    };
}

// ------------------------------------------------------------ form-encoded deliveries

/// A delivery over a real socket to the routes served by `addr`: status and JSON body.
async fn post_hook(
    addr: std::net::SocketAddr,
    kind: ForgeKind,
    repo: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("http://{addr}/hooks/{kind}/{repo}"))
        .body(body);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let resp = req.send().await.unwrap();
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// GitHub's default webhook content type, and Gitea's and Forgejo's "form" option:
/// `payload=<urlencoded JSON>`, GitHub signing the form body, Gitea and Forgejo the JSON.
#[tokio::test]
async fn form_encoded_deliveries_are_verified_as_each_forge_signs_them() {
    let env = TestServer::builder().build().await;
    let state = &env.state;
    let addr = env.serve_routes().await;
    for (kind, push_fixture) in [
        (ForgeKind::Github, "github/push.json"),
        (ForgeKind::Gitea, "gitea/push.json"),
        (ForgeKind::Forgejo, "forgejo/push.json"),
    ] {
        let mut git = GitRepo::bare();
        let d = adapt_fixture(
            &mut git,
            kind,
            "push",
            push_fixture,
            &[(".slipway.yml", PIPELINE)],
            &[(".slipway.yml", PIPELINE)],
        );
        let name = format!("form/{kind}");
        let repo = register(state, &name, store_forge(kind), &git.url(), "main", true).await;

        // The hook's first delivery. GitHub sends a `ping`; Gitea and Forgejo have no
        // ping event (their "Test delivery" is a push, below), so an event they send
        // that starts nothing, `create`, is acknowledged in its place.
        let (event, payload) = match kind {
            ForgeKind::Github => ("ping", fixture("github/ping.json")),
            _ => ("create", fixture("gitea/create.json")),
        };
        let (headers, body) = form_delivery(kind, event, "first", &payload, Some(SECRET));
        assert!(body.starts_with(b"payload=%7B"), "{kind}: a form body");
        let (status, answer) = post_hook(addr, kind, &name, &headers, body).await;
        assert_eq!(status, StatusCode::OK, "{kind}: {answer}");
        match kind {
            ForgeKind::Github => assert_eq!(answer, json!({ "ping": true, "duplicate": false })),
            _ => assert!(
                answer["ignored"].as_str().unwrap().contains("create"),
                "{kind}: {answer}"
            ),
        }

        // A push becomes a run on the commit it names.
        let (headers, body) = form_delivery(kind, "push", "push-1", &d.body, Some(SECRET));
        let (status, answer) = post_hook(addr, kind, &name, &headers, body).await;
        assert_eq!(
            (status, &answer),
            (StatusCode::ACCEPTED, &json!({ "run": 1 })),
            "{kind}"
        );
        let run = state.store.get_run_by_number(repo.id, 1).await.unwrap();
        assert_eq!(run.sha, d.head.to_string(), "{kind}");
        assert_eq!(run.branch, d.event.branch, "{kind}");

        // Forged: signed with another secret.
        let (headers, body) = form_delivery(kind, "push", "forged", &d.body, Some("not it"));
        let (status, answer) = post_hook(addr, kind, &name, &headers, body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{kind}: {answer}");
        assert_eq!(answer["error"]["code"], "unauthorized");

        // Signed over the wrong bytes: each forge's signature covers exactly what it
        // signs, the form body (GitHub) or the JSON in it (Gitea, Forgejo), not the other.
        let form = form_body(&d.body);
        let other_bytes: &[u8] = match kind {
            ForgeKind::Github => &d.body,
            _ => &form,
        };
        let headers: Vec<(String, String)> =
            forge_headers(kind, "push", "wrong-bytes", other_bytes, Some(SECRET))
                .into_iter()
                .map(|(k, v)| match k.as_str() {
                    "content-type" => (k, "application/x-www-form-urlencoded".into()),
                    _ => (k, v),
                })
                .collect();
        let (status, answer) = post_hook(addr, kind, &name, &headers, form.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{kind}: {answer}");

        // A form without its `payload` field. GitHub signs the form body, so it is
        // verified, then refused as malformed (400); Gitea and Forgejo sign the field
        // itself, so without it nothing can be verified (401). Both say why.
        let no_payload = b"payloads=%7B%7D&x=1".to_vec();
        let headers: Vec<(String, String)> =
            forge_headers(kind, "push", "no-payload", &no_payload, Some(SECRET))
                .into_iter()
                .map(|(k, v)| match k.as_str() {
                    "content-type" => (k, "application/x-www-form-urlencoded".into()),
                    _ => (k, v),
                })
                .collect();
        let (status, answer) = post_hook(addr, kind, &name, &headers, no_payload).await;
        let expected = match kind {
            ForgeKind::Github => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNAUTHORIZED,
        };
        assert_eq!(status, expected, "{kind}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("form-encoded body has no `payload` field"),
            "{kind}: {message}"
        );

        // Only the push made a run, and no refused delivery was recorded: each of their
        // ids, delivered properly, is new.
        assert_eq!(runs(state, &repo).await.len(), 1, "{kind}");
        for id in ["forged", "wrong-bytes", "no-payload"] {
            let (headers, body) = form_delivery(kind, "push", id, &d.body, Some(SECRET));
            let (status, answer) = post_hook(addr, kind, &name, &headers, body).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{kind} {id}: {answer}");
        }
    }
}

// ------------------------------------------------------------ what a parser needs

/// Ignored actions are acknowledged from their action alone; handled ones must carry
/// every field Slipway reads, and the 400 names the missing one.
#[tokio::test]
async fn ignored_actions_need_only_their_action_and_handled_ones_every_field() {
    let env = TestServer::builder().build().await;
    let state = &env.state;
    let git = GitRepo::bare();
    let mut repos = Vec::new();
    for kind in [
        ForgeKind::Github,
        ForgeKind::Gitlab,
        ForgeKind::Gitea,
        ForgeKind::Forgejo,
    ] {
        let name = format!("strict/{kind}");
        repos.push(register(state, &name, store_forge(kind), &git.url(), "main", true).await);
    }
    let stripped: &[(ForgeKind, &str, Value, &str)] = &[
        (
            ForgeKind::Github,
            "pull_request",
            json!({ "action": "closed" }),
            "closed",
        ),
        (
            ForgeKind::Github,
            "pull_request",
            json!({ "action": "labeled", "number": 3 }),
            "labeled",
        ),
        (
            ForgeKind::Gitlab,
            "Merge Request Hook",
            json!({ "object_kind": "merge_request", "object_attributes": { "action": "close" } }),
            "close",
        ),
        (
            ForgeKind::Gitlab,
            "Merge Request Hook",
            json!({ "object_kind": "merge_request", "object_attributes": { "action": "merge" } }),
            "merge",
        ),
        (
            ForgeKind::Gitlab,
            "Merge Request Hook",
            json!({ "object_attributes": { "action": "approved" } }),
            "approved",
        ),
        (
            ForgeKind::Gitea,
            "pull_request",
            json!({ "action": "closed" }),
            "closed",
        ),
        (
            ForgeKind::Forgejo,
            "pull_request",
            json!({ "action": "label_updated" }),
            "label_updated",
        ),
        // A branch deletion needs no more than its ref and `after`.
        (
            ForgeKind::Gitea,
            "push",
            json!({ "ref": "refs/heads/gone", "after": "0".repeat(40) }),
            "deleted",
        ),
    ];
    for (i, (kind, event, payload, reason)) in stripped.iter().enumerate() {
        let name = format!("strict/{kind}");
        let body = serde_json::to_vec(payload).unwrap();
        let (status, answer) = deliver(state, *kind, &name, event, &format!("s-{i}"), &body).await;
        assert_eq!(status, StatusCode::OK, "{kind} {payload}: {answer}");
        assert!(
            answer["ignored"].as_str().unwrap().contains(reason),
            "{kind} {payload}: {answer}"
        );
    }

    // Handled actions: a missing field Slipway reads is a 400 that names it.
    let remove = |file: &str, path: &[&str]| {
        let mut v: Value = serde_json::from_slice(&fixture(file)).unwrap();
        let (last, parents) = path.split_last().unwrap();
        let mut at = &mut v;
        for p in parents {
            at = &mut at[*p];
        }
        at.as_object_mut()
            .unwrap()
            .remove(*last)
            .expect("the field exists");
        serde_json::to_vec(&v).unwrap()
    };
    let missing: &[(ForgeKind, &str, &str, &[&str], &str)] = &[
        (
            ForgeKind::Github,
            "pull_request",
            "github/pull_request_opened.json",
            &["pull_request", "head"],
            "pull_request: missing field `head`",
        ),
        (
            ForgeKind::Github,
            "push",
            "github/push.json",
            &["repository", "full_name"],
            "repository: missing field `full_name`",
        ),
        (
            ForgeKind::Gitlab,
            "Merge Request Hook",
            "gitlab/merge_request_open.json",
            &["object_attributes", "last_commit"],
            "object_attributes: missing field `last_commit`",
        ),
        (
            ForgeKind::Gitlab,
            "Push Hook",
            "gitlab/push.json",
            &["project", "path_with_namespace"],
            "project: missing field `path_with_namespace`",
        ),
        (
            ForgeKind::Gitea,
            "pull_request",
            "gitea/pull_request_opened.json",
            &["pull_request", "head"],
            "pull_request: missing field `head`",
        ),
        (
            ForgeKind::Forgejo,
            "pull_request",
            "forgejo/pull_request_opened.json",
            &["pull_request", "base", "sha"],
            "pull_request.base: missing field `sha`",
        ),
    ];
    for (i, (kind, event, file, path, expected)) in missing.iter().enumerate() {
        let name = format!("strict/{kind}");
        let body = remove(file, path);
        let (status, answer) = deliver(state, *kind, &name, event, &format!("m-{i}"), &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{file}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{file}: {message}");
    }
    for repo in &repos {
        assert!(runs(state, repo).await.is_empty(), "{}", repo.name);
    }
}

// ------------------------------------------------------------ which repository

/// The payload's repository in each forge's shape: its path and clone URL.
fn set_repository(kind: ForgeKind, body: &[u8], path: &str, clone_url: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(body).unwrap();
    match kind {
        ForgeKind::Gitlab => {
            v["project"]["path_with_namespace"] = json!(path);
            v["project"]["git_http_url"] = json!(clone_url);
        }
        _ => {
            v["repository"]["full_name"] = json!(path);
            v["repository"]["clone_url"] = json!(clone_url);
        }
    }
    serde_json::to_vec(&v).unwrap()
}

/// An organisation-level hook reusing one repository's secret signs every repository's
/// pushes with it: only those about the registered repository (by path on the forge,
/// or by clone URL) are filed under it.
#[tokio::test]
async fn a_signed_push_for_another_repository_is_refused_and_nothing_recorded() {
    let env = TestServer::builder().build().await;
    let state = &env.state;
    let addr = env.serve_routes().await;
    for (kind, event, push_fixture) in [
        (ForgeKind::Github, "push", "github/push.json"),
        (ForgeKind::Gitlab, "Push Hook", "gitlab/push.json"),
        (ForgeKind::Gitea, "push", "gitea/push.json"),
        (ForgeKind::Forgejo, "push", "forgejo/push.json"),
    ] {
        let mut git = GitRepo::bare();
        let d = adapt_fixture(
            &mut git,
            kind,
            event,
            push_fixture,
            &[(".slipway.yml", PIPELINE)],
            &[(".slipway.yml", PIPELINE)],
        );
        let name = format!("team/app-{kind}");
        let repo = register(state, &name, store_forge(kind), &git.url(), "main", true).await;

        // Another repository of the same organisation, correctly signed: refused.
        let other = set_repository(
            kind,
            &d.body,
            "team/other",
            "https://forge.example/team/other.git",
        );
        let headers = forge_headers(kind, event, "org-1", &other, Some(SECRET));
        let (status, answer) = post_hook(addr, kind, &name, &headers, other).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{kind}: {answer}");
        assert_eq!(
            answer["error"]["message"],
            format!("payload is for repository team/other, this hook is for {name}"),
            "{kind}"
        );
        assert!(runs(state, &repo).await.is_empty(), "{kind}: no run");

        // The registered repository's own push — by path on the forge, in another
        // case, from another clone URL (e.g. SSH registered, HTTPS in the payload)…
        let own = set_repository(
            kind,
            &d.body,
            &name.to_uppercase(),
            "https://forge.example/elsewhere.git",
        );
        let headers = forge_headers(kind, event, "own-1", &own, Some(SECRET));
        let (status, answer) = post_hook(addr, kind, &name, &headers, own).await;
        assert_eq!(
            (status, &answer),
            (StatusCode::ACCEPTED, &json!({ "run": 1 })),
            "{kind}"
        );
        // …or by clone URL, the repository being registered under another name than
        // its path on the forge (the fixture's path is not `team/app-…`). The refused
        // delivery's id was not recorded: delivered so, it is new.
        assert_ne!(d.event.repository.to_lowercase(), name, "{kind}");
        let headers = forge_headers(kind, event, "org-1", &d.body, Some(SECRET));
        let (status, answer) = post_hook(addr, kind, &name, &headers, d.body.clone()).await;
        assert_eq!(
            (status, &answer),
            (StatusCode::ACCEPTED, &json!({ "run": 2 })),
            "{kind}"
        );
        assert_eq!(runs(state, &repo).await.len(), 2, "{kind}");
    }

    // A repository renamed on the forge: its pushes carry the new path and clone URL,
    // refused until the registration's clone URL is updated (what `slipway repo edit
    // --clone-url` sends), then filed under the repository as registered.
    let name = format!("team/app-{}", ForgeKind::Github);
    let repo = state.store.get_repo_by_name(&name).await.unwrap();
    let renamed_url = "https://forge.example/team/renamed.git";
    let mut git = GitRepo::bare();
    let d = adapt_fixture(
        &mut git,
        ForgeKind::Github,
        "push",
        "github/push.json",
        &[(".slipway.yml", PIPELINE)],
        &[(".slipway.yml", PIPELINE)],
    );
    let renamed = set_repository(ForgeKind::Github, &d.body, "team/renamed", renamed_url);
    let headers = forge_headers(
        ForgeKind::Github,
        "push",
        "renamed-1",
        &renamed,
        Some(SECRET),
    );
    let (status, answer) =
        post_hook(addr, ForgeKind::Github, &name, &headers, renamed.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    let admin = env.token("admin", TokenScope::Admin).await;
    let edited = reqwest::Client::new()
        .patch(format!("http://{addr}/api/repos/{name}"))
        .bearer_auth(&admin)
        .json(&json!({ "clone_url": renamed_url }))
        .send()
        .await
        .unwrap();
    assert!(edited.status().is_success(), "{}", edited.status());
    let (status, answer) = post_hook(addr, ForgeKind::Github, &name, &headers, renamed).await;
    assert_eq!(
        (status, answer),
        (StatusCode::ACCEPTED, json!({ "run": 3 }))
    );
    assert_eq!(runs(state, &repo).await.len(), 3);
}

// ------------------------------------------------------------ size limits, real sockets

/// One HTTP/1.1 message (head and a `content-length` body) read off `stream`: a
/// server's response here, a client's request in [`stand_in`].
async fn read_message(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(head_end) = text.find("\r\n\r\n") {
            let len = text[..head_end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= head_end + 4 + len {
                break;
            }
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn oversized_bodies_get_413_without_being_buffered() {
    const CAP: usize = 1024 * 1024;
    let env = TestServer::builder()
        .settings(Settings {
            max_webhook_bytes: Some(CAP),
            ..Settings::default()
        })
        .build()
        .await;
    let state = &env.state;
    let (_git, repo, d) = github_repo(&env).await;
    let addr = env.serve_routes().await;
    let sig = forge_headers(ForgeKind::Github, "push", "big", &d.body, Some(SECRET));
    let extra: String = sig.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();

    // 1. A Content-Length over the cap: refused before a byte of the body is sent.
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(
        format!(
            "POST /hooks/github/octo-org/hello-world HTTP/1.1\r\nhost: x\r\n{extra}content-length: {}\r\n\r\n",
            100 * 1024 * 1024
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), read_message(&mut rd))
        .await
        .expect("413 before the body");
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("payload_too_large"), "{resp}");

    // 2. 100 MB chunked, no length, from a generator: the answer arrives while the
    //    client is still sending, and the server stops reading far short of 100 MB.
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let sent = Arc::new(AtomicU64::new(0));
    let sent_w = sent.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(
            format!("POST /hooks/github/octo-org/hello-world HTTP/1.1\r\nhost: x\r\n{extra}transfer-encoding: chunked\r\n\r\n").as_bytes(),
        )
        .await?;
        let chunk = vec![b'a'; 64 * 1024];
        let framed = [
            format!("{:x}\r\n", chunk.len()).into_bytes(),
            chunk,
            b"\r\n".to_vec(),
        ]
        .concat();
        for _ in 0..(100 * 1024 * 1024 / (64 * 1024)) {
            wr.write_all(&framed).await?;
            sent_w.fetch_add(framed.len() as u64, Ordering::Relaxed);
        }
        wr.write_all(b"0\r\n\r\n").await?;
        Ok::<_, std::io::Error>(())
    });
    let resp = tokio::time::timeout(Duration::from_secs(30), read_message(&mut rd))
        .await
        .expect("a response");
    let sent_at_response = sent.load(Ordering::Relaxed);
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    drop(rd);
    let result = tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .expect("writer stops")
        .unwrap();
    let total = sent.load(Ordering::Relaxed);
    // The server closed the connection instead of draining 100 MB: the writer failed,
    // having pushed at most the cap plus what socket buffers hold.
    assert!(
        result.is_err(),
        "the server read the whole body ({total} bytes)"
    );
    assert!(
        sent_at_response < 40 * 1024 * 1024,
        "{sent_at_response} bytes sent before the 413"
    );
    assert!(
        total < 60 * 1024 * 1024,
        "{total} bytes accepted by the server side"
    );
    assert!(runs(state, &repo).await.is_empty());
}

async fn a_thousand_concurrent_copies_make_one_run(db: Dialect) {
    let env = TestServer::builder().on(db).build().await;
    let state = &env.state;
    let (_git, repo, d) = github_repo(&env).await;
    let addr = env.serve_routes().await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let headers = forge_headers(ForgeKind::Github, "push", "the-one", &d.body, Some(SECRET));
    let url = format!("http://{addr}/hooks/github/octo-org/hello-world");
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let mut req = client.post(&url).body(d.body.clone());
            for (k, v) in &headers {
                req = req.header(k, v);
            }
            tokio::spawn(async move {
                let resp = req.send().await.unwrap();
                let status = resp.status();
                let body: Value = resp.json().await.unwrap();
                (status, body)
            })
        })
        .collect();
    let mut accepted = 0;
    let mut duplicates = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status.as_u16() {
            202 => {
                accepted += 1;
                assert_eq!(body, json!({ "run": 1 }));
            }
            200 => {
                duplicates += 1;
                assert_eq!(body, json!({ "duplicate": true }));
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((accepted, duplicates), (1, 999));
    assert_eq!(runs(state, &repo).await.len(), 1);
}

// ------------------------------------------------------------ plain git

/// A token of `scope`, for the repository `team/app` when it is a hook token.
async fn hook_token(state: &server::daemon::state::AppState, scope: TokenScope) -> String {
    let token = generate_token("slw");
    let repos = match scope {
        TokenScope::Hook => store::RepoScope::Repos(vec!["team/app".into()]),
        _ => store::RepoScope::All,
    };
    state
        .store
        .create_scoped_token_by("test", "hook", &hash_token(&token), scope, &repos)
        .await
        .unwrap();
    token
}

async fn post_git(
    state: &server::daemon::state::AppState,
    repo: &str,
    token: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    let mut req = axum::http::Request::post(format!("/hooks/git/{repo}"))
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    send(
        state,
        req.body(axum::body::Body::from(body.to_string())).unwrap(),
    )
    .await
}

#[tokio::test]
async fn plain_git_hook_creates_one_run_per_ref() {
    let env = TestServer::builder().build().await;
    let state = &env.state;
    let mut git = GitRepo::bare();
    let base = git.commit("refs/heads/main", &[], &[(".slipway.yml", PIPELINE)], "one");
    let main = git.commit(
        "refs/heads/main",
        &[base],
        &[(".slipway.yml", PIPELINE), ("a", "b")],
        "two",
    );
    let tag = git.commit(
        "refs/tags/v1",
        &[main],
        &[(".slipway.yml", PIPELINE)],
        "three",
    );
    let repo = register(
        state,
        "team/app",
        store::ForgeKind::Git,
        &git.url(),
        "main",
        true,
    )
    .await;
    let zero = "0".repeat(40);
    let updates = json!({ "updates": [
        { "old": base.to_string(), "new": main.to_string(), "ref": "refs/heads/main" },
        { "old": zero, "new": tag.to_string(), "ref": "refs/tags/v1" },
        { "old": main.to_string(), "new": zero, "ref": "refs/heads/gone" },
        { "old": zero, "new": main.to_string(), "ref": "refs/notes/commits" },
    ]});

    let (status, _) = post_git(state, "team/app", None, updates.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let runner = hook_token(state, TokenScope::Runner).await;
    let (status, _) = post_git(state, "team/app", Some(&runner), updates.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(runs(state, &repo).await.is_empty());

    let token = hook_token(state, TokenScope::Hook).await;
    let (status, body) = post_git(state, "team/app", Some(&token), updates.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results[0]["run"], 1);
    assert_eq!(results[1]["run"], 2);
    assert!(results[2]["ignored"].as_str().unwrap().contains("deleted"));
    assert!(results[3]["ignored"].as_str().unwrap().contains("neither"));

    let push = state.store.get_run_by_number(repo.id, 1).await.unwrap();
    assert_eq!((push.trigger, push.event), (Trigger::Hook, Event::Push));
    assert_eq!(push.branch.as_deref(), Some("main"));
    assert_eq!(push.before_sha, Some(base.to_string()));
    assert!(push.trusted);
    let tag_run = state.store.get_run_by_number(repo.id, 2).await.unwrap();
    assert_eq!(
        (
            tag_run.event,
            tag_run.tag.as_deref(),
            tag_run.before_sha.as_deref()
        ),
        (Event::Tag, Some("v1"), None)
    );

    // Re-sent: acknowledged, no new runs.
    let (status, body) = post_git(state, "team/app", Some(&token), updates).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["duplicate"], true);
    assert_eq!(runs(state, &repo).await.len(), 2);

    // Malformed lines: 400, nothing stored.
    for bad in [
        json!({ "updates": [{ "old": "x", "new": main.to_string(), "ref": "refs/heads/main" }] }),
        json!({ "updates": [{ "old": zero, "new": main.to_string(), "ref": "refs/heads/a..b" }] }),
        json!({ "nope": [] }),
    ] {
        let (status, body) = post_git(state, "team/app", Some(&token), bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
    // A webhook-forge repository cannot be fed through the plain-git route.
    register(
        state,
        "gh/app",
        store::ForgeKind::Github,
        &git.url(),
        "main",
        true,
    )
    .await;
    // (An admin token may name any repository; the hook token only its own.)
    let admin = hook_token(state, TokenScope::Admin).await;
    let (status, _) = post_git(state, "gh/app", Some(&admin), json!({ "updates": [] })).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = post_git(state, "gh/app", Some(&token), json!({ "updates": [] })).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // Both runs plan from the real repository.
    let report = server::workers::planner::plan_pending(state).await.unwrap();
    assert_eq!(report.planned, 2, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slipway_hook_posts_the_post_receive_lines() {
    let env = TestServer::builder().build().await;
    let state = &env.state;
    let mut git = GitRepo::bare();
    let one = git.commit(
        "refs/heads/main",
        &[],
        &[(".slipway.yml", PIPELINE)],
        "first commit",
    );
    let two = git.commit(
        "refs/heads/main",
        &[one],
        &[(".slipway.yml", PIPELINE), ("x", "y")],
        "second commit\n\nbody",
    );
    let repo = register(
        state,
        "team/app",
        store::ForgeKind::Git,
        &git.url(),
        "main",
        true,
    )
    .await;
    let token = hook_token(state, TokenScope::Hook).await;
    let addr = env.serve_routes().await;
    let git_dir = git.path.clone();

    let hook = |token: &str, input: String| {
        let token = token.to_string();
        let git_dir = git_dir.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let mut child = slipway()
                    .args([
                        "hook",
                        "--server",
                        &format!("http://{addr}"),
                        "--repo",
                        "team/app",
                    ])
                    .env("SLIPWAY_TOKEN", token)
                    // Like git running the hook in the bare repository.
                    .env("GIT_DIR", &git_dir)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(input.as_bytes())
                    .unwrap();
                child.wait_with_output().unwrap()
            })
            .await
            .unwrap()
        }
    };
    let lines = format!("{one} {two} refs/heads/main\n");
    let out = hook(&token, lines.clone()).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("refs/heads/main → run #1"), "{stdout}");
    let run = state.store.get_run_by_number(repo.id, 1).await.unwrap();
    assert_eq!(run.sha, two.to_string());
    assert_eq!(run.trigger, Trigger::Hook);
    // The message and author came from `git show` in the repository.
    assert!(
        run.message.starts_with("second commit"),
        "{:?}",
        run.message
    );
    assert_eq!(run.author, "Dev");

    let out = hook(&token, lines.clone()).await;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("already triggered"));

    let out = hook("slw_not_a_token", lines).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("refused") && stderr.contains("401"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("slw_not_a_token"),
        "the token is never echoed: {stderr}"
    );
    assert_eq!(runs(state, &repo).await.len(), 1);
}

/// A stand-in Slipway server answering the plain-git hook with `answers` in turn (the
/// last one for every request after), counting the requests.
async fn stand_in(answers: Vec<(u16, &'static str)>) -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst) as usize;
            let (status, body) = answers[n.min(answers.len() - 1)];
            // Read the request (head and a small JSON body) before answering.
            read_message(&mut conn).await;
            let response = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(response.as_bytes()).await;
        }
    });
    (addr, seen)
}

fn hook_to(addr: std::net::SocketAddr) -> std::process::Output {
    let mut child = slipway()
        .args([
            "hook",
            "--server",
            &format!("http://{addr}"),
            "--repo",
            "team/app",
        ])
        .env("SLIPWAY_TOKEN", "slp_not_checked_by_the_stand_in")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sha = "1".repeat(40);
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{} {sha} refs/heads/main\n", "0".repeat(40)).as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The push has happened when the hook runs: a server that cannot take the notification
/// yet (its disk full, draining) is asked again, and a refusal that will not change is
/// not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_git_hook_retries_a_server_that_cannot_take_the_push_yet() {
    const FULL: &str = r#"{"error":{"code":"disk_full","message":"the data dir is full"}}"#;
    const TAKEN: &str = r#"{"results":[{"ref":"refs/heads/main","run":7}]}"#;
    let (addr, seen) = stand_in(vec![(507, FULL), (503, "draining"), (200, TAKEN)]).await;
    let out = tokio::task::spawn_blocking(move || hook_to(addr))
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("refs/heads/main → run #7"), "{stdout}");
    assert_eq!(seen.load(Ordering::SeqCst), 3);
    assert!(
        stderr.contains("(HTTP 507); trying again in 1s"),
        "{stderr}"
    );
    assert!(
        stderr.contains("(HTTP 503); trying again in 2s"),
        "{stderr}"
    );

    // A refusal that a retry cannot change is reported at once.
    const BAD: &str = r#"{"error":{"code":"unauthorized","message":"bad token"}}"#;
    let (addr, seen) = stand_in(vec![(401, BAD)]).await;
    let out = tokio::task::spawn_blocking(move || hook_to(addr))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("HTTP 401: bad token"),
        "{out:?}"
    );
}
