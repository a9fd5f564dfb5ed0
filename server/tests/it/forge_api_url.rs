//! Where a forge's API is, and GitLab projects in subgroups, through the real server
//! process: a project `g1/g2/app` registered under its full path with `repo add
//! --api-url`, a signed GitLab push to its webhook URL, the run, and the commit status
//! at the API URL given, under the project's full path — then `repo edit` through the
//! HTTP API changing and clearing the URL, and bad URLs refused with the reason.

use serde_json::Value;
use server::forge::ForgeKind;

use crate::support::forge::{FakeForge, adapt_fixture, forge_headers};
use crate::support::git::GitRepo;
use crate::support::poll::eventually;
use crate::support::process::{Processes, slipway, slipway_bin};

const README: &str = include_str!("../../../README.md");

/// The README's "Forges" section: its shell commands (continuations joined, comments
/// dropped) and its TOML block.
fn readme_forges() -> (Vec<String>, String) {
    let section = README
        .split("\n### Forges: webhooks and commit statuses\n")
        .nth(1)
        .expect("a README section `### Forges: webhooks and commit statuses`")
        .split("\n### ")
        .next()
        .unwrap();
    let block = |fence: &str| {
        section
            .split(fence)
            .nth(1)
            .and_then(|b| b.split("```").next())
            .unwrap_or_else(|| panic!("a {fence} block"))
            .to_string()
    };
    let commands = block("```sh\n")
        .replace("\\\n", " ")
        .lines()
        .map(|l| l.split("  #").next().unwrap().trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    (commands, block("```toml\n"))
}

const PIPELINE: &str = "stages:
  test:
    steps:
      - name: unit
        run: echo ok
";

/// `slipway <args>` through the HTTP API with `token`; (success, stdout, stderr).
fn through_api(
    env: &Processes,
    home: &std::path::Path,
    token: &str,
    args: &[&str],
) -> (bool, String, String) {
    let out = slipway()
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("SLIPWAY_SERVER", env.url(""))
        .env("SLIPWAY_TOKEN", token)
        .env("GITLAB_TOKEN", "glpat-status-token")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_gitlab_subgroup_project_reports_its_status_where_its_api_url_says() {
    let forge = FakeForge::start().await;
    let mut env = Processes::new();
    env.start_server("server");
    let home = tempfile::tempdir().unwrap();
    let admin = env.cli(&["token", "create", "admin", "--scope", "admin"]);

    let mut git = GitRepo::bare();
    let d = adapt_fixture(
        &mut git,
        ForgeKind::Gitlab,
        "Push Hook",
        "gitlab/push.json",
        &[(".slipway.yml", PIPELINE)],
        &[(".slipway.yml", PIPELINE), ("README", "changed")],
    );
    let api_url = format!("{}/gitlab/api/v4", forge.url);
    let (ok, out, err) = through_api(
        &env,
        home.path(),
        &admin,
        &[
            "repo",
            "add",
            "g1/g2/app",
            "--forge",
            "gitlab",
            "--clone-url",
            &git.url(),
            "--default-branch",
            "master",
            "--api-url",
            &api_url,
            "--forge-token-env",
            "GITLAB_TOKEN",
        ],
    );
    assert!(ok, "{out}{err}");
    // The webhook URL keeps the full path; the secret is printed once.
    let webhook = out
        .lines()
        .find_map(|l| l.strip_prefix("webhook url:"))
        .unwrap()
        .trim()
        .to_string();
    assert!(webhook.ends_with("/hooks/gitlab/g1/g2/app"), "{webhook}");
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("webhook secret:"))
        .unwrap()
        .trim()
        .to_string();
    let (ok, out, err) = through_api(&env, home.path(), &admin, &["repo", "show", "g1/g2/app"]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("api url:        {api_url}")), "{out}");

    // The payload names the project by its full path, as GitLab does.
    let mut body: Value = serde_json::from_slice(&d.body).unwrap();
    body["project"]["path_with_namespace"] = "g1/g2/app".into();
    let body = serde_json::to_vec(&body).unwrap();
    let mut req = reqwest::Client::new()
        .post(env.url("/hooks/gitlab/g1/g2/app"))
        .body(body.clone());
    for (k, v) in forge_headers(
        ForgeKind::Gitlab,
        "Push Hook",
        "sub-1",
        &body,
        Some(&secret),
    ) {
        req = req.header(k, v);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 202, "{:?}", resp.text().await);

    let sha = d.head.to_string();
    let path = format!("/gitlab/api/v4/projects/g1%2Fg2%2Fapp/statuses/{sha}");
    let done = eventually(
        "the success status",
        std::time::Duration::from_secs(60),
        || async {
            let seen: Vec<Value> = forge
                .requests()
                .iter()
                .filter(|r| r.path == path)
                .map(|r| {
                    assert_eq!(r.header("private-token"), "glpat-status-token");
                    r.json()
                })
                .collect();
            match seen.last() {
                Some(s) if s["state"] == "success" => Ok(s.clone()),
                _ => Err(format!("{:?}", forge.requests())),
            }
        },
    )
    .await;
    assert_eq!(done["name"], "slipway/default/push");
    assert_eq!(done["ref"], "master");
    let target = done["target_url"].as_str().unwrap();
    assert!(target.ends_with("/repos/g1%2Fg2/app/runs/1"), "{target}");

    // The run is reachable under the same two-segment path, in the API and the UI.
    let http = reqwest::Client::new();
    let run: Value = http
        .get(env.url("/api/repos/g1%2Fg2/app/runs/1"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(run["run"]["status"], "success", "{run}");
    let page = http
        .get(env.url("/repos/g1%2Fg2/app/runs/1"))
        .send()
        .await
        .unwrap();
    assert!(page.status().is_success(), "{}", page.status());
    // (Unencoded, the groups would be path segments of their own: no such page.)
    let wrong = http
        .get(env.url("/repos/g1/g2/app/runs/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 404);
    let (ok, out, err) = through_api(
        &env,
        home.path(),
        &admin,
        &["runs", "list", "--repo", "g1/g2/app"],
    );
    assert!(ok && out.contains("success"), "{out}{err}");

    // Changed and cleared through the API; a bad URL is refused with the reason.
    let (ok, out, err) = through_api(
        &env,
        home.path(),
        &admin,
        &[
            "repo",
            "edit",
            "g1/g2/app",
            "--api-url",
            "https://example.com/gitlab/api/v4",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("api url:        https://example.com/gitlab/api/v4"),
        "{out}"
    );
    let (ok, out, err) = through_api(
        &env,
        home.path(),
        &admin,
        &["repo", "edit", "g1/g2/app", "--no-api-url"],
    );
    assert!(ok, "{err}");
    assert!(out.contains("api url:        (derived"), "{out}");
    for (bad, why) in [
        ("ftp://example.com/api", "not http or https"),
        ("https://user:pw@example.com/api/v4", "holds credentials"),
        ("/api/v4", "not an absolute URL"),
    ] {
        let (ok, _, err) = through_api(
            &env,
            home.path(),
            &admin,
            &["repo", "edit", "g1/g2/app", "--api-url", bad],
        );
        assert!(!ok && err.contains(why), "{bad}: {err}");
        assert!(!err.contains("pw@"), "the credential is echoed: {err}");
    }
    // The API refuses one too, with 422 and the reason.
    let resp = http
        .patch(env.url("/api/repos/g1%2Fg2/app"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({ "api_url": "gopher://x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 422);
    assert!(resp.text().await.unwrap().contains("not http or https"));

    // The README's commands, as written.
    let (commands, _) = readme_forges();
    let bin_dir = slipway_bin().parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    for (i, command) in commands.iter().enumerate() {
        let out = std::process::Command::new("sh")
            .args(["-c", command])
            .env("PATH", &path)
            .env("HOME", home.path())
            .env("SLIPWAY_SERVER", env.url(""))
            .env("SLIPWAY_TOKEN", &admin)
            .env("GITHUB_TOKEN", "ghp-readme-token")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let shown: Value = http
            .get(env.url("/api/repos/team/app"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let expected = if i == 0 {
            Value::from("https://api.corp.ghe.com")
        } else {
            Value::Null
        };
        assert_eq!(shown["api_url"], expected, "after {command}");
        assert_eq!(shown["has_forge_token"], true);
    }

    // Only GitLab has subgroups.
    let (ok, _, err) = through_api(
        &env,
        home.path(),
        &admin,
        &[
            "repo",
            "add",
            "a/b/c",
            "--forge",
            "github",
            "--clone-url",
            "/x",
        ],
    );
    assert!(!ok && err.contains("only GitLab has subgroups"), "{err}");
}

/// The server config's `[forge_api_urls]`, by clone host, as the README shows it.
#[test]
fn the_readme_forge_api_urls_apply_by_clone_host() {
    use server::daemon::config::{Config, Settings};
    let (_, toml) = readme_forges();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("slipway.toml");
    std::fs::write(&config, toml).unwrap();
    let config = Config::resolve(Settings::default(), Some(&config)).unwrap();
    let repo = |clone_url: &str| server::store::Repo {
        id: 1,
        name: "g1/app".into(),
        forge: server::store::ForgeKind::Gitlab,
        clone_url: clone_url.into(),
        default_branch: "main".into(),
        webhook_secret_enc: Vec::new(),
        forge_token_enc: None,
        api_url: None,
        trusted: false,
        next_run_number: 1,
        created_at: 0,
    };
    let base = |url: &str| server::admin::repos::api_base(&config, &repo(url));
    assert_eq!(
        base("git@ssh.gitlab.example.com:g1/app.git").as_deref(),
        Some("https://gitlab.example.com/gitlab/api/v4")
    );
    // Another host: derived from the clone URL.
    assert_eq!(
        base("https://gitlab.other.example/g1/app.git").as_deref(),
        Some("https://gitlab.other.example/api/v4")
    );
    // The repository's own URL wins.
    let mut own = repo("git@ssh.gitlab.example.com:g1/app.git");
    own.api_url = Some("https://elsewhere.example/api/v4/".into());
    assert_eq!(
        server::admin::repos::api_base(&config, &own).as_deref(),
        Some("https://elsewhere.example/api/v4")
    );
}

#[test]
fn forge_api_urls_in_the_config_file_are_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("slipway.toml");
    std::fs::write(
        &config,
        "[forge_api_urls]\n\"gitlab.example.com\" = \"ftp://gitlab.example.com/api/v4\"\n",
    )
    .unwrap();
    let out = slipway()
        .args(["server", "--config"])
        .arg(&config)
        .env("SLIPWAY_DATA_DIR", dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("forge_api_urls.\"gitlab.example.com\"") && err.contains("not http or https"),
        "{err}"
    );
}
