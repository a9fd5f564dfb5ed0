//! Forge adapters: signature verification, payload parsing against documented payload
//! shapes (fixtures under `tests/fixtures/forge/`), and commit-status requests checked
//! on a real local HTTP server.
//!
//! Long on purpose: one test per behaviour of this area, each written out end to end;
//! the set-up they share is in `support/`.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use proptest::prelude::*;
use serde_json::{Value, json};
use server::forge::form::FormError;
use server::forge::{
    self, CommitStatus, DeliveryError, Event, ForgeEvent, ForgeKind, Parsed, PayloadError,
    PrAction, State, StatusError, StatusReporter, StatusTarget, VerifyError,
};

use crate::support::forge::{FakeForge, fixture, form_body, hmac_hex, parse_event as event};
use crate::support::process::free_port;

// ---------------------------------------------------------------- helpers

fn fixture_json(path: &str) -> Value {
    serde_json::from_slice(&fixture(path)).expect("fixture is JSON")
}

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

fn ignored(kind: ForgeKind, name: &str, body: &[u8]) -> String {
    match forge::parse(kind, name, body) {
        Ok(Parsed::Ignored { reason }) => reason,
        other => panic!("{kind} {name}: expected Ignored, got {other:?}"),
    }
}

fn to_body(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

const SECRET: &[u8] = b"s3cr3t-webhook-key";

// ---------------------------------------------------------------- ForgeKind

#[test]
fn forge_kind_round_trips_through_str_display_and_serde() {
    for kind in ForgeKind::ALL {
        let s = kind.to_string();
        assert_eq!(s.parse::<ForgeKind>().unwrap(), kind);
        assert_eq!(serde_json::to_value(kind).unwrap(), json!(s));
        assert_eq!(serde_json::from_value::<ForgeKind>(json!(s)).unwrap(), kind);
    }
    assert_eq!("GitHub".parse::<ForgeKind>().unwrap(), ForgeKind::Github);
    assert_eq!(
        "bitbucket-dc".parse::<ForgeKind>().unwrap(),
        ForgeKind::BitbucketDc
    );
    assert_eq!(
        serde_json::to_value(ForgeKind::BitbucketDc).unwrap(),
        json!("bitbucket-dc")
    );
    let err = "sourcehut".parse::<ForgeKind>().unwrap_err();
    assert!(err.to_string().contains("sourcehut"), "{err}");
}

// ---------------------------------------------------------------- verification

#[test]
fn hmac_forges_accept_a_valid_signature_and_reject_everything_else() {
    let body = fixture("github/push.json");
    let good = hmac_hex(SECRET, &body);
    let other = hmac_hex(b"another secret", &body);
    let cases = [
        (ForgeKind::Github, "x-hub-signature-256", "sha256="),
        (ForgeKind::Gitea, "x-gitea-signature", ""),
        (ForgeKind::Forgejo, "x-forgejo-signature", ""),
    ];
    for (kind, header, prefix) in cases {
        let with = |sig: &str| headers(&[(header, &format!("{prefix}{sig}"))]);

        assert_eq!(
            forge::verify(kind, &with(&good), &body, SECRET),
            Ok(()),
            "{kind}"
        );
        // Upper-case hex is still the same tag.
        assert_eq!(
            forge::verify(kind, &with(&good.to_uppercase()), &body, SECRET),
            Ok(()),
            "{kind}"
        );
        assert_eq!(
            forge::verify(kind, &with(&other), &body, SECRET),
            Err(VerifyError::Mismatch),
            "{kind}: wrong secret"
        );
        let mut tampered = body.clone();
        tampered[10] ^= 1;
        assert_eq!(
            forge::verify(kind, &with(&good), &tampered, SECRET),
            Err(VerifyError::Mismatch),
            "{kind}: tampered body"
        );
        assert_eq!(
            forge::verify(kind, &HeaderMap::new(), &body, SECRET),
            Err(VerifyError::MissingHeader { header }),
            "{kind}: missing"
        );
        for bad_len in [&good[..62], &format!("{good}00")[..], ""] {
            assert!(
                matches!(
                    forge::verify(kind, &with(bad_len), &body, SECRET),
                    Err(VerifyError::MalformedHeader { header: h, .. }) if h == header
                ),
                "{kind}: wrong length {}",
                bad_len.len()
            );
        }
        let not_hex = "zz".repeat(32);
        assert!(
            matches!(
                forge::verify(kind, &with(&not_hex), &body, SECRET),
                Err(VerifyError::MalformedHeader { .. })
            ),
            "{kind}: not hex"
        );
        assert_eq!(
            forge::verify(kind, &with(&good), &body, b""),
            Err(VerifyError::EmptySecret),
            "{kind}: empty secret"
        );
    }
}

#[test]
fn github_signature_needs_its_sha256_prefix() {
    let body = b"{}";
    let sig = hmac_hex(SECRET, body);
    let h = headers(&[("x-hub-signature-256", &sig)]);
    assert!(matches!(
        forge::verify(ForgeKind::Github, &h, body, SECRET),
        Err(VerifyError::MalformedHeader { .. })
    ));
    // The legacy SHA-1 header alone is not accepted.
    let h = headers(&[("x-hub-signature", &format!("sha1={sig}"))]);
    assert_eq!(
        forge::verify(ForgeKind::Github, &h, body, SECRET),
        Err(VerifyError::MissingHeader {
            header: "x-hub-signature-256"
        })
    );
}

/// Form deliveries: GitHub's signature covers the form body as sent, Gitea's and
/// Forgejo's the JSON inside it; JSON bodies are verified and returned as they are.
#[test]
fn open_verifies_what_each_forge_signs_and_returns_the_json() {
    let json = fixture("gitea/push.json");
    let form = form_body(&json);
    let form_headers = |pairs: &[(&str, &str)]| {
        let mut h = headers(pairs);
        h.insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"),
        );
        h
    };
    let form_bytes = bytes::Bytes::from(form.clone());

    // GitHub: the HMAC of the raw form body.
    let sig = format!("sha256={}", hmac_hex(SECRET, &form));
    let h = form_headers(&[("x-hub-signature-256", &sig)]);
    let opened = forge::open(ForgeKind::Github, &h, &form_bytes, SECRET).unwrap();
    assert_eq!(opened.as_ref(), json.as_slice());
    let sig = format!("sha256={}", hmac_hex(SECRET, &json));
    let h = form_headers(&[("x-hub-signature-256", &sig)]);
    assert_eq!(
        forge::open(ForgeKind::Github, &h, &form_bytes, SECRET),
        Err(DeliveryError::Unverified(VerifyError::Mismatch))
    );

    // Gitea and Forgejo: the HMAC of the decoded `payload` field.
    for (kind, header) in [
        (ForgeKind::Gitea, "x-gitea-signature"),
        (ForgeKind::Forgejo, "x-forgejo-signature"),
    ] {
        let h = form_headers(&[(header, &hmac_hex(SECRET, &json))]);
        let opened = forge::open(kind, &h, &form_bytes, SECRET).unwrap();
        assert_eq!(opened.as_ref(), json.as_slice(), "{kind}");
        let h = form_headers(&[(header, &hmac_hex(SECRET, &form))]);
        assert_eq!(
            forge::open(kind, &h, &form_bytes, SECRET),
            Err(DeliveryError::Unverified(VerifyError::Mismatch)),
            "{kind}"
        );
        // No `payload` field: nothing that they sign, so not verifiable.
        let empty = bytes::Bytes::from_static(b"x=1");
        let h = form_headers(&[(header, &hmac_hex(SECRET, b"x=1"))]);
        let err = forge::open(kind, &h, &empty, SECRET).unwrap_err();
        assert_eq!(
            err,
            DeliveryError::Unverified(VerifyError::UnsignedForm(FormError::NoPayload)),
            "{kind}"
        );
        assert!(err.to_string().contains("no `payload` field"), "{err}");
    }

    // GitHub without a `payload` field: verified (the form body is signed), then 400.
    let empty = bytes::Bytes::from_static(b"payload2=x");
    let sig = format!("sha256={}", hmac_hex(SECRET, b"payload2=x"));
    let h = form_headers(&[("x-hub-signature-256", &sig)]);
    assert_eq!(
        forge::open(ForgeKind::Github, &h, &empty, SECRET),
        Err(DeliveryError::Form(FormError::NoPayload))
    );
    // …but an unsigned one is refused as unsigned first.
    let h = form_headers(&[]);
    assert!(matches!(
        forge::open(ForgeKind::Github, &h, &empty, SECRET),
        Err(DeliveryError::Unverified(VerifyError::MissingHeader { .. }))
    ));

    // JSON (no or another Content-Type) is verified and returned as it is; GitLab's
    // token signs nothing, so its body is the payload whatever the Content-Type says.
    let json_bytes = bytes::Bytes::from(json.clone());
    let h = headers(&[("x-gitea-signature", &hmac_hex(SECRET, &json))]);
    assert_eq!(
        forge::open(ForgeKind::Gitea, &h, &json_bytes, SECRET).unwrap(),
        json_bytes
    );
    let gl_token = std::str::from_utf8(SECRET).unwrap();
    let h = form_headers(&[("x-gitlab-token", gl_token)]);
    assert_eq!(
        forge::open(ForgeKind::Gitlab, &h, &json_bytes, SECRET).unwrap(),
        json_bytes
    );
}

#[test]
fn forgejo_falls_back_to_the_gitea_header_but_a_bad_forgejo_signature_wins() {
    let body = fixture("forgejo/push.json");
    let good = hmac_hex(SECRET, &body);
    let bad = hmac_hex(b"nope", &body);
    let only_gitea = headers(&[("x-gitea-signature", &good)]);
    assert_eq!(
        forge::verify(ForgeKind::Forgejo, &only_gitea, &body, SECRET),
        Ok(())
    );
    let both = headers(&[("x-forgejo-signature", &bad), ("x-gitea-signature", &good)]);
    assert_eq!(
        forge::verify(ForgeKind::Forgejo, &both, &body, SECRET),
        Err(VerifyError::Mismatch)
    );
    // Gitea itself does not look at the Forgejo header.
    let only_forgejo = headers(&[("x-forgejo-signature", &good)]);
    assert_eq!(
        forge::verify(ForgeKind::Gitea, &only_forgejo, &body, SECRET),
        Err(VerifyError::MissingHeader {
            header: "x-gitea-signature"
        })
    );
}

#[test]
fn gitlab_token_is_compared_exactly() {
    let body = fixture("gitlab/push.json");
    let secret = "gl-webhook-token";
    let ok = headers(&[("x-gitlab-token", secret)]);
    assert_eq!(
        forge::verify(ForgeKind::Gitlab, &ok, &body, secret.as_bytes()),
        Ok(())
    );
    for wrong in [
        "gl-webhook-tokeN",
        "gl-webhook-toke",
        "gl-webhook-token-and-more",
        "x",
    ] {
        let h = headers(&[("x-gitlab-token", wrong)]);
        assert_eq!(
            forge::verify(ForgeKind::Gitlab, &h, &body, secret.as_bytes()),
            Err(VerifyError::Mismatch),
            "{wrong}"
        );
    }
    assert_eq!(
        forge::verify(
            ForgeKind::Gitlab,
            &HeaderMap::new(),
            &body,
            secret.as_bytes()
        ),
        Err(VerifyError::MissingHeader {
            header: "x-gitlab-token"
        })
    );
    // An empty configured secret must not match an empty header.
    let empty = headers(&[("x-gitlab-token", "")]);
    assert_eq!(
        forge::verify(ForgeKind::Gitlab, &empty, &body, b""),
        Err(VerifyError::EmptySecret)
    );
}

#[test]
fn plain_git_is_not_a_signed_webhook() {
    let err = forge::verify(ForgeKind::Git, &HeaderMap::new(), b"", SECRET).unwrap_err();
    assert_eq!(err, VerifyError::Unsupported(ForgeKind::Git));
    assert!(err.to_string().contains("API token"), "{err}");
    assert_eq!(
        forge::parse(ForgeKind::Git, "push", b"{}"),
        Err(PayloadError::Unsupported(ForgeKind::Git))
    );
}

#[test]
fn verify_errors_never_echo_the_signature() {
    let sig = "sha256=".to_string() + &"ab".repeat(32);
    let h = headers(&[("x-hub-signature-256", &sig)]);
    let err = forge::verify(ForgeKind::Github, &h, b"{}", SECRET).unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains(&"ab".repeat(32)), "{text}");
    assert!(!text.contains("s3cr3t"), "{text}");
}

// ---------------------------------------------------------------- request metadata

#[test]
fn delivery_ids_and_event_names_come_from_each_forges_headers() {
    let h = headers(&[
        ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ("x-github-event", "push"),
    ]);
    assert_eq!(
        forge::delivery_id(ForgeKind::Github, &h).as_deref(),
        Some("72d3162e-cc78-11e3-81ab-4c9367dc0958")
    );
    assert_eq!(
        forge::event_name(ForgeKind::Github, &h).as_deref(),
        Some("push")
    );

    // GitLab: Idempotency-Key is stable across retries; X-Gitlab-Event-UUID is shared
    // by recursive hooks, so it is only the fallback for GitLab < 17.4.
    let both = headers(&[
        (
            "x-gitlab-event-uuid",
            "13792a34-cac6-4fda-95a8-c58e00a3954e",
        ),
        ("idempotency-key", "f5e5f430-f57b-4e6e-9fac-d9128cd7232f"),
        ("x-gitlab-event", "Merge Request Hook"),
    ]);
    assert_eq!(
        forge::delivery_id(ForgeKind::Gitlab, &both).as_deref(),
        Some("f5e5f430-f57b-4e6e-9fac-d9128cd7232f")
    );
    let old = headers(&[(
        "x-gitlab-event-uuid",
        "13792a34-cac6-4fda-95a8-c58e00a3954e",
    )]);
    assert_eq!(
        forge::delivery_id(ForgeKind::Gitlab, &old).as_deref(),
        Some("13792a34-cac6-4fda-95a8-c58e00a3954e")
    );
    assert_eq!(
        forge::event_name(ForgeKind::Gitlab, &both).as_deref(),
        Some("Merge Request Hook")
    );

    // Gitea sends X-Gitea-*, plus GitHub/Gogs-compatible copies we do not rely on.
    let gitea = headers(&[
        ("x-gitea-delivery", "f6266f16-1bf3-46a5-9ea4-602e06ead473"),
        ("x-gitea-event", "pull_request"),
        ("x-github-event", "push"),
    ]);
    assert_eq!(
        forge::delivery_id(ForgeKind::Gitea, &gitea).as_deref(),
        Some("f6266f16-1bf3-46a5-9ea4-602e06ead473")
    );
    assert_eq!(
        forge::event_name(ForgeKind::Gitea, &gitea).as_deref(),
        Some("pull_request")
    );

    let forgejo = headers(&[
        ("x-forgejo-delivery", "a-forgejo-id"),
        ("x-forgejo-event", "push"),
        ("x-gitea-delivery", "a-gitea-id"),
        ("x-gitea-event", "create"),
    ]);
    assert_eq!(
        forge::delivery_id(ForgeKind::Forgejo, &forgejo).as_deref(),
        Some("a-forgejo-id")
    );
    assert_eq!(
        forge::event_name(ForgeKind::Forgejo, &forgejo).as_deref(),
        Some("push")
    );
    // Forgejo falls back to the Gitea copies.
    assert_eq!(
        forge::delivery_id(ForgeKind::Forgejo, &gitea).as_deref(),
        Some("f6266f16-1bf3-46a5-9ea4-602e06ead473")
    );

    // Absent, empty and absurdly long ids are not ids.
    assert_eq!(
        forge::delivery_id(ForgeKind::Github, &HeaderMap::new()),
        None
    );
    assert_eq!(
        forge::delivery_id(ForgeKind::Github, &headers(&[("x-github-delivery", "")])),
        None
    );
    let long = "a".repeat(129);
    assert_eq!(
        forge::delivery_id(ForgeKind::Github, &headers(&[("x-github-delivery", &long)])),
        None
    );
    assert_eq!(forge::delivery_id(ForgeKind::Git, &h), None);
    assert_eq!(forge::event_name(ForgeKind::Git, &h), None);
}

// ---------------------------------------------------------------- GitHub payloads

#[test]
fn github_push_to_a_branch() {
    let e = event(ForgeKind::Github, "push", &fixture("github/push.json"));
    assert_eq!(e.kind, Event::Push);
    assert_eq!(e.git_ref, "refs/heads/main");
    assert_eq!(e.branch.as_deref(), Some("main"));
    assert_eq!(e.tag, None);
    assert_eq!(
        e.before.as_deref(),
        Some("6113728f27ae82c7b1a177c8d03f9e96e0adf246")
    );
    assert_eq!(e.after, "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c");
    assert_eq!(e.clone_url, "https://github.com/octo-org/hello-world.git");
    assert_eq!(e.pr, None);
    assert_eq!(
        e.message,
        "Fix the flaky login test\n\nThe timeout was too short on CI."
    );
    assert_eq!(e.author, "monalisa");
    assert!(!e.deleted);
}

#[test]
fn github_push_creating_a_branch_has_no_before() {
    let e = event(
        ForgeKind::Github,
        "push",
        &fixture("github/push_new_branch.json"),
    );
    assert_eq!(e.kind, Event::Push);
    assert_eq!(e.branch.as_deref(), Some("feature/login"));
    assert_eq!(e.before, None);
    assert_eq!(e.after, "a3c5e9b0f7d2c4e6a8b0c2d4e6f8a0b2c4d6e8f0");
    assert_eq!(e.author, "hubot");
}

#[test]
fn github_tag_push_becomes_a_tag_event_on_the_tagged_commit() {
    let e = event(ForgeKind::Github, "push", &fixture("github/push_tag.json"));
    assert_eq!(e.kind, Event::Tag);
    assert_eq!(e.git_ref, "refs/tags/v1.4.0");
    assert_eq!(e.tag.as_deref(), Some("v1.4.0"));
    assert_eq!(e.branch, None);
    assert_eq!(e.before, None);
    // `after` in the payload is the annotated tag object; the run builds the commit.
    assert_eq!(e.after, "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c");
    assert_eq!(e.message, "Release 1.4.0");
}

#[test]
fn github_pull_request_opened_from_the_same_repository() {
    let e = event(
        ForgeKind::Github,
        "pull_request",
        &fixture("github/pull_request_opened.json"),
    );
    assert_eq!(e.kind, Event::PullRequest);
    assert_eq!(e.git_ref, "refs/pull/42/head");
    assert_eq!(e.branch.as_deref(), Some("main"));
    assert_eq!(e.after, "a3c5e9b0f7d2c4e6a8b0c2d4e6f8a0b2c4d6e8f0");
    assert_eq!(e.before, None);
    assert_eq!(e.clone_url, "https://github.com/octo-org/hello-world.git");
    assert_eq!(e.message, "Rework the login flow");
    assert_eq!(e.author, "hubot");
    let pr = e.pr.expect("pr details");
    assert_eq!(pr.number, 42);
    assert_eq!(pr.action, PrAction::Opened);
    assert_eq!(pr.source_branch, "feature/login");
    assert_eq!(pr.target_branch, "main");
    assert_eq!(pr.head_sha, "a3c5e9b0f7d2c4e6a8b0c2d4e6f8a0b2c4d6e8f0");
    assert_eq!(
        pr.head_clone_url,
        "https://github.com/octo-org/hello-world.git"
    );
    assert!(!pr.fork);
    assert_eq!(
        pr.base_sha.as_deref(),
        Some("0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c")
    );
}

#[test]
fn github_pull_request_synchronize_from_a_fork() {
    let e = event(
        ForgeKind::Github,
        "pull_request",
        &fixture("github/pull_request_synchronize_fork.json"),
    );
    assert_eq!(e.kind, Event::PullRequest);
    assert_eq!(e.git_ref, "refs/pull/57/head");
    assert_eq!(
        e.before.as_deref(),
        Some("1111111111111111111111111111111111111111")
    );
    assert_eq!(e.after, "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00");
    assert_eq!(e.author, "outsider");
    let pr = e.pr.unwrap();
    assert_eq!(pr.action, PrAction::Synchronized);
    assert!(pr.fork);
    assert_eq!(pr.source_branch, "patch-1");
    assert_eq!(
        pr.head_clone_url,
        "https://github.com/outsider/hello-world.git"
    );
}

#[test]
fn github_pull_request_fork_detection_uses_repository_ids_not_the_fork_flag() {
    // A same-repo PR inside a repository that is itself a fork: `head.repo.fork` is
    // true, but the PR is not from another repository.
    let mut v = fixture_json("github/pull_request_opened.json");
    v["pull_request"]["head"]["repo"]["fork"] = json!(true);
    v["pull_request"]["base"]["repo"]["fork"] = json!(true);
    let e = event(ForgeKind::Github, "pull_request", &to_body(&v));
    assert!(!e.pr.unwrap().fork);

    // A deleted fork (`head.repo: null`) is untrusted and falls back to the base URL.
    let mut v = fixture_json("github/pull_request_synchronize_fork.json");
    v["pull_request"]["head"]["repo"] = Value::Null;
    let e = event(ForgeKind::Github, "pull_request", &to_body(&v));
    let pr = e.pr.unwrap();
    assert!(pr.fork);
    assert_eq!(
        pr.head_clone_url,
        "https://github.com/octo-org/hello-world.git"
    );
}

#[test]
fn github_reopened_pull_request_runs_and_other_actions_are_ignored() {
    let mut v = fixture_json("github/pull_request_opened.json");
    v["action"] = json!("reopened");
    let e = event(ForgeKind::Github, "pull_request", &to_body(&v));
    assert_eq!(e.pr.unwrap().action, PrAction::Reopened);

    for action in [
        "closed",
        "labeled",
        "edited",
        "review_requested",
        "assigned",
    ] {
        v["action"] = json!(action);
        let reason = ignored(ForgeKind::Github, "pull_request", &to_body(&v));
        assert!(reason.contains(action), "{reason}");
    }
}

#[test]
fn github_ping_create_deletions_and_unknown_events() {
    assert_eq!(
        forge::parse(ForgeKind::Github, "ping", &fixture("github/ping.json")),
        Ok(Parsed::Ping)
    );
    let reason = ignored(
        ForgeKind::Github,
        "create",
        &fixture("github/create_tag.json"),
    );
    assert!(reason.contains("push"), "{reason}");
    let reason = ignored(
        ForgeKind::Github,
        "push",
        &fixture("github/push_delete.json"),
    );
    assert!(reason.contains("deleted"), "{reason}");
    // Deletion recognised from the all-zero `after` alone, too.
    let mut v = fixture_json("github/push_delete.json");
    v["deleted"] = json!(false);
    ignored(ForgeKind::Github, "push", &to_body(&v));
    let reason = ignored(ForgeKind::Github, "issues", br#"{"action":"opened"}"#);
    assert!(reason.contains("issues"), "{reason}");
    // A push to a ref that is neither a branch nor a tag.
    let mut v = fixture_json("github/push.json");
    v["ref"] = json!("refs/notes/commits");
    ignored(ForgeKind::Github, "push", &to_body(&v));
}

// ---------------------------------------------------------------- GitLab payloads

#[test]
fn gitlab_push_hook() {
    let e = event(ForgeKind::Gitlab, "Push Hook", &fixture("gitlab/push.json"));
    assert_eq!(e.kind, Event::Push);
    assert_eq!(e.git_ref, "refs/heads/master");
    assert_eq!(e.branch.as_deref(), Some("master"));
    assert_eq!(
        e.before.as_deref(),
        Some("95790bf891e76fee5e1747ab589903a6a1f80f22")
    );
    assert_eq!(e.after, "da1560886d4f094c3e6c9ef40349f7d38b5d27d7");
    assert_eq!(e.clone_url, "http://example.com/mike/diaspora.git");
    assert_eq!(e.message, "fixed readme");
    assert_eq!(e.author, "jsmith");
}

#[test]
fn gitlab_tag_push_hook_builds_the_checkout_sha() {
    let e = event(
        ForgeKind::Gitlab,
        "Tag Push Hook",
        &fixture("gitlab/tag_push.json"),
    );
    assert_eq!(e.kind, Event::Tag);
    assert_eq!(e.tag.as_deref(), Some("v1.0.0"));
    assert_eq!(e.branch, None);
    assert_eq!(e.before, None);
    assert_eq!(e.after, "5937ac0a7beb003549fc5fd26fc247adbce4a52e");
    assert_eq!(e.clone_url, "http://example.com/jsmith/example.git");

    // Tag deletion: `after` all zeros, `checkout_sha` null.
    let mut v = fixture_json("gitlab/tag_push.json");
    v["before"] = v["after"].clone();
    v["after"] = json!("0000000000000000000000000000000000000000");
    v["checkout_sha"] = Value::Null;
    let reason = ignored(ForgeKind::Gitlab, "Tag Push Hook", &to_body(&v));
    assert!(reason.contains("deleted"), "{reason}");
}

#[test]
fn gitlab_merge_request_opened() {
    let e = event(
        ForgeKind::Gitlab,
        "Merge Request Hook",
        &fixture("gitlab/merge_request_open.json"),
    );
    assert_eq!(e.kind, Event::PullRequest);
    assert_eq!(e.git_ref, "refs/merge-requests/1/head");
    assert_eq!(e.branch.as_deref(), Some("master"));
    assert_eq!(e.after, "da1560886d4f094c3e6c9ef40349f7d38b5d27d7");
    assert_eq!(e.before, None);
    assert_eq!(
        e.clone_url,
        "http://example.com/awesome_space/awesome_project.git"
    );
    assert_eq!(e.message, "MS-Viewport");
    assert_eq!(e.author, "root");
    let pr = e.pr.unwrap();
    assert_eq!(pr.number, 1);
    assert_eq!(pr.action, PrAction::Opened);
    assert_eq!(pr.source_branch, "ms-viewport");
    assert_eq!(pr.target_branch, "master");
    assert!(!pr.fork);
    assert_eq!(pr.base_sha, None);
}

#[test]
fn gitlab_merge_request_update_with_new_commits_from_a_fork() {
    let e = event(
        ForgeKind::Gitlab,
        "Merge Request Hook",
        &fixture("gitlab/merge_request_update_fork.json"),
    );
    assert_eq!(e.git_ref, "refs/merge-requests/7/head");
    assert_eq!(
        e.before.as_deref(),
        Some("95790bf891e76fee5e1747ab589903a6a1f80f22")
    );
    assert_eq!(e.after, "4b825dc642cb6eb9a060e54bf8d69288fbee4904");
    assert_eq!(
        e.clone_url,
        "https://gitlab.example.com/awesome_space/tools/awesome_project.git"
    );
    assert_eq!(e.author, "outsider");
    let pr = e.pr.unwrap();
    assert_eq!(pr.action, PrAction::Synchronized);
    assert!(pr.fork);
    assert_eq!(
        pr.head_clone_url,
        "https://gitlab.example.com/outsider/awesome_project.git"
    );
}

#[test]
fn gitlab_merge_request_actions_that_do_not_run() {
    let mut v = fixture_json("gitlab/merge_request_update_fork.json");
    // An update without new code (title, labels, …) has no `oldrev`.
    v["object_attributes"]
        .as_object_mut()
        .unwrap()
        .remove("oldrev");
    let reason = ignored(ForgeKind::Gitlab, "Merge Request Hook", &to_body(&v));
    assert!(reason.contains("without new commits"), "{reason}");
    for action in ["close", "merge", "approved", "unapproved", "approval"] {
        v["object_attributes"]["action"] = json!(action);
        let reason = ignored(ForgeKind::Gitlab, "Merge Request Hook", &to_body(&v));
        assert!(reason.contains(action), "{reason}");
    }
    v["object_attributes"]["action"] = json!("reopen");
    let e = event(ForgeKind::Gitlab, "Merge Request Hook", &to_body(&v));
    assert_eq!(e.pr.unwrap().action, PrAction::Reopened);
}

#[test]
fn gitlab_system_hook_dispatches_on_object_kind_and_unknown_hooks_are_ignored() {
    let e = event(
        ForgeKind::Gitlab,
        "System Hook",
        &fixture("gitlab/push.json"),
    );
    assert_eq!(e.kind, Event::Push);
    let e = event(
        ForgeKind::Gitlab,
        "System Hook",
        &fixture("gitlab/merge_request_open.json"),
    );
    assert_eq!(e.kind, Event::PullRequest);
    ignored(
        ForgeKind::Gitlab,
        "System Hook",
        br#"{"object_kind":"project_create"}"#,
    );
    ignored(
        ForgeKind::Gitlab,
        "Pipeline Hook",
        br#"{"object_kind":"pipeline"}"#,
    );
    ignored(ForgeKind::Gitlab, "Note Hook", b"{}");
}

#[test]
fn gitlab_branch_deletion_is_ignored() {
    let mut v = fixture_json("gitlab/push.json");
    v["after"] = json!("0000000000000000000000000000000000000000");
    v["checkout_sha"] = Value::Null;
    v["commits"] = json!([]);
    ignored(ForgeKind::Gitlab, "Push Hook", &to_body(&v));
}

// ---------------------------------------------------------------- Gitea / Forgejo payloads

#[test]
fn gitea_push() {
    let e = event(ForgeKind::Gitea, "push", &fixture("gitea/push.json"));
    assert_eq!(e.kind, Event::Push);
    assert_eq!(e.branch.as_deref(), Some("develop"));
    assert_eq!(
        e.before.as_deref(),
        Some("28e1879d029cb852e4844d9c718537df08844e03")
    );
    assert_eq!(e.after, "bffeb74224043ba2feb48d137756c8a9331c449a");
    assert_eq!(e.clone_url, "https://gitea.example.com/gitea/webhooks.git");
    assert_eq!(e.message, "Webhooks Yay!\n");
    assert_eq!(e.author, "gitea");
}

#[test]
fn gitea_tag_push_builds_the_head_commit() {
    let e = event(ForgeKind::Gitea, "push", &fixture("gitea/push_tag.json"));
    assert_eq!(e.kind, Event::Tag);
    assert_eq!(e.tag.as_deref(), Some("v2.0.0"));
    assert_eq!(e.after, "bffeb74224043ba2feb48d137756c8a9331c449a");
    assert_eq!(e.before, None);
}

#[test]
fn gitea_pull_requests() {
    let e = event(
        ForgeKind::Gitea,
        "pull_request",
        &fixture("gitea/pull_request_opened.json"),
    );
    assert_eq!(e.kind, Event::PullRequest);
    assert_eq!(e.git_ref, "refs/pull/3/head");
    assert_eq!(e.branch.as_deref(), Some("main"));
    assert_eq!(e.after, "bffeb74224043ba2feb48d137756c8a9331c449a");
    assert_eq!(e.clone_url, "https://gitea.example.com/gitea/webhooks.git");
    assert_eq!(e.message, "Document the webhooks");
    let pr = e.pr.unwrap();
    assert_eq!(pr.number, 3);
    assert_eq!(pr.action, PrAction::Opened);
    assert_eq!(pr.source_branch, "feature/docs");
    assert!(!pr.fork);
    assert_eq!(
        pr.base_sha.as_deref(),
        Some("28e1879d029cb852e4844d9c718537df08844e03")
    );

    let e = event(
        ForgeKind::Gitea,
        "pull_request",
        &fixture("gitea/pull_request_synchronized_fork.json"),
    );
    assert_eq!(e.author, "contributor");
    let pr = e.pr.unwrap();
    assert_eq!(pr.action, PrAction::Synchronized);
    assert!(pr.fork);
    assert_eq!(pr.head_sha, "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
    assert_eq!(
        pr.head_clone_url,
        "https://gitea.example.com/contributor/webhooks.git"
    );

    let mut v = fixture_json("gitea/pull_request_opened.json");
    v["action"] = json!("reopened");
    assert_eq!(
        event(ForgeKind::Gitea, "pull_request", &to_body(&v))
            .pr
            .unwrap()
            .action,
        PrAction::Reopened
    );
    // GitHub's spelling is not Gitea's: `synchronize` is not a Gitea action.
    for action in [
        "closed",
        "label_updated",
        "edited",
        "synchronize",
        "reviewed",
    ] {
        v["action"] = json!(action);
        ignored(ForgeKind::Gitea, "pull_request", &to_body(&v));
    }
}

#[test]
fn gitea_create_delete_deletions_and_unknown_events_are_ignored() {
    let reason = ignored(ForgeKind::Gitea, "create", &fixture("gitea/create.json"));
    assert!(reason.contains("push"), "{reason}");
    ignored(
        ForgeKind::Gitea,
        "delete",
        br#"{"ref":"old","ref_type":"branch","pusher_type":"user"}"#,
    );
    ignored(ForgeKind::Gitea, "issues", b"{}");
    let mut v = fixture_json("gitea/push.json");
    v["after"] = json!("0000000000000000000000000000000000000000");
    v["head_commit"] = Value::Null;
    ignored(ForgeKind::Gitea, "push", &to_body(&v));
}

#[test]
fn forgejo_uses_the_gitea_payloads() {
    let e = event(ForgeKind::Forgejo, "push", &fixture("forgejo/push.json"));
    assert_eq!(e.kind, Event::Push);
    assert_eq!(
        e.clone_url,
        "https://codeberg.example.org/gitea/webhooks.git"
    );
    let e = event(
        ForgeKind::Forgejo,
        "pull_request",
        &fixture("forgejo/pull_request_opened.json"),
    );
    assert_eq!(e.git_ref, "refs/pull/9/head");
    assert_eq!(e.after, "8d7c6b5a4938271605f4e3d2c1b0a99887766554");
    assert!(!e.pr.unwrap().fork);
    let reason = ignored(ForgeKind::Forgejo, "create", &fixture("gitea/create.json"));
    assert!(reason.starts_with("forgejo"), "{reason}");
}

#[test]
fn every_parser_names_the_repository_the_payload_is_about() {
    for (kind, name, file, repository) in [
        (
            ForgeKind::Github,
            "push",
            "github/push.json",
            "octo-org/hello-world",
        ),
        (
            ForgeKind::Github,
            "pull_request",
            "github/pull_request_synchronize_fork.json",
            "octo-org/hello-world",
        ),
        (
            ForgeKind::Gitlab,
            "Push Hook",
            "gitlab/push.json",
            "mike/diaspora",
        ),
        (
            ForgeKind::Gitlab,
            "Tag Push Hook",
            "gitlab/tag_push.json",
            "jsmith/example",
        ),
        (
            ForgeKind::Gitlab,
            "Merge Request Hook",
            "gitlab/merge_request_update_fork.json",
            // The target project, not the fork the MR comes from.
            "awesome_space/tools/awesome_project",
        ),
        (
            ForgeKind::Gitea,
            "push",
            "gitea/push.json",
            "gitea/webhooks",
        ),
        (
            ForgeKind::Gitea,
            "pull_request",
            "gitea/pull_request_synchronized_fork.json",
            "gitea/webhooks",
        ),
        (
            ForgeKind::Forgejo,
            "push",
            "forgejo/push.json",
            "gitea/webhooks",
        ),
        (
            ForgeKind::Forgejo,
            "pull_request",
            "forgejo/pull_request_opened.json",
            "gitea/webhooks",
        ),
    ] {
        assert_eq!(
            event(kind, name, &fixture(file)).repository,
            repository,
            "{file}"
        );
    }
    // Present but empty is as bad as absent.
    let mut v = fixture_json("gitea/push.json");
    v["repository"]["full_name"] = json!(" ");
    let err = forge::parse(ForgeKind::Gitea, "push", &to_body(&v)).unwrap_err();
    assert!(
        matches!(
            err,
            PayloadError::Invalid {
                field: "repository.full_name",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn an_event_is_for_its_repository_by_path_or_clone_url() {
    let e = event(ForgeKind::Github, "push", &fixture("github/push.json"));
    assert_eq!(e.clone_url, "https://github.com/octo-org/hello-world.git");
    // By path, in any case, whatever the registered clone URL (e.g. SSH).
    assert!(e.is_for(
        "octo-org/hello-world",
        "git@github.com:octo-org/hello-world.git"
    ));
    assert!(e.is_for("Octo-Org/Hello-World", ""));
    // By clone URL, registered under another name: `.git`, a trailing `/` and case
    // do not matter.
    assert!(e.is_for("ci/hello", "https://github.com/octo-org/hello-world.git"));
    assert!(e.is_for("ci/hello", "https://github.com/Octo-Org/hello-world/"));
    assert!(e.is_for("ci/hello", " https://github.com/octo-org/hello-world "));
    // Another repository of the same owner, by either.
    assert!(!e.is_for("octo-org/hello", "https://github.com/octo-org/hello.git"));
    assert!(!e.is_for(
        "octo-org/hello-world-2",
        "https://github.com/octo-org/hello-world-2"
    ));
    assert!(!e.is_for(
        "ci/hello",
        "https://github.com/octo-org/hello-world.git.evil"
    ));
    // An empty registered URL matches nothing.
    let mut blank = e.clone();
    blank.clone_url = String::new();
    assert!(!blank.is_for("ci/hello", ""));
}

/// Ignored actions are decided from the action (or a push's ref) alone: their payload
/// may lack everything else. Handled ones need every field Slipway reads.
#[test]
fn parsers_decide_on_the_action_before_reading_the_rest() {
    let zero = "0".repeat(40);
    let sha = "a".repeat(40);
    for (kind, name, payload) in [
        (
            ForgeKind::Github,
            "pull_request",
            json!({ "action": "closed" }),
        ),
        (
            ForgeKind::Github,
            "pull_request",
            json!({ "action": "labeled" }),
        ),
        (
            ForgeKind::Github,
            "pull_request",
            json!({ "action": "edited", "pull_request": null }),
        ),
        (
            ForgeKind::Gitlab,
            "Merge Request Hook",
            json!({ "object_attributes": { "action": "close" } }),
        ),
        (
            ForgeKind::Gitlab,
            "Merge Request Hook",
            json!({ "object_attributes": { "action": "merge" } }),
        ),
        (
            ForgeKind::Gitlab,
            "Merge Request Hook",
            json!({ "object_attributes": { "action": "approved" } }),
        ),
        (
            ForgeKind::Gitlab,
            "Merge Request Hook",
            json!({ "object_attributes": { "action": "update" } }),
        ),
        (
            ForgeKind::Gitlab,
            "System Hook",
            json!({ "object_kind": "merge_request", "object_attributes": { "action": "merge" } }),
        ),
        (
            ForgeKind::Gitea,
            "pull_request",
            json!({ "action": "closed" }),
        ),
        (
            ForgeKind::Forgejo,
            "pull_request",
            json!({ "action": "reviewed" }),
        ),
        (
            ForgeKind::Github,
            "push",
            json!({ "ref": "refs/heads/x", "after": zero, "deleted": true }),
        ),
        (
            ForgeKind::Gitlab,
            "Push Hook",
            json!({ "ref": "refs/heads/x", "after": zero }),
        ),
        (
            ForgeKind::Gitea,
            "push",
            json!({ "ref": "refs/heads/x", "after": zero }),
        ),
        (
            ForgeKind::Forgejo,
            "push",
            json!({ "ref": "refs/notes/commits", "after": sha }),
        ),
    ] {
        ignored(kind, name, &to_body(&payload));
    }
    // A handled action with a field missing: the error names its path.
    for (kind, name, payload, expected) in [
        (
            ForgeKind::Github,
            "pull_request",
            json!({ "action": "opened", "number": 1, "pull_request": { "title": "t" } }),
            "pull_request: missing field `head`",
        ),
        (
            ForgeKind::Gitlab,
            "Merge Request Hook",
            json!({ "object_attributes": { "action": "open" } }),
            "object_attributes: missing field `iid`",
        ),
        (
            ForgeKind::Gitea,
            "pull_request",
            json!({ "action": "synchronized", "number": 1 }),
            "missing field `pull_request`",
        ),
        (
            ForgeKind::Github,
            "push",
            json!({ "ref": "refs/heads/main", "after": sha, "before": zero,
                    "repository": { "id": 1, "clone_url": "u" } }),
            "repository: missing field `full_name`",
        ),
    ] {
        let err = forge::parse(kind, name, &to_body(&payload)).unwrap_err();
        assert!(err.to_string().contains(expected), "{kind} {name}: {err}");
    }
    // The first stage still insists on JSON with an action.
    assert!(forge::parse(ForgeKind::Github, "pull_request", b"{}").is_err());
    assert!(forge::parse(ForgeKind::Gitea, "pull_request", b"action=closed").is_err());
}

#[test]
fn events_survive_a_serde_round_trip() {
    for (kind, name, file) in [
        (
            ForgeKind::Github,
            "pull_request",
            "github/pull_request_synchronize_fork.json",
        ),
        (ForgeKind::Gitlab, "Tag Push Hook", "gitlab/tag_push.json"),
    ] {
        let e = event(kind, name, &fixture(file));
        let stored = serde_json::to_string(&e).unwrap();
        let back: ForgeEvent = serde_json::from_str(&stored).unwrap();
        assert_eq!(back, e);
    }
    let e = event(
        ForgeKind::Github,
        "pull_request",
        &fixture("github/pull_request_opened.json"),
    );
    let v = serde_json::to_value(&e).unwrap();
    assert_eq!(v["kind"], json!("pull_request"));
    assert_eq!(v["pr"]["action"], json!("opened"));
}

// ---------------------------------------------------------------- malformed payloads

#[test]
fn malformed_payloads_are_payload_errors_with_a_reason() {
    // Not JSON at all.
    let err = forge::parse(ForgeKind::Github, "push", b"ref=refs/heads/main").unwrap_err();
    assert!(matches!(err, PayloadError::Json { .. }), "{err:?}");
    assert!(err.to_string().contains("line 1 column"), "{err}");

    // Truncated JSON.
    let body = fixture("gitlab/push.json");
    let err = forge::parse(ForgeKind::Gitlab, "Push Hook", &body[..body.len() / 2]).unwrap_err();
    assert!(matches!(err, PayloadError::Json { .. }), "{err:?}");

    // A required field missing: the message names it.
    let mut v = fixture_json("github/push.json");
    v.as_object_mut().unwrap().remove("after");
    let err = forge::parse(ForgeKind::Github, "push", &to_body(&v)).unwrap_err();
    assert!(err.to_string().contains("missing field `after`"), "{err}");

    let mut v = fixture_json("gitea/pull_request_opened.json");
    v["pull_request"]["head"]
        .as_object_mut()
        .unwrap()
        .remove("sha");
    let err = forge::parse(ForgeKind::Gitea, "pull_request", &to_body(&v)).unwrap_err();
    assert!(err.to_string().contains("missing field `sha`"), "{err}");

    // A wrong type.
    let mut v = fixture_json("gitlab/merge_request_open.json");
    v["object_attributes"]["iid"] = json!("one");
    let err = forge::parse(ForgeKind::Gitlab, "Merge Request Hook", &to_body(&v)).unwrap_err();
    assert!(matches!(err, PayloadError::Json { .. }), "{err:?}");

    // Not a commit id: rejected before it reaches git or a status URL.
    let mut v = fixture_json("github/push.json");
    v["after"] = json!("../../etc/passwd");
    let err = forge::parse(ForgeKind::Github, "push", &to_body(&v)).unwrap_err();
    assert!(
        matches!(err, PayloadError::Invalid { field: "after", .. }),
        "{err:?}"
    );
    let mut v = fixture_json("github/pull_request_opened.json");
    v["pull_request"]["head"]["sha"] = json!("abc");
    let err = forge::parse(ForgeKind::Github, "pull_request", &to_body(&v)).unwrap_err();
    assert!(err.to_string().contains("pull_request.head.sha"), "{err}");

    // An empty branch name in a PR.
    let mut v = fixture_json("gitea/pull_request_opened.json");
    v["pull_request"]["base"]["ref"] = json!("");
    assert!(forge::parse(ForgeKind::Gitea, "pull_request", &to_body(&v)).is_err());

    // Ref and branch names git would refuse never reach a refspec.
    for bad in [
        "refs/heads/main:refs/heads/evil",
        "refs/heads/../../config",
        "refs/heads/a b",
        "refs/heads/x\u{7}y",
        "refs/heads/.hidden",
        "refs/heads/topic.lock",
        "refs/tags/v1@{0}",
        "refs/heads/trailing/",
    ] {
        let mut v = fixture_json("github/push.json");
        v["ref"] = json!(bad);
        let err = forge::parse(ForgeKind::Github, "push", &to_body(&v)).unwrap_err();
        assert!(
            matches!(err, PayloadError::Invalid { field: "ref", .. }),
            "{bad:?}: {err:?}"
        );
    }
    let mut v = fixture_json("gitlab/merge_request_open.json");
    v["object_attributes"]["source_branch"] = json!("feature:main");
    let err = forge::parse(ForgeKind::Gitlab, "Merge Request Hook", &to_body(&v)).unwrap_err();
    assert!(err.to_string().contains("source_branch"), "{err}");
    // Unusual but legal names are fine.
    let mut v = fixture_json("github/push.json");
    v["ref"] = json!("refs/heads/feature/ünïcode-#42_x");
    let e = event(ForgeKind::Github, "push", &to_body(&v));
    assert_eq!(e.branch.as_deref(), Some("feature/ünïcode-#42_x"));

    // A JSON array is not a ping.
    assert!(forge::parse(ForgeKind::Github, "ping", b"not json").is_err());
}

// ---------------------------------------------------------------- never panic

const EVENTS: &[(ForgeKind, &str)] = &[
    (ForgeKind::Github, "push"),
    (ForgeKind::Github, "pull_request"),
    (ForgeKind::Github, "ping"),
    (ForgeKind::Github, "create"),
    (ForgeKind::Gitlab, "Push Hook"),
    (ForgeKind::Gitlab, "Tag Push Hook"),
    (ForgeKind::Gitlab, "Merge Request Hook"),
    (ForgeKind::Gitlab, "System Hook"),
    (ForgeKind::Gitea, "push"),
    (ForgeKind::Gitea, "pull_request"),
    (ForgeKind::Gitea, "create"),
    (ForgeKind::Forgejo, "push"),
    (ForgeKind::Forgejo, "pull_request"),
    (ForgeKind::Git, "push"),
];

const FIXTURES: &[&str] = &[
    "github/push.json",
    "github/push_new_branch.json",
    "github/push_tag.json",
    "github/push_delete.json",
    "github/pull_request_opened.json",
    "github/pull_request_synchronize_fork.json",
    "github/ping.json",
    "github/create_tag.json",
    "gitlab/push.json",
    "gitlab/tag_push.json",
    "gitlab/merge_request_open.json",
    "gitlab/merge_request_update_fork.json",
    "gitea/push.json",
    "gitea/push_tag.json",
    "gitea/create.json",
    "gitea/pull_request_opened.json",
    "gitea/pull_request_synchronized_fork.json",
    "forgejo/push.json",
    "forgejo/pull_request_opened.json",
];

/// Replace every string leaf in turn with hostile values and every value with other
/// JSON types; parse each variant for every forge/event. A deterministic companion to
/// the proptests below, covering structural mutations they rarely reach.
#[test]
fn structurally_mutated_fixtures_never_panic() {
    fn paths(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        out.push(prefix.clone());
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    prefix.push(k.clone());
                    paths(child, prefix, out);
                    prefix.pop();
                }
            }
            Value::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    prefix.push(i.to_string());
                    paths(child, prefix, out);
                    prefix.pop();
                }
            }
            _ => {}
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
        json!(0),
        json!(-1),
        json!(u64::MAX),
        json!(1.5),
        json!(true),
        json!([]),
        json!({}),
        json!("0000000000000000000000000000000000000000"),
        json!("refs/tags/"),
        json!("refs/heads/"),
        json!("é".repeat(300)),
    ];
    let mut runs = 0usize;
    for file in FIXTURES {
        let original = fixture_json(file);
        let mut all = Vec::new();
        paths(&original, &mut Vec::new(), &mut all);
        for path in &all {
            for r in &replacements {
                let mut v = original.clone();
                *at(&mut v, path) = r.clone();
                let body = to_body(&v);
                for (kind, name) in EVENTS {
                    let _ = forge::parse(*kind, name, &body);
                    runs += 1;
                }
            }
        }
    }
    assert!(runs > 10_000, "only {runs} parses");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(
        body in proptest::collection::vec(any::<u8>(), 0..512),
        which in 0..EVENTS.len(),
        name in ".{0,24}",
    ) {
        let (kind, event) = EVENTS[which];
        let _ = forge::parse(kind, event, &body);
        let _ = forge::parse(kind, &name, &body);
    }

    #[test]
    fn parse_never_panics_on_mutated_fixtures(
        file in 0..FIXTURES.len(),
        which in 0..EVENTS.len(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut body = fixture(FIXTURES[file]);
        for (idx, byte) in edits {
            let i = idx.index(body.len());
            body[i] = byte;
        }
        if truncate {
            body.truncate(cut.index(body.len() + 1));
        }
        let (kind, event) = EVENTS[which];
        let _ = forge::parse(kind, event, &body);
    }

    #[test]
    fn verify_never_panics_and_only_accepts_the_real_signature(
        body in proptest::collection::vec(any::<u8>(), 0..256),
        sig in "[ -~]{0,80}",
        kind in 0..ForgeKind::ALL.len(),
    ) {
        let kind = ForgeKind::ALL[kind];
        let real = hmac_hex(SECRET, &body);
        let mut h = HeaderMap::new();
        for name in ["x-hub-signature-256", "x-gitea-signature", "x-forgejo-signature", "x-gitlab-token"] {
            h.insert(name, HeaderValue::from_str(&sig).unwrap());
        }
        let accepted = forge::verify(kind, &h, &body, SECRET).is_ok();
        let is_real = sig.trim().eq_ignore_ascii_case(&real)
            || sig.trim().eq_ignore_ascii_case(&format!("sha256={real}"))
            || sig == std::str::from_utf8(SECRET).unwrap();
        prop_assert!(!accepted || is_real, "accepted a forged signature for {kind}");
    }
}

// ---------------------------------------------------------------- API base derivation

#[test]
fn api_bases_are_derived_from_clone_urls_and_repository_paths() {
    use forge::{api_base_for, clone_host};
    // (kind, clone URL, the repository's path on the forge, API base)
    let cases: &[(ForgeKind, &str, &str, Option<&str>)] = &[
        (
            ForgeKind::Github,
            "https://github.com/octo-org/hello-world.git",
            "octo-org/hello-world",
            Some("https://api.github.com"),
        ),
        (
            ForgeKind::Github,
            "git@github.com:octo-org/hello-world.git",
            "octo-org/hello-world",
            Some("https://api.github.com"),
        ),
        (
            ForgeKind::Github,
            "https://ghe.corp.example/team/app.git",
            "team/app",
            Some("https://ghe.corp.example/api/v3"),
        ),
        (
            ForgeKind::Gitlab,
            "https://gitlab.example.com/group/sub/project.git",
            "group/sub/project",
            Some("https://gitlab.example.com/api/v4"),
        ),
        // GitLab under a relative URL root, a project in two subgroups.
        (
            ForgeKind::Gitlab,
            "https://example.com/gitlab/g1/g2/project.git",
            "g1/g2/project",
            Some("https://example.com/gitlab/api/v4"),
        ),
        (
            ForgeKind::Gitlab,
            "ssh://git@gitlab.example.com:2222/group/project.git",
            "group/project",
            Some("https://gitlab.example.com/api/v4"),
        ),
        (
            ForgeKind::Gitea,
            "http://127.0.0.1:3000/owner/repo.git",
            "owner/repo",
            Some("http://127.0.0.1:3000/api/v1"),
        ),
        (
            ForgeKind::Gitea,
            "https://example.org/git/owner/repo.git",
            "owner/repo",
            Some("https://example.org/git/api/v1"),
        ),
        (
            ForgeKind::Forgejo,
            "https://user:hunter2@codeberg.org/owner/repo.git",
            "owner/repo",
            Some("https://codeberg.org/api/v1"),
        ),
        (
            ForgeKind::Git,
            "https://git.example.com/repo.git",
            "team/repo",
            None,
        ),
        (ForgeKind::Github, "not a url", "team/app", None),
    ];
    for (kind, url, path, base) in cases {
        assert_eq!(
            api_base_for(*kind, url, path).as_deref(),
            *base,
            "{kind} {url}"
        );
    }
    assert_eq!(
        clone_host("http://127.0.0.1:3000/owner/repo.git").as_deref(),
        Some("127.0.0.1:3000")
    );
    assert_eq!(
        clone_host("git@gitlab.example.com:g1/g2/p.git").as_deref(),
        Some("gitlab.example.com")
    );
}

// ---------------------------------------------------------------- status reporting

const SHA: &str = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c";
const TOKEN: &str = "tok_9f8e7d6c5b4a";

fn status(state: State) -> CommitStatus {
    CommitStatus {
        sha: SHA.into(),
        state,
        context: "slipway/ci".into(),
        description: "Build #12 passed".into(),
        target_url: Some("https://ci.example.com/repos/hello-world/runs/12".into()),
        git_ref: Some("main".into()),
    }
}

#[tokio::test]
async fn github_status_request_matches_the_documented_shape() {
    let rec = FakeForge::start().await;
    let base = rec.url.clone();
    let reporter = StatusReporter::new();
    let target = StatusTarget {
        kind: ForgeKind::Github,
        api_base: format!("{base}/"),
        repo_path: "octo-org/hello-world".into(),
        token: TOKEN.into(),
    };
    for (state, expected) in [
        (State::Pending, "pending"),
        (State::Running, "pending"),
        (State::Success, "success"),
        (State::Failure, "failure"),
        (State::Error, "error"),
        (State::Cancelled, "error"),
    ] {
        reporter.report(&target, &status(state)).await.unwrap();
        let r = rec.last();
        assert_eq!(r.method, "POST");
        assert_eq!(
            r.path,
            format!("/repos/octo-org/hello-world/statuses/{SHA}")
        );
        assert_eq!(r.header("authorization"), format!("Bearer {TOKEN}"));
        assert_eq!(r.header("accept"), "application/vnd.github+json");
        assert!(r.header("user-agent").starts_with("slipway/"));
        assert!(r.header("content-type").starts_with("application/json"));
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            body,
            json!({
                "state": expected,
                "target_url": "https://ci.example.com/repos/hello-world/runs/12",
                "description": "Build #12 passed",
                "context": "slipway/ci",
            })
        );
    }

    // Descriptions are cut to GitHub's 140 characters (counted as characters).
    let mut long = status(State::Failure);
    long.description = "é".repeat(200);
    long.target_url = None;
    reporter.report(&target, &long).await.unwrap();
    let body: Value = serde_json::from_slice(&rec.last().body).unwrap();
    let d = body["description"].as_str().unwrap();
    assert_eq!(d.chars().count(), 140);
    assert!(d.ends_with('…'));
    assert!(body.get("target_url").is_none());
}

#[tokio::test]
async fn gitlab_status_request_matches_the_documented_shape() {
    let rec = FakeForge::start().await;
    let base = rec.url.clone();
    let reporter = StatusReporter::new();
    let target = StatusTarget {
        kind: ForgeKind::Gitlab,
        api_base: format!("{base}/api/v4"),
        repo_path: "awesome_space/tools/awesome_project".into(),
        token: TOKEN.into(),
    };
    for (state, expected) in [
        (State::Pending, "pending"),
        (State::Running, "running"),
        (State::Success, "success"),
        (State::Failure, "failed"),
        (State::Error, "failed"),
        (State::Cancelled, "canceled"),
    ] {
        reporter.report(&target, &status(state)).await.unwrap();
        let r = rec.last();
        assert_eq!(r.method, "POST");
        assert_eq!(
            r.path,
            format!("/api/v4/projects/awesome_space%2Ftools%2Fawesome_project/statuses/{SHA}")
        );
        assert_eq!(r.header("private-token"), TOKEN);
        assert!(r.headers.get("authorization").is_none());
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            body,
            json!({
                "state": expected,
                "name": "slipway/ci",
                "ref": "main",
                "target_url": "https://ci.example.com/repos/hello-world/runs/12",
                "description": "Build #12 passed",
            })
        );
    }
}

#[tokio::test]
async fn gitea_and_forgejo_status_requests_match_the_documented_shape() {
    for kind in [ForgeKind::Gitea, ForgeKind::Forgejo] {
        let rec = FakeForge::start().await;
        let base = rec.url.clone();
        let reporter = StatusReporter::new();
        let target = StatusTarget {
            kind,
            api_base: format!("{base}/api/v1"),
            repo_path: "gitea/webhooks".into(),
            token: TOKEN.into(),
        };
        for (state, expected) in [
            (State::Pending, "pending"),
            (State::Running, "pending"),
            (State::Success, "success"),
            (State::Failure, "failure"),
            (State::Error, "error"),
            (State::Cancelled, "error"),
        ] {
            reporter.report(&target, &status(state)).await.unwrap();
            let r = rec.last();
            assert_eq!(r.method, "POST");
            assert_eq!(
                r.path,
                format!("/api/v1/repos/gitea/webhooks/statuses/{SHA}")
            );
            assert_eq!(r.header("authorization"), format!("token {TOKEN}"));
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(
                body,
                json!({
                    "state": expected,
                    "target_url": "https://ci.example.com/repos/hello-world/runs/12",
                    "description": "Build #12 passed",
                    "context": "slipway/ci",
                }),
                "{kind}"
            );
        }
    }
}

#[tokio::test]
async fn status_errors_carry_the_code_and_a_truncated_body_but_never_the_token() {
    let rec = FakeForge::start().await;
    let base = rec.url.clone();
    let reporter = StatusReporter::new();
    let target = StatusTarget {
        kind: ForgeKind::Github,
        api_base: base.clone(),
        repo_path: "octo-org/hello-world".into(),
        token: TOKEN.into(),
    };

    rec.reply(
        StatusCode::INTERNAL_SERVER_ERROR,
        &format!(
            "upstream exploded while handling token {TOKEN}\n{}",
            "x".repeat(5000)
        ),
    );
    let err = reporter
        .report(&target, &status(State::Success))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let StatusError::Http {
        status: code,
        ref body,
        forge: kind,
    } = err
    else {
        panic!("expected Http, got {err:?}")
    };
    assert_eq!(code, 500);
    assert_eq!(kind, ForgeKind::Github);
    assert!(body.chars().count() <= 512, "{}", body.len());
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("500"), "{shown}");
    assert!(!shown.contains(TOKEN), "{shown}");
    assert!(!format!("{target:?}").contains(TOKEN));

    rec.reply(StatusCode::TOO_MANY_REQUESTS, "slow down");
    let err = reporter
        .report(&target, &status(State::Success))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");

    rec.reply(
        StatusCode::UNPROCESSABLE_ENTITY,
        r#"{"message":"Validation Failed"}"#,
    );
    let err = reporter
        .report(&target, &status(State::Success))
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("Validation Failed"), "{err}");

    rec.reply(StatusCode::UNAUTHORIZED, "Bad credentials");
    let err = reporter
        .report(&target, &status(State::Success))
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
}

#[tokio::test]
async fn unreachable_forges_are_retryable_network_errors() {
    // A port that was free: nothing listens on it.
    let port = free_port();
    let target = StatusTarget {
        kind: ForgeKind::Gitea,
        api_base: format!("http://127.0.0.1:{port}/api/v1"),
        repo_path: "gitea/webhooks".into(),
        token: TOKEN.into(),
    };
    let err = StatusReporter::new()
        .report(&target, &status(State::Running))
        .await
        .unwrap_err();
    assert!(matches!(err, StatusError::Network { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(!format!("{err} {err:?}").contains(TOKEN));
}

#[tokio::test]
async fn invalid_status_requests_are_refused_before_any_network_call() {
    let rec = FakeForge::start().await;
    let base = rec.url.clone();
    let reporter = StatusReporter::new();
    let mut target = StatusTarget {
        kind: ForgeKind::Github,
        api_base: base,
        repo_path: "octo-org/hello-world".into(),
        token: TOKEN.into(),
    };
    let mut bad_sha = status(State::Success);
    bad_sha.sha = "main/../../admin".into();
    let err = reporter.report(&target, &bad_sha).await.unwrap_err();
    assert!(matches!(err, StatusError::Invalid { .. }), "{err:?}");
    assert!(!err.is_retryable());

    for path in ["just-a-name", "a/b/c", "/", "../x"] {
        target.repo_path = path.into();
        let err = reporter
            .report(&target, &status(State::Success))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StatusError::Invalid { .. }),
            "{path}: {err:?}"
        );
    }
    target.kind = ForgeKind::Git;
    target.repo_path = "octo-org/hello-world".into();
    let err = reporter
        .report(&target, &status(State::Success))
        .await
        .unwrap_err();
    assert_eq!(err, StatusError::Unsupported(ForgeKind::Git));
    assert!(rec.requests().is_empty());
}
