//! End to end through real sockets, for each forge's webhook format: a commit in a real
//! git repository, a signed delivery to the running server, the planner, the in-process
//! runner on the local backend, logs through the API, and commit statuses sent to a
//! stand-in forge. The same suite runs on SQLite and on PostgreSQL.

use std::time::Duration;

use server::daemon::state::forge_token_aad;
use server::forge::ForgeKind;
use server::store::{Dialect, RunStatus, TokenScope};

use crate::support::both_databases;
use crate::support::forge::{
    FakeForge, Recorded, SECRET, adapt_fixture, forge_headers, register, store_forge,
};
use crate::support::git::GitRepo;
use crate::support::poll::eventually;
use crate::support::test_server::TestServer;

const E2E_PIPELINE: &str = "stages:
  build:
    steps:
      - name: compile
        run: echo \"compiling ${{ git.short_sha }}\"
  test:
    needs: [build]
    steps:
      - name: unit
        run: |
          echo tests pass
          echo \"on $SLIPWAY_EVENT\"
          echo \"pr=${SLIPWAY_PR_NUMBER-unset} ${SLIPWAY_SOURCE_BRANCH-unset} into ${SLIPWAY_TARGET_BRANCH-unset}\"
";

struct Case {
    kind: ForgeKind,
    event: &'static str,
    fixture: &'static str,
    /// The status API path the forge documents, before the commit sha.
    status_path: &'static str,
    /// How a finished, successful run is spelled in that forge's status API.
    success_field: (&'static str, &'static str),
}

const CASES: &[Case] = &[
    Case {
        kind: ForgeKind::Github,
        event: "push",
        fixture: "github/push.json",
        status_path: "/api/v3/repos/team/app0/statuses/",
        success_field: ("state", "success"),
    },
    Case {
        kind: ForgeKind::Gitlab,
        event: "Push Hook",
        fixture: "gitlab/push.json",
        status_path: "/api/v4/projects/team%2Fapp1/statuses/",
        success_field: ("state", "success"),
    },
    Case {
        kind: ForgeKind::Gitea,
        event: "push",
        fixture: "gitea/push.json",
        status_path: "/api/v1/repos/team/app2/statuses/",
        success_field: ("state", "success"),
    },
    Case {
        kind: ForgeKind::Forgejo,
        event: "pull_request",
        fixture: "forgejo/pull_request_opened.json",
        status_path: "/api/v1/repos/team/app3/statuses/",
        success_field: ("state", "success"),
    },
];

both_databases!(every_forge_end_to_end);

async fn every_forge_end_to_end(db: Dialect) {
    let mut env = TestServer::builder().on(db).build().await;
    let state = env.state.clone();
    let forge = FakeForge::start().await;
    let admin = env.token("e2e", TokenScope::Admin).await;
    env.serve().await;
    let base = env.url();
    let http = reqwest::Client::new();

    for (i, case) in CASES.iter().enumerate() {
        let mut git = GitRepo::bare();
        let d = adapt_fixture(
            &mut git,
            case.kind,
            case.event,
            case.fixture,
            &[(".slipway.yml", E2E_PIPELINE)],
            &[(".slipway.yml", E2E_PIPELINE), ("src/lib.rs", "// changed")],
        );
        let name = format!("team/app{i}");
        let default = d
            .event
            .pr
            .as_ref()
            .map(|p| p.target_branch.clone())
            .or(d.event.branch.clone())
            .unwrap_or_else(|| "main".into());
        let repo = register(
            &state,
            &name,
            store_forge(case.kind),
            &git.url(),
            &default,
            true,
        )
        .await;
        // Statuses go to the stand-in forge: the mirror is cloned from a local path, so
        // the API base cannot be derived from the clone URL.
        let mut repo = state
            .store
            .set_repo_api_url(
                repo.id,
                Some(&format!("{}/{}", forge.url, api_prefix(case.kind))),
            )
            .await
            .unwrap();
        repo.forge_token_enc = Some(
            state
                .secret_box
                .seal(b"forge-secret-token", &forge_token_aad(&name)),
        );
        let repo = state.store.update_repo(&repo).await.unwrap();

        let headers = forge_headers(
            case.kind,
            case.event,
            &format!("e2e-{i}"),
            &d.body,
            Some(SECRET),
        );
        let mut req = http
            .post(format!("{base}/hooks/{}/{name}", case.kind))
            .body(d.body.clone());
        for (k, v) in &headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(
            resp.status().as_u16(),
            202,
            "{}: {:?}",
            case.fixture,
            resp.text().await
        );

        let run = eventually(
            &format!("{} run to finish", case.fixture),
            WITHIN,
            || async {
                let run = state.store.get_run_by_number(repo.id, 1).await.unwrap();
                if run.status.is_final() {
                    Ok(run)
                } else {
                    Err(run.status)
                }
            },
        )
        .await;
        assert_eq!(
            run.status,
            RunStatus::Success,
            "{}: {:?}",
            case.fixture,
            run.error
        );
        assert_eq!(run.sha, d.head.to_string());

        // Logs, through the API.
        let detail: serde_json::Value = http
            .get(format!("{base}/api/repos/{name}/runs/1"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let stages = detail["stages"].as_array().unwrap();
        let keys: Vec<&str> = stages.iter().map(|s| s["key"].as_str().unwrap()).collect();
        assert_eq!(keys, ["build", "test"], "{}", case.fixture);
        let build_id = stages[0]["id"].as_i64().unwrap();
        let test_id = stages[1]["id"].as_i64().unwrap();
        let log = |stage: i64| {
            let http = http.clone();
            let admin = admin.clone();
            let name = name.clone();
            let base = base.clone();
            async move {
                http.get(format!(
                    "{base}/api/repos/{name}/runs/1/stages/{stage}/steps/0/logs.txt"
                ))
                .bearer_auth(&admin)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
            }
        };
        let short = &run.sha[..7];
        assert_eq!(
            log(build_id).await,
            format!("compiling {short}\n"),
            "{}",
            case.fixture
        );
        // Pull-request runs see the request's number and branches; pushes do not.
        let (expected_event, pr) = match &d.event.pr {
            Some(pr) => (
                "pull_request",
                format!(
                    "pr={} {} into {}",
                    pr.number, pr.source_branch, pr.target_branch
                ),
            ),
            None => ("push", "pr=unset unset into unset".to_string()),
        };
        assert_eq!(
            log(test_id).await,
            format!("tests pass\non {expected_event}\n{pr}\n")
        );

        // Commit statuses: the final one says success, on the right path, with auth.
        let path = format!("{}{}", case.status_path, run.sha);
        let (field, success) = case.success_field;
        eventually(
            &format!("{} success status", case.fixture),
            WITHIN,
            || async {
                let statuses: Vec<_> = forge
                    .requests()
                    .iter()
                    .filter(|s| s.path == path)
                    .map(|s| s.json()[field].clone())
                    .collect();
                if statuses.iter().any(|s| s == success) {
                    Ok(())
                } else {
                    Err(format!("{statuses:?}"))
                }
            },
        )
        .await;
        let requests = forge.requests();
        let mine: Vec<&Recorded> = requests.iter().filter(|s| s.path == path).collect();
        let auth = match case.kind {
            ForgeKind::Gitlab => mine[0].header("private-token").to_string(),
            _ => mine[0].header("authorization").to_string(),
        };
        assert!(
            auth.ends_with("forge-secret-token"),
            "{}: {auth}",
            case.fixture
        );
        assert!(
            mine.last().unwrap().json()["target_url"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/repos/{name}/runs/1")),
            "{:?}",
            mine.last()
        );
        // One status per pipeline and event; GitLab's is on the branch, by its name.
        let last = mine.last().unwrap().json();
        let context = match case.kind {
            ForgeKind::Gitlab => &last["name"],
            _ => &last["context"],
        };
        assert_eq!(
            context,
            &format!("slipway/default/{}", run.event.as_str()),
            "{}",
            case.fixture
        );
        if case.kind == ForgeKind::Gitlab {
            assert_eq!(last["ref"], default.as_str(), "{}", case.fixture);
        }
        // The target URL is the run's page under the server's public URL, which answers
        // (with the sign-in page here; the test server listens elsewhere than its
        // configured public URL).
        let target = last["target_url"].as_str().unwrap();
        let path = target
            .strip_prefix(state.config.public_url.as_str())
            .unwrap_or_else(|| panic!("{target} is not under the public URL"));
        let page = http.get(format!("{base}{path}")).send().await.unwrap();
        assert!(
            page.status().is_success(),
            "{}: {}",
            case.fixture,
            page.status()
        );
    }
    env.stop().await;
}

/// How long a run and its statuses may take.
const WITHIN: Duration = Duration::from_secs(60);

fn api_prefix(kind: ForgeKind) -> &'static str {
    match kind {
        ForgeKind::Github => "api/v3",
        ForgeKind::Gitlab => "api/v4",
        _ => "api/v1",
    }
}
