//! Credentials scoped to what they are for (issue 17, item 4), against the real server
//! and real runners: a hook token triggers only its repository; a runner scoped to an
//! owner never leases another owner's stage and never gets its secret, while a runner
//! scoped to that repository does.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::git::commit;
use crate::support::process::Processes;

fn processes() -> Processes {
    Processes::new()
        .env("SLIPWAY_HEARTBEAT_TIMEOUT", "3")
        .env("SLIPWAY_IN_PROCESS_RUNNER", "false")
}

/// Registers `name` as a plain-git repository whose pipeline is `yaml`; its head sha.
fn add_repo(env: &Processes, name: &str, yaml: &str) -> String {
    let dir = env.dir.path().join(name.replace('/', "-"));
    std::fs::create_dir_all(&dir).unwrap();
    let sha = commit(&dir, &[(".slipway.yml", yaml)]);
    env.cli(&[
        "repo",
        "add",
        name,
        "--forge",
        "git",
        "--clone-url",
        dir.to_str().unwrap(),
    ]);
    sha
}

async fn post_hook(env: &Processes, repo: &str, token: &str, sha: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(env.url(&format!("/hooks/git/{repo}")))
        .bearer_auth(token)
        .json(&json!({ "updates": [{ "old": "0".repeat(40), "new": sha, "ref": "refs/heads/main" }] }))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get(env: &Processes, token: &str, path: &str) -> Value {
    reqwest::Client::new()
        .get(env.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_token_triggers_only_its_own_repository() {
    let mut env = processes();
    env.start_server("server");
    let yaml = "stages:\n  a:\n    steps: [\"true\"]\n";
    let sha_a = add_repo(&env, "team/a", yaml);
    let sha_b = add_repo(&env, "other/b", yaml);
    let admin = env.cli(&["token", "create", "admin", "--scope", "admin"]);

    // A hook token must name its repository.
    let out = env
        .command()
        .args(["token", "create", "loose", "--scope", "hook"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--repo owner/name"), "{err}");

    let hook_a = env.cli(&[
        "token", "create", "hook-a", "--scope", "hook", "--repo", "team/a",
    ]);
    // Another repository: 403 with a JSON error saying which one the token is for.
    let (status, body) = post_hook(&env, "other/b", &hook_a, &sha_b).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("may only trigger team/a") && message.contains("other/b"),
        "{message}"
    );
    // A repository that does not exist answers the same: nothing is learnt about it.
    let (status, _) = post_hook(&env, "ghost/repo", &hook_a, &sha_b).await;
    assert_eq!(status, 403);
    let runs_b = get(&env, &admin, "/api/repos/other/b/runs").await;
    assert_eq!(runs_b.as_array().map(Vec::len), Some(0), "{runs_b}");

    // Its own repository: accepted.
    let (status, body) = post_hook(&env, "team/a", &hook_a, &sha_a).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["results"][0]["run"], 1, "{body}");
    // The token list says what each token is for.
    let tokens = get(&env, &admin, "/api/tokens").await;
    let listed = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "hook-a")
        .unwrap();
    assert_eq!(listed["repos"], json!({ "repos": ["team/a"] }), "{tokens}");
}

/// A pipeline whose step writes where it ran and the secret it got to `marker`.
fn secret_pipeline(marker: &Path) -> String {
    format!(
        "stages:\n  show:\n    env: {{ TOKEN: \"${{{{ secrets.TOKEN }}}}\" }}\n    steps:\n      - printf '%s %s' \"$PWD\" \"$TOKEN\" > '{}'\n",
        marker.display()
    )
}

fn stage<'a>(detail: &'a Value, key: &str) -> &'a Value {
    detail["stages"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["key"] == key))
        .unwrap_or_else(|| panic!("no stage {key}: {detail:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_scoped_to_an_owner_never_leases_another_owners_stage_or_secret() {
    const TEAM_SECRET: &str = "team-secret-value-1234";
    const ACME_SECRET: &str = "acme-secret-value-5678";
    let mut env = processes();
    let markers = env.dir.path().join("markers");
    std::fs::create_dir_all(&markers).unwrap();
    let (team_marker, acme_marker) = (markers.join("team.txt"), markers.join("acme.txt"));
    env.start_server("server");
    let team_sha = add_repo(&env, "team/app", &secret_pipeline(&team_marker));
    let acme_sha = add_repo(&env, "acme/web", &secret_pipeline(&acme_marker));
    env.cli_with_input(&["secret", "set", "team/app", "TOKEN"], TEAM_SECRET);
    env.cli_with_input(&["secret", "set", "acme/web", "TOKEN"], ACME_SECRET);
    let admin = env.cli(&["token", "create", "admin", "--scope", "admin"]);
    let team_runner = env.cli(&[
        "token", "create", "team", "--scope", "runner", "--owner", "team",
    ]);
    let acme_runner = env.cli(&[
        "token", "create", "acme", "--scope", "runner", "--repo", "acme/web",
    ]);
    let runner_args = ["--backend", "local", "--shutdown-grace", "1"];
    env.start_runner("team-runner", &team_runner, &runner_args);

    // Both repositories get a run; only team's runner is registered.
    for (repo, sha) in [("acme/web", &acme_sha), ("team/app", &team_sha)] {
        let hook = env.cli(&["token", "create", repo, "--scope", "hook", "--repo", repo]);
        let (status, body) = post_hook(&env, repo, &hook, sha).await;
        assert_eq!(status, 202, "{repo}: {body}");
    }
    let team_run = env
        .wait_run_end(&admin, "team/app", 1, Duration::from_secs(90))
        .await;
    assert_eq!(
        team_run["run"]["status"],
        "success",
        "{team_run:#}\n{}",
        env.logs()
    );
    let got = std::fs::read_to_string(&team_marker).unwrap();
    assert!(
        got.contains("work-team-runner") && got.ends_with(TEAM_SECRET),
        "{got}"
    );

    // acme's stage was queued before team's ran and stays queued: the team runner may
    // not take it, and the run says why.
    let detail = env
        .wait(
            "acme's stage to say why it waits",
            Duration::from_secs(30),
            || async {
                let detail = env.run_detail(&admin, "acme/web", 1).await?;
                let show = detail["stages"]
                    .as_array()
                    .and_then(|s| s.iter().find(|s| s["key"] == "show"))
                    .cloned()
                    .unwrap_or(Value::Null);
                if show["unroutable"].is_string() {
                    Ok(detail)
                } else {
                    Err(format!("{detail:#}"))
                }
            },
        )
        .await;
    let show = stage(&detail, "show");
    assert_eq!(show["status"], "queued", "{detail:#}");
    assert_eq!(
        show["unroutable"], "no registered runner may run stages of acme/web (runner scopes)",
        "{detail:#}"
    );
    assert!(!acme_marker.exists(), "the team runner ran acme's stage");
    // The server's periodic look at the queue warns about it too.
    env.wait("the server to warn", Duration::from_secs(30), || async {
        let server_log = std::fs::read_to_string(env.log_path("server")).unwrap_or_default();
        if server_log
            .contains("queued stage cannot start: no registered runner may run stages of acme/web")
        {
            Ok(())
        } else {
            Err("no warning yet")
        }
    })
    .await;
    let team_log = std::fs::read_to_string(env.log_path("team-runner")).unwrap();
    assert!(!team_log.contains(ACME_SECRET));
    let runners = get(&env, &admin, "/api/runners").await;
    assert_eq!(
        runners[0]["repos"],
        json!({ "owner": "team" }),
        "{runners:#}"
    );

    // A runner for acme/web takes it, with acme's secret.
    env.start_runner("acme-runner", &acme_runner, &runner_args);
    let acme_run = env
        .wait_run_end(&admin, "acme/web", 1, Duration::from_secs(90))
        .await;
    assert_eq!(
        acme_run["run"]["status"],
        "success",
        "{acme_run:#}\n{}",
        env.logs()
    );
    let got = std::fs::read_to_string(&acme_marker).unwrap();
    assert!(
        got.contains("work-acme-runner") && got.ends_with(ACME_SECRET),
        "{got}"
    );
    assert!(!got.contains("work-team-runner"), "{got}");

    // A token cannot borrow the scope of a runner registered with another token by
    // naming that runner's id in its lease requests.
    let http = reqwest::Client::new();
    let registered: Value = http
        .post(env.url("/api/runner/register"))
        .bearer_auth(&acme_runner)
        .json(&json!({ "name": "acme-2", "labels": [], "capacity": 1 }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = http
        .post(env.url("/api/runner/lease"))
        .bearer_auth(&team_runner)
        .json(&json!({ "runner_id": registered["runner_id"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("register again")),
        "{body}"
    );
}
