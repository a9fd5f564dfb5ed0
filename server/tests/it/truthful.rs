//! Errors that tell the truth, through the real `slipway` binary and server process: a
//! manual trigger the pipelines would not run is refused with the reason, `validate`
//! and the server refuse the same oversized files, a secret too short to mask is
//! refused, a fork's pull request is told which secrets it did not get, no command
//! panics on a closed pipe or a full disk, and the API describes itself and answers in
//! JSON everywhere under `/api/`. Long because each case needs its own server and
//! repository set up; the cases share `support::served`.

use std::collections::BTreeSet;
use std::io::Read;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};
use server::forge::ForgeKind;

use crate::support::forge::{adapt_fixture, forge_headers};
use crate::support::git::GitRepo;
use crate::support::process::{self, Processes, slipway_bin};
use crate::support::served::{REPO, Served};

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------- manual triggers

const PUSH_ONLY: &str = "on: { push: {} }
stages:
  build:
    steps: [\"true\"]
";

const DEPLOY: &str = "on:
  manual:
    params:
      env: { options: [staging, prod], default: staging }
stages:
  deploy:
    steps: [\"echo deploying to ${{ params.env }}\"]
";

/// `slipway run trigger team/app ARGS` against the server.
fn trigger(s: &Served, args: &[&str]) -> Output {
    let url = s.p.url("");
    s.p.command()
        .args(["run", "trigger", REPO, "--server", &url])
        .args(args)
        .env("SLIPWAY_TOKEN", &s.admin)
        .output()
        .unwrap()
}

#[test]
fn a_manual_trigger_that_would_do_nothing_or_names_an_unknown_parameter_is_refused() {
    let mut s = Served::start(Processes::new(), "git");
    s.commit("main", &[(".slipway.yml", PUSH_ONLY)]);

    // No pipeline takes manual runs: refused with that reason, and no run is made.
    let out = trigger(&s, &[]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("422"), "{said}");
    assert!(said.contains("takes manual runs"), "{said}");
    assert!(
        said.contains("default: the pipeline has no `on.manual` trigger"),
        "{said}"
    );
    let (_, runs) = s.api("GET", "/api/repos/team/app/runs", None);
    assert_eq!(runs, json!([]), "a refused trigger made a run");

    // A pipeline that does take them, with a declared parameter.
    s.commit(
        "main",
        &[(".slipway.yml", PUSH_ONLY), (".slipway/deploy.yml", DEPLOY)],
    );
    let out = trigger(&s, &["--param", "enviroment=prod"]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("422"), "{said}");
    assert!(said.contains("unknown parameter `enviroment`"), "{said}");
    assert!(said.contains("declared: env"), "{said}");
    // The API answers the same, as its documented JSON error.
    let (status, body) = s.api(
        "POST",
        "/api/repos/team/app/trigger",
        Some(json!({"params": {"enviroment": "prod"}})),
    );
    assert_eq!((status, &body["error"]["code"]), (422, &json!("invalid")));
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`enviroment`"),
        "{body}"
    );
    let out = trigger(&s, &["--param", "env=qa"]);
    let said = text(&out);
    assert!(
        !out.status.success() && said.contains("invalid value `qa` for parameter `env`"),
        "{said}"
    );
    let (_, runs) = s.api("GET", "/api/repos/team/app/runs", None);
    assert_eq!(runs, json!([]), "a refused trigger made a run");

    // A good one runs, and does what it says.
    let out = trigger(&s, &["--param", "env=prod"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("run #1 of team/app"), "{said}");
    let run = s.finished_run(1);
    assert_eq!(run["run"]["status"], "success", "{run:#}");
    let keys: Vec<&str> = run["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|st| st["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["deploy"]);
    assert!(s.log(1, &run, "deploy", 0).contains("deploying to prod"));
}

// ---------------------------------------------------------------- the same limits

/// A pipeline of `stages` stages with a matrix of `width` combinations each.
fn wide_pipeline(stages: usize, width: usize) -> String {
    let values: Vec<String> = (0..width).map(|i| i.to_string()).collect();
    let mut y = String::from("stages:\n");
    for i in 0..stages {
        y += &format!(
            "  s{i}:\n    matrix: {{ n: [{}] }}\n    steps: [\"true\"]\n",
            values.join(", ")
        );
    }
    y
}

/// `slipway validate` on a repository holding `.slipway.yml` = `yaml`.
fn validate(yaml: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".slipway.yml"), yaml).unwrap();
    process::slipway()
        .arg("validate")
        .arg(dir.path())
        .output()
        .unwrap()
}

#[test]
fn validate_and_the_server_refuse_the_same_oversized_pipelines() {
    let limit = pipelines::MAX_STAGES;
    let too_many = wide_pipeline(limit / 100 + 1, 100);
    let at_limit = wide_pipeline(limit / 100, 100);
    let too_big = format!(
        "stages:\n  a:\n    steps: [\"true\"]\n# {}\n",
        "x".repeat(pipelines::MAX_FILE_BYTES)
    );

    let out = validate(&too_many);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("error[too-many-stages]"), "{said}");
    assert!(said.contains(&format!("the limit is {limit}")), "{said}");
    let out = validate(&at_limit);
    assert!(out.status.success(), "{}", text(&out));
    let out = validate(&too_big);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("error[file-too-large]"), "{said}");
    assert!(
        said.len() < 10_000,
        "the oversized line was printed: {said:.500}"
    );

    // The server plans pushes of the same files into error runs that say why.
    let mut s = Served::start(Processes::new(), "git");
    s.push("main", &[(".slipway.yml", &too_many)]);
    let run = s.finished_run(1);
    assert_eq!(run["run"]["status"], "error", "{:#}", run["run"]);
    let codes: BTreeSet<&str> = run["run"]["diagnostics"]
        .as_array()
        .unwrap_or_else(|| panic!("no diagnostics: {:#}", run["run"]))
        .iter()
        .filter_map(|d| d["code"].as_str())
        .collect();
    assert_eq!(codes, BTreeSet::from(["too-many-stages"]));
    s.push("main", &[(".slipway.yml", &too_big)]);
    let run = s.finished_run(2);
    assert_eq!(run["run"]["status"], "error", "{:#}", run["run"]);
    let why = run["run"]["error"].as_str().unwrap_or_default();
    assert!(
        why.contains(&format!("limited to {} bytes", pipelines::MAX_FILE_BYTES)),
        "{why}"
    );
}

// ---------------------------------------------------------------- secrets

const PR_PIPELINE: &str = "on: { pull_request: {} }
stages:
  test:
    env:
      KEY: ${{ secrets.DEPLOY_KEY }}
      NPM: ${{ secrets.NPM_TOKEN }}
      OK: ${{ secrets.PR_OK }}
    steps:
      - run: echo \"key=${KEY:-unset} npm=${NPM:-unset} ok=${OK:+set}\"
";

#[test]
fn a_fork_pull_request_log_names_the_secrets_it_did_not_get() {
    let s = Served::start(Processes::new(), "github");
    // Too short to be masked: refused by the API as by the CLI (admin_cli).
    let (status, body) = s.api(
        "PUT",
        "/api/repos/team/app/secrets/SHORT",
        Some(json!({"value": "abc"})),
    );
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at least 4 bytes"),
        "{body}"
    );
    s.p.cli_with_input(&["secret", "set", REPO, "DEPLOY_KEY"], "deploy-key-value-1");
    s.p.cli_with_input(&["secret", "set", REPO, "NPM_TOKEN"], "npm-token-value-2");
    s.p.cli_with_input(
        &["secret", "set", REPO, "PR_OK", "--allow-pull-requests"],
        "pr-visible-value-3",
    );

    let mut git = GitRepo::init(&s.source);
    let d = adapt_fixture(
        &mut git,
        ForgeKind::Github,
        "pull_request",
        "github/pull_request_synchronize_fork.json",
        &[(".slipway.yml", PR_PIPELINE)],
        &[(".slipway.yml", PR_PIPELINE), ("src/lib.rs", "// change")],
    );
    assert!(d.event.pr.as_ref().unwrap().fork);
    let headers = forge_headers(
        ForgeKind::Github,
        "pull_request",
        "fork-1",
        &d.body,
        Some(&s.webhook_secret),
    );
    let mut req = reqwest::blocking::Client::new()
        .post(s.p.url("/hooks/github/team/app"))
        .body(d.body.clone());
    for (k, v) in &headers {
        req = req.header(k, v);
    }
    let resp = req.send().unwrap();
    assert_eq!(resp.status().as_u16(), 202, "{:?}", resp.text());

    let run = s.finished_run(1);
    assert_eq!(run["run"]["status"], "success", "{run:#}");
    let log = s.log(1, &run, "test", 0);
    let first = log.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(
            "slipway: secrets withheld from this pull request from a fork: DEPLOY_KEY, NPM_TOKEN "
        ),
        "{log}"
    );
    assert!(first.contains("allow pull requests"), "{log}");
    assert!(!first.contains("PR_OK"), "{log}");
    assert!(log.contains("key=unset npm=unset ok=set"), "{log}");
    for value in [
        "deploy-key-value-1",
        "npm-token-value-2",
        "pr-visible-value-3",
    ] {
        assert!(!log.contains(value), "{log}");
        assert!(!s.p.logs().contains(value), "{value} in a process log");
    }
}

// ---------------------------------------------------------------- no panics

#[test]
fn a_closed_pipe_ends_quietly_and_a_full_disk_is_an_error_message() {
    // stdout is a pipe whose reader has already gone: every write fails with EPIPE.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = process::slipway()
        .arg("schema")
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "not quiet");

    // As a user types it: `head` takes ten bytes and leaves.
    let script = format!(
        "'{}' schema | head -c 10; echo; echo \"status: ${{PIPESTATUS[0]}}\"",
        slipway_bin().display()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let said = text(&out);
    assert!(said.contains("status: 0"), "{said}");
    assert!(!said.contains("panicked"), "{said}");
    assert_eq!(&out.stdout[..10], b"{\n  \"$defs", "{said}");

    // A full disk: an error that says what failed, and a non-zero exit.
    let examples =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shell-project");
    for args in [
        vec!["schema".to_string()],
        vec!["validate".to_string(), examples.display().to_string()],
        vec!["--help".to_string()],
    ] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let mut child = process::slipway()
            .args(&args)
            .stdout(full)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(
            stderr.trim(),
            "error: writing to stdout: No space left on device (os error 28)",
            "{args:?}"
        );
    }
}

// ---------------------------------------------------------------- the API

#[test]
fn the_api_documents_every_operation_and_answers_unknown_paths_in_json() {
    let s = Served::start(Processes::new(), "git");
    let (status, doc) = s.api("GET", "/api/openapi.json", None);
    assert_eq!(status, 200);
    let mut ids = BTreeSet::new();
    let mut problems = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let Some(id) = op["operationId"].as_str() else {
                problems.push(format!("{method} {path}: no operationId"));
                continue;
            };
            if !ids.insert(id.to_string()) {
                problems.push(format!("{method} {path}: operationId {id} is used twice"));
            }
            if op["summary"].as_str().is_none_or(|t| t.trim().is_empty()) {
                problems.push(format!("{method} {path}: no summary"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        ids.contains("runs_list") && ids.contains("repos_list"),
        "{ids:?}"
    );

    // Unknown paths and methods get the documented error shape, token or not.
    let error_of = |v: &Value| (v["error"]["code"].clone(), v["error"]["message"].clone());
    for (method, path, token) in [
        ("GET", "/api/nope", s.admin.as_str()),
        ("POST", "/api/repos/team/app/nope", s.admin.as_str()),
        ("GET", "/api/nope", ""),
    ] {
        let (status, body) = s.call(method, path, token, None);
        let (code, message) = error_of(&body);
        assert_eq!(
            (status, code),
            (404, json!("not_found")),
            "{method} {path}: {body}"
        );
        assert!(message.as_str().unwrap().contains(path), "{body}");
    }
    let (status, body) = s.api("DELETE", "/api/openapi.json", None);
    assert_eq!(
        (status, error_of(&body).0),
        (405, json!("method_not_allowed")),
        "{body}"
    );

    // Repositories are named by owner/name, never by their internal id.
    let (status, body) = s.api("GET", "/api/repos/team/app/runs/99", None);
    assert_eq!(status, 404);
    assert_eq!(
        body["error"]["message"],
        json!("not found: run #99 of team/app"),
        "{body}"
    );
}
