//! Every expression a step's `run` may use (the list in `pipelines::expr`, documented in
//! the README), with its value in the step: on the real `slipway server` process (a
//! push through the plain-git hook, the in-process runner on Docker) and in
//! `slipway exec --backend docker`. Docker because `stages.<name>.outputs.<key>` comes
//! from an image stage. Needs a Docker engine and `bash .ci/images.sh`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;

use crate::support::docker::require_images;
use crate::support::git::GitRepo;
use crate::support::process::{Processes, slipway};

const PIPELINE: &str = r#"on:
  push: { branches: [main] }
  manual:
    params:
      greeting: { default: hello }
stages:
  image:
    image: slipway-test/busybox:latest
    kind: image
    dockerfile: Dockerfile
  show:
    needs: [image]
    image: slipway-test/busybox:latest
    matrix: { os: [linux] }
    steps:
      - run: |
          echo "git.sha=${{ git.sha }}"
          echo "git.short_sha=${{ git.short_sha }}"
          echo "git.branch=${{ git.branch }}"
          echo "git.tag=${{ git.tag }}"
          echo "git.ref=${{ git.ref }}"
          echo "git.message=${{ git.message }}"
          echo "git.author=${{ git.author }}"
          echo "event=${{ event }}"
          echo "repo=${{ repo }}"
          echo "matrix.os=${{ matrix.os }}"
          echo "params.greeting=${{ params.greeting }}"
          if [ "${{ secrets.TOKEN }}" = "s3cr3t-value" ]; then echo "secrets.TOKEN=ok"; else echo "secrets.TOKEN=wrong"; fi
          echo "stages.image.outputs.image_id=${{ stages.image.outputs.image_id }}"
          echo "run.number=${{ run.number }}"
          echo "run.id=${{ run.id }}"
          echo "run.url=${{ run.url }}"
"#;

/// Every expression the test expects a line for, in the pipeline's order.
const NAMES: &[&str] = &[
    "git.sha",
    "git.short_sha",
    "git.branch",
    "git.tag",
    "git.ref",
    "git.message",
    "git.author",
    "event",
    "repo",
    "matrix.os",
    "params.greeting",
    "secrets.TOKEN",
    "stages.image.outputs.image_id",
    "run.number",
    "run.id",
    "run.url",
];

/// `name=value` lines of `text` (a step's log, or `exec`'s `stage | line` output).
fn values(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(|l| l.rsplit_once(" | ").map_or(l, |(_, line)| line))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| NAMES.contains(k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The repository: the pipeline and an image to build, committed on `main` by Ada.
fn repository(dir: &Path) -> String {
    let mut git = GitRepo::init(dir).with_author("Ada Lovelace", "ada@example.com");
    git.commit(
        "refs/heads/main",
        &[],
        &[
            (".slipway.yml", PIPELINE),
            (
                "Dockerfile",
                "FROM slipway-test/busybox:latest\nRUN echo built > /built\n",
            ),
        ],
        "Expressions everywhere\n\nWith a body.",
    )
    .to_string()
}

/// What does not depend on where the pipeline runs, checked for both.
fn check_common(got: &BTreeMap<String, String>, sha: &str, repo: &str, text: &str) {
    let expect = [
        ("git.sha", sha.to_string()),
        ("git.short_sha", sha[..7].to_string()),
        ("git.branch", "main".into()),
        ("git.tag", String::new()),
        ("git.ref", "refs/heads/main".into()),
        ("git.message", "Expressions everywhere".into()),
        ("git.author", "Ada Lovelace".into()),
        ("event", "push".into()),
        ("repo", repo.into()),
        ("matrix.os", "linux".into()),
        ("params.greeting", "hello".into()),
        ("secrets.TOKEN", "ok".into()),
    ];
    for (name, value) in expect {
        assert_eq!(
            got.get(name).map(String::as_str),
            Some(value.as_str()),
            "{name}\n{text}"
        );
    }
    let image_id = &got["stages.image.outputs.image_id"];
    assert!(image_id.starts_with("sha256:"), "{image_id}\n{text}");
    let missing: Vec<&&str> = NAMES.iter().filter(|n| !got.contains_key(**n)).collect();
    assert!(missing.is_empty(), "no line for {missing:?}\n{text}");
}

#[test]
fn every_documented_expression_has_its_value_in_exec() {
    require_images(&["slipway-test/busybox:latest"]);
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("shop");
    let sha = repository(&repo);
    let out = slipway()
        .arg("exec")
        .arg(&repo)
        .args(["--commit", "main", "--backend", "docker"])
        .args(["--secret", "TOKEN=s3cr3t-value"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let got = values(&text);
    println!("exec: {got:?}");
    // The repository is the directory's name; a local run has no number, id or URL
    // on a server: 0, 0 and empty, never unset.
    check_common(&got, &sha, "shop", &text);
    assert_eq!(got["run.number"], "0", "{text}");
    assert_eq!(got["run.id"], "0", "{text}");
    assert_eq!(got["run.url"], "", "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_expression_has_its_value_on_the_server() {
    require_images(&["slipway-test/busybox:latest"]);
    let mut env = Processes::new()
        .env("SLIPWAY_RUNNER_BACKEND", "docker")
        .env("SLIPWAY_PUBLIC_URL", "https://ci.example.com/");
    let repo = env.dir.path().join("shop");
    let sha = repository(&repo);
    env.start_server("server");
    env.cli(&[
        "repo",
        "add",
        "team/shop",
        "--forge",
        "git",
        "--clone-url",
        repo.to_str().unwrap(),
    ]);
    env.cli_with_input(&["secret", "set", "team/shop", "TOKEN"], "s3cr3t-value");
    let hook = env.cli(&[
        "token",
        "create",
        "hook",
        "--scope",
        "hook",
        "--repo",
        "team/shop",
    ]);
    let admin = env.cli(&["token", "create", "admin", "--scope", "admin"]);
    // What `slipway hook` sends for the push (`git show --format=%an%x00%B`).
    let r = reqwest::Client::new()
        .post(env.url("/hooks/git/team/shop"))
        .bearer_auth(&hook)
        .json(&json!({ "updates": [{
            "old": "0".repeat(40), "new": sha, "ref": "refs/heads/main",
            "message": "Expressions everywhere\n\nWith a body.", "author": "Ada Lovelace"
        }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let run = env
        .wait_run_end(&admin, "team/shop", 1, Duration::from_secs(180))
        .await;
    let text = env
        .step_log(&admin, "team/shop", 1, "show (os=linux)", 0)
        .await;
    assert_eq!(
        run["run"]["status"],
        "success",
        "{run}\n{text}\n{}",
        env.logs()
    );
    let got = values(&text);
    println!("server: {got:?}");
    check_common(&got, &sha, "team/shop", &text);
    assert_eq!(got["run.number"], "1", "{text}");
    assert_eq!(got["run.id"], run["run"]["id"].to_string(), "{text}");
    assert_eq!(
        got["run.url"], "https://ci.example.com/repos/team/shop/runs/1",
        "{text}"
    );
}
