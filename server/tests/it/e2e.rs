//! End to end through real sockets, for each forge's webhook format: a commit in a real
//! git repository, a signed delivery to the running server, the planner, the in-process
//! runner on the local backend, logs through the API, and commit statuses sent to a
//! stand-in forge. The same suite runs on SQLite and on PostgreSQL.

use std::time::Duration;

use crate::support_hooks::*;
use server::config::Settings;
use server::crypto::{generate_token, hash_token};
use server::forge::ForgeKind;
use server::state::forge_token_aad;
use server::store::{RunStatus, TokenScope};

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

async fn every_forge(env: Env) {
    let state = env.state.clone();
    let (forge_base, seen) = fake_forge().await;
    let admin = generate_token("slp_");
    state
        .store
        .create_token("e2e", &hash_token(&admin), TokenScope::Admin)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(server::serve::run(listener, state.clone()));
    let http = reqwest::Client::new();

    for (i, case) in CASES.iter().enumerate() {
        let mut git = GitForge::new();
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
                Some(&format!("{forge_base}/{}", api_prefix(case.kind))),
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
            .post(format!("http://{addr}/hooks/{}/{name}", case.kind))
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

        eventually(&format!("{} run to finish", case.fixture), || async {
            state
                .store
                .get_run_by_number(repo.id, 1)
                .await
                .unwrap()
                .status
                .is_final()
        })
        .await;
        let run = state.store.get_run_by_number(repo.id, 1).await.unwrap();
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
            .get(format!("http://{addr}/api/repos/{name}/runs/1"))
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
            async move {
                http.get(format!(
                    "http://{addr}/api/repos/{name}/runs/1/stages/{stage}/steps/0/logs.txt"
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
        let expected_event = if d.event.pr.is_some() {
            "pull_request"
        } else {
            "push"
        };
        assert_eq!(
            log(test_id).await,
            format!("tests pass\non {expected_event}\n")
        );

        // Commit statuses: the final one says success, on the right path, with auth.
        let path = format!("{}{}", case.status_path, run.sha);
        eventually(&format!("{} success status", case.fixture), || {
            let seen = seen.clone();
            let path = path.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .iter()
                    .any(|s| s.path == path && s.body[case.success_field.0] == case.success_field.1)
            }
        })
        .await;
        let requests = seen.lock().unwrap().clone();
        let mine: Vec<&Seen> = requests.iter().filter(|s| s.path == path).collect();
        let auth = match case.kind {
            ForgeKind::Gitlab => mine[0].headers["private-token"]
                .to_str()
                .unwrap()
                .to_string(),
            _ => mine[0].headers["authorization"]
                .to_str()
                .unwrap()
                .to_string(),
        };
        assert!(
            auth.ends_with("forge-secret-token"),
            "{}: {auth}",
            case.fixture
        );
        assert!(
            mine.last().unwrap().body["target_url"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/repos/{name}/runs/1")),
            "{:?}",
            mine.last()
        );
    }
    state.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
}

fn api_prefix(kind: ForgeKind) -> &'static str {
    match kind {
        ForgeKind::Github => "api/v3",
        ForgeKind::Gitlab => "api/v4",
        _ => "api/v1",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_forge_end_to_end_on_sqlite() {
    every_forge(env().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_forge_end_to_end_on_postgres() {
    let db = pg_database().await;
    let env = env_with(Settings {
        database_url: Some(db.url.clone()),
        ..Settings::default()
    })
    .await;
    let outcome = tokio::spawn(every_forge(env)).await;
    drop_pg(db).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}
