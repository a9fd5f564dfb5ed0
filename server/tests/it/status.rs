//! Run state changes reach each forge's commit status API as documented.

use server::crypto::generate_webhook_secret;
use server::daemon::state::forge_token_aad;
use server::store::{Event, ForgeKind, NewRepo, NewRun, NewStage, Trigger};
use server::workers::commit_status::Follower;

use crate::support::forge::FakeForge;
use crate::support::test_server::TestServer;

/// Registers `team/app` on `forge` with `clone_url`, creates a run and settles it with
/// no stages (the store marks it success), then lets a follower report what happened:
/// the commit and the number of statuses sent.
pub(crate) async fn report(forge: ForgeKind, clone_url: &str) -> (String, usize) {
    let server = TestServer::builder().build().await;
    let state = &server.state;
    let name = "team/app";
    let repo = state
        .store
        .create_repo(NewRepo {
            api_url: None,
            name: name.into(),
            forge,
            clone_url: clone_url.into(),
            default_branch: "main".into(),
            webhook_secret_enc: state.secret_box.seal(
                generate_webhook_secret().as_bytes(),
                &server::daemon::state::webhook_secret_aad(name),
            ),
            forge_token_enc: Some(
                state
                    .secret_box
                    .seal(b"forge-token-123", &forge_token_aad(name)),
            ),
            trusted: true,
        })
        .await
        .unwrap();
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let run = state
        .store
        .create_run(
            repo.id,
            NewRun::new(Trigger::Manual, Event::Manual, "refs/heads/main", sha),
        )
        .await
        .unwrap();
    state
        .store
        .set_run_planned(run.id, &serde_json::json!([]), "abc", Vec::new())
        .await
        .unwrap();
    let mut follower = Follower::starting_at(0);
    let sent = follower.step(state).await.unwrap();
    // A second pass re-reads the window but must not report the same events again.
    let again = follower.step(state).await.unwrap();
    assert_eq!(again, 0, "events were reported twice");
    (sha.to_string(), sent)
}

#[tokio::test]
async fn gitea_gets_token_auth_and_its_state_names() {
    let forge = FakeForge::start().await;
    let (sha, sent) = report(ForgeKind::Gitea, &format!("{}/team/app.git", forge.url)).await;
    assert_eq!(sent, 1);
    let last = forge.last();
    assert_eq!(last.method, "POST");
    assert_eq!(last.path, format!("/api/v1/repos/team/app/statuses/{sha}"));
    assert_eq!(last.header("authorization"), "token forge-token-123");
    assert_eq!(last.json()["state"], "success");
    // A run that ended without stages: one status for the run's event.
    assert_eq!(last.json()["context"], "slipway/manual");
    assert!(
        last.json()["target_url"]
            .as_str()
            .unwrap()
            .ends_with("/repos/team/app/runs/1")
    );
}

#[tokio::test]
async fn github_gets_bearer_auth() {
    let forge = FakeForge::start().await;
    let (sha, _) = report(ForgeKind::Github, &format!("{}/team/app.git", forge.url)).await;
    let last = forge.last();
    assert_eq!(last.path, format!("/api/v3/repos/team/app/statuses/{sha}"));
    assert_eq!(last.header("authorization"), "Bearer forge-token-123");
    assert_eq!(last.json()["state"], "success");
}

#[tokio::test]
async fn gitlab_gets_private_token_and_an_encoded_project_path() {
    let forge = FakeForge::start().await;
    let (sha, _) = report(ForgeKind::Gitlab, &format!("{}/team/app.git", forge.url)).await;
    let last = forge.last();
    assert_eq!(
        last.path,
        format!("/api/v4/projects/team%2Fapp/statuses/{sha}")
    );
    assert_eq!(last.header("private-token"), "forge-token-123");
    assert_eq!(last.json()["state"], "success");
    assert_eq!(last.json()["name"], "slipway/manual");
    // The branch name: `refs/heads/main` would start a separate external pipeline.
    assert_eq!(last.json()["ref"], "main");
}

#[tokio::test]
async fn an_api_url_override_serves_mirrors_cloned_from_a_path() {
    let forge = FakeForge::start().await;
    let base = &forge.url;
    let server = TestServer::builder().build().await;
    let state = &server.state;
    let repo = state
        .store
        .create_repo(NewRepo {
            api_url: None,
            name: "team/app".into(),
            forge: ForgeKind::Gitea,
            clone_url: "/srv/git/team/app.git".into(),
            default_branch: "main".into(),
            webhook_secret_enc: Vec::new(),
            forge_token_enc: Some(state.secret_box.seal(b"t0k", &forge_token_aad("team/app"))),
            trusted: false,
        })
        .await
        .unwrap();
    let repo = state
        .store
        .set_repo_api_url(repo.id, Some(&format!("{base}/gitea/api/v1")))
        .await
        .unwrap();
    assert_eq!(
        repo.api_url.as_deref(),
        Some(format!("{base}/gitea/api/v1").as_str())
    );
    let sha = "89abcdef0123456789abcdef0123456789abcdef";
    let run = state
        .store
        .create_run(
            repo.id,
            NewRun::new(Trigger::Manual, Event::Manual, "refs/heads/main", sha),
        )
        .await
        .unwrap();
    state
        .store
        .set_run_planned(
            run.id,
            &serde_json::json!([]),
            "abc",
            vec![NewStage::new("ci/test", &[], &["unit"])],
        )
        .await
        .unwrap();
    let mut reported = Default::default();
    let sent = server::workers::commit_status::report_run(state, run.id, &mut reported)
        .await
        .unwrap();
    assert_eq!(sent, 1);
    let seen = forge.requests();
    assert_eq!(
        seen[0].path,
        format!("/gitea/api/v1/repos/team/app/statuses/{sha}")
    );
    assert_eq!(seen[0].json()["state"], "pending");
    // Nothing changed: nothing is sent again.
    let again = server::workers::commit_status::report_run(state, run.id, &mut reported)
        .await
        .unwrap();
    assert_eq!(again, 0);
}

/// A push run and a pull-request run of the same commit, each with two pipelines: four
/// statuses, none overwriting another.
#[tokio::test]
async fn push_and_pull_request_runs_of_one_commit_keep_their_own_statuses() {
    let forge = FakeForge::start().await;
    let server = TestServer::builder().build().await;
    let state = &server.state;
    let repo = state
        .store
        .create_repo(NewRepo {
            api_url: Some(format!("{}/api/v3", forge.url)),
            name: "team/app".into(),
            forge: ForgeKind::Github,
            clone_url: "git@github.example:team/app.git".into(),
            default_branch: "main".into(),
            webhook_secret_enc: Vec::new(),
            forge_token_enc: Some(state.secret_box.seal(b"t0k", &forge_token_aad("team/app"))),
            trusted: false,
        })
        .await
        .unwrap();
    let sha = "89abcdef0123456789abcdef0123456789abcdef";
    for (event, git_ref) in [
        (Event::Push, "refs/heads/feature"),
        (Event::PullRequest, "refs/pull/4/head"),
    ] {
        let run = state
            .store
            .create_run(repo.id, NewRun::new(Trigger::Webhook, event, git_ref, sha))
            .await
            .unwrap();
        let mut build = NewStage::new("build/compile", &[], &["make"]);
        build.pipeline = "build".into();
        let mut lint = NewStage::new("lint/fmt", &[], &["fmt"]);
        lint.pipeline = "lint".into();
        state
            .store
            .set_run_planned(run.id, &serde_json::json!([]), "abc", vec![build, lint])
            .await
            .unwrap();
    }
    let mut follower = Follower::starting_at(0);
    assert_eq!(follower.step(state).await.unwrap(), 4);
    let mut contexts: Vec<String> = forge
        .requests()
        .iter()
        .map(|r| {
            assert_eq!(r.path, format!("/api/v3/repos/team/app/statuses/{sha}"));
            r.json()["context"].as_str().unwrap().to_string()
        })
        .collect();
    contexts.sort();
    assert_eq!(
        contexts,
        [
            "slipway/build/pull_request",
            "slipway/build/push",
            "slipway/lint/pull_request",
            "slipway/lint/push"
        ]
    );
}

#[tokio::test]
async fn plain_git_repositories_report_nothing() {
    let forge = FakeForge::start().await;
    let (_, sent) = report(ForgeKind::Git, &format!("{}/team/app.git", forge.url)).await;
    assert_eq!(sent, 0);
    assert!(forge.requests().is_empty());
}
