//! A real `slipway server` process with one plain-git repository, `team/app`, registered
//! through the CLI, and its admin and hook tokens: where tests of what a user sees start
//! (plain `#[test]`s; requests are blocking).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use super::git::GitRepo;
use super::process::Processes;

pub const REPO: &str = "team/app";

/// How long a run of a small local pipeline may take on a loaded machine.
pub const RUN_WITHIN: Duration = Duration::from_secs(90);

pub struct Served {
    pub p: Processes,
    /// The repository's clone URL: a git repository with a working tree.
    pub source: PathBuf,
    pub admin: String,
    pub hook: String,
    /// The webhook secret `repo add` printed, for deliveries in a forge's format.
    pub webhook_secret: String,
    http: reqwest::blocking::Client,
    commits: u32,
}

impl Served {
    /// Starts `p`'s server and registers `team/app` as a `forge` repository.
    pub fn start(mut p: Processes, forge: &str) -> Served {
        let source = p.dir.path().join("source");
        std::fs::create_dir_all(&source).unwrap();
        GitRepo::init(&source);
        p.start_server("server");
        let added = p.cli(&[
            "repo",
            "add",
            REPO,
            "--forge",
            forge,
            "--clone-url",
            source.to_str().unwrap(),
        ]);
        let webhook_secret = added
            .lines()
            .find_map(|l| l.trim().strip_prefix("webhook secret:"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let hook = p.cli(&["token", "create", "hook", "--scope", "hook", "--repo", REPO]);
        let admin = p.cli(&["token", "create", "admin", "--scope", "admin"]);
        Served {
            p,
            source,
            admin,
            hook,
            webhook_secret,
            http: reqwest::blocking::Client::new(),
            commits: 0,
        }
    }

    /// Commits exactly `files` on `branch` of the source repository; the commit id.
    pub fn commit(&mut self, branch: &str, files: &[(&str, &str)]) -> String {
        self.commits += 1;
        GitRepo::init(&self.source)
            .commit(
                &format!("refs/heads/{branch}"),
                &[],
                files,
                &format!("commit {}", self.commits),
            )
            .to_string()
    }

    /// Commits `files` on `branch` and tells the server, as the post-receive hook does.
    pub fn push(&mut self, branch: &str, files: &[(&str, &str)]) -> String {
        let sha = self.commit(branch, files);
        let updates = json!({ "updates": [{
            "old": "0".repeat(40), "new": sha, "ref": format!("refs/heads/{branch}"),
        }]});
        let (status, body) = self.call("POST", "/hooks/git/team/app", &self.hook, Some(updates));
        assert!(status < 300, "hook: {status} {body}");
        sha
    }

    /// `method path` with the admin token: the status and the JSON answer (or the text
    /// as a JSON string).
    pub fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call(method, path, &self.admin, body)
    }

    pub fn call(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), self.p.url(path))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// The run `number` of `team/app` once `done` says so (bounded; shows the last answer).
    pub fn wait_run(&self, number: i64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let path = format!("/api/repos/{REPO}/runs/{number}");
        self.p
            .wait_blocking(&format!("run #{number} {what}"), RUN_WITHIN, || {
                let (status, run) = self.api("GET", &path, None);
                if status == 200 && done(&run) {
                    Ok(run)
                } else {
                    Err(format!("{status} {run:#}"))
                }
            })
    }

    /// Run `number` once it has finished.
    pub fn finished_run(&self, number: i64) -> Value {
        self.wait_run(number, "to finish", |r| {
            !matches!(r["run"]["status"].as_str(), Some("pending" | "running"))
        })
    }

    /// The log of step `step` of the stage `key` of run `number`, as text.
    pub fn log(&self, number: i64, run: &Value, key: &str, step: u32) -> String {
        let stage = run["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["key"] == key)
            .unwrap_or_else(|| panic!("no stage {key}: {run:#}"));
        let path = format!(
            "/api/repos/{REPO}/runs/{number}/stages/{}/steps/{step}/logs.txt",
            stage["id"]
        );
        match self.api("GET", &path, None) {
            (200, Value::String(text)) => text,
            other => panic!("{path}: {other:?}"),
        }
    }
}
