//! The web UI's tests' scene: a real `slipway server` process with `team/app` (plain
//! git, pushed through the git hook), people with passwords, and machine tokens; its
//! API through `reqwest`.

use std::time::Duration;

use serde_json::{Value, json};

use super::git::GitRepo;
use super::process::Processes;

/// Every person's password.
pub const PASSWORD: &str = "correct horse battery staple";

/// A server with `team/app` (plain git), people, and their personal tokens.
pub struct Ui {
    pub p: Processes,
    /// The repository's source (plain git), pushed to by [`Ui::push`].
    pub source: std::path::PathBuf,
    pub hook: String,
    /// A machine token with the admin scope.
    pub admin: String,
    pub http: reqwest::Client,
}

impl Ui {
    pub async fn start(people: &[(&str, &str)]) -> Ui {
        let mut p = Processes::new();
        p.start_server("server");
        let source = p.dir.path().join("repo");
        std::fs::create_dir_all(&source).unwrap();
        p.cli(&[
            "repo",
            "add",
            "team/app",
            "--forge",
            "git",
            "--clone-url",
            source.to_str().unwrap(),
        ]);
        for (name, role) in people {
            p.cli_with_input(&["user", "add", name, "--role", role], PASSWORD);
        }
        let hook = p.cli(&[
            "token", "create", "hook", "--scope", "hook", "--repo", "team/app",
        ]);
        let admin = p.cli(&["token", "create", "admin", "--scope", "admin"]);
        Ui {
            p,
            source,
            hook,
            admin,
            http: reqwest::Client::new(),
        }
    }

    pub fn base(&self) -> String {
        self.p.url("")
    }

    /// Commits `yaml` (and a marker) on main and pushes it through the git hook.
    pub async fn push(&self, yaml: &str, marker: &str) -> String {
        self.push_files(&[(".slipway.yml", yaml)], marker).await
    }

    /// Commits `files` (and a marker) on main and pushes it through the git hook.
    pub async fn push_files(&self, files: &[(&str, &str)], marker: &str) -> String {
        let mut files = files.to_vec();
        files.push(("MARKER", marker));
        let sha = GitRepo::init(&self.source)
            .commit("refs/heads/main", &[], &files, marker)
            .to_string();
        let r = self
            .http
            .post(self.p.url("/hooks/git/team/app"))
            .bearer_auth(&self.hook)
            .json(&json!({ "updates": [{
                "old": "0".repeat(40), "new": sha, "ref": "refs/heads/main", "message": marker,
            }]}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "hook: {}", r.status());
        sha
    }

    pub async fn api(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method.parse().unwrap(), self.p.url(path))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        assert!(r.status().is_success(), "{method} {path}: {}", r.status());
        r.json().await.unwrap_or(Value::Null)
    }

    pub async fn run_status(&self, number: i64) -> String {
        let d = self
            .api(
                "GET",
                &format!("/api/repos/team/app/runs/{number}"),
                &self.admin,
                None,
            )
            .await;
        d["run"]["status"].as_str().unwrap_or_default().to_string()
    }

    pub async fn wait_status(&self, number: i64, want: &str) {
        self.p
            .wait(
                &format!("run #{number} {want}"),
                Duration::from_secs(120),
                || async {
                    let s = self.run_status(number).await;
                    if s == want { Ok(()) } else { Err(s) }
                },
            )
            .await;
    }

    /// Signs in with a plain HTTP client; the session cookie's `Set-Cookie` value.
    pub async fn sign_in_http(&self, name: &str) -> String {
        let r = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
            .post(self.p.url("/login"))
            .form(&[("name", name), ("password", PASSWORD), ("next", "/")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 303, "sign-in");
        r.headers()["set-cookie"].to_str().unwrap().to_string()
    }
}

/// The `name=value` part of a `Set-Cookie`.
pub fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_string()
}
