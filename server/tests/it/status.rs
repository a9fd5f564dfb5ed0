//! Run state changes reach each forge's commit status API as documented.

use server::crypto::generate_webhook_secret;
use server::daemon::state::forge_token_aad;
use server::store::{Event, ForgeKind, NewRepo, NewRun, Trigger};
use server::workers::commit_status::Follower;

use crate::support::forge::FakeForge;
use crate::support::test_server::TestServer;

/// Registers a repo on `forge`, creates a run and settles it with no stages (the store
/// marks it success), then lets a follower report what happened.
async fn report(forge: ForgeKind, base: &str) -> (String, i64) {
    let server = TestServer::builder().build().await;
    let state = &server.state;
    let name = "team/app";
    let repo = state
        .store
        .create_repo(NewRepo {
            name: name.into(),
            forge,
            clone_url: format!("{base}/team/app.git"),
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
    (sha.to_string(), sent as i64)
}

#[tokio::test]
async fn gitea_gets_token_auth_and_its_state_names() {
    let forge = FakeForge::start().await;
    let (sha, sent) = report(ForgeKind::Gitea, &forge.url).await;
    assert_eq!(sent, 1);
    let last = forge.last();
    assert_eq!(last.method, "POST");
    assert_eq!(last.path, format!("/api/v1/repos/team/app/statuses/{sha}"));
    assert_eq!(last.header("authorization"), "token forge-token-123");
    assert_eq!(last.json()["state"], "success");
    assert_eq!(last.json()["context"], "slipway");
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
    let (sha, _) = report(ForgeKind::Github, &forge.url).await;
    let last = forge.last();
    assert_eq!(last.path, format!("/api/v3/repos/team/app/statuses/{sha}"));
    assert_eq!(last.header("authorization"), "Bearer forge-token-123");
    assert_eq!(last.json()["state"], "success");
}

#[tokio::test]
async fn gitlab_gets_private_token_and_an_encoded_project_path() {
    let forge = FakeForge::start().await;
    let (sha, _) = report(ForgeKind::Gitlab, &forge.url).await;
    let last = forge.last();
    assert_eq!(
        last.path,
        format!("/api/v4/projects/team%2Fapp/statuses/{sha}")
    );
    assert_eq!(last.header("private-token"), "forge-token-123");
    assert_eq!(last.json()["state"], "success");
    assert_eq!(last.json()["name"], "slipway");
    assert_eq!(last.json()["ref"], "refs/heads/main");
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
    let sent = server::workers::commit_status::report_run(
        state,
        run.id,
        server::store::RunStatus::Running,
    )
    .await
    .unwrap();
    assert!(sent);
    let seen = forge.requests();
    assert_eq!(
        seen[0].path,
        format!("/gitea/api/v1/repos/team/app/statuses/{sha}")
    );
    assert_eq!(
        seen[0].json()["state"],
        "pending",
        "gitea has no running state"
    );
}

#[tokio::test]
async fn plain_git_repositories_report_nothing() {
    let forge = FakeForge::start().await;
    let (_, sent) = report(ForgeKind::Git, &forge.url).await;
    assert_eq!(sent, 0);
    assert!(forge.requests().is_empty());
}
