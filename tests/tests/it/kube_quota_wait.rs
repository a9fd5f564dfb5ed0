//! A stage whose pod the namespace's ResourceQuota refuses waits — it is neither failed
//! nor lost — and says why where people look: the run's API, `slipway runs show` and
//! the run page (still "queued", with the quota's message). Once quota frees up, it
//! runs, and the reason is gone. A real `slipway server` (no in-process runner), a
//! real `slipway runner --backend kubernetes` finding the API-server double through
//! `KUBECONFIG`, a real browser; and `slipway exec --backend kubernetes`.

use std::time::Duration;

use kube::api::DeleteParams;
use serde_json::{Value, json};
use tests::server_support::process::{Processes, slipway};

use crate::browser::Browser;
use crate::kube_admission::{fill_quota, pods};
use crate::kube_support::{self, IMAGE, NAMESPACE};

const PIPELINE: &str = "stages:
  build:
    image: slipway-test/busybox:latest
    steps:
      - echo built
";
const PASSWORD: &str = "correct horse battery staple";
const WAIT: Duration = Duration::from_secs(60);

fn stage<'a>(detail: &'a Value, key: &str) -> &'a Value {
    detail["stages"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["key"] == key))
        .unwrap_or(&Value::Null)
}

/// The quota admission's refusal of a stage pod, as the runner reports it.
fn is_quota_refusal(reason: &str) -> bool {
    reason.starts_with("pods \"slipway-")
        && reason.ends_with(
            "\" is forbidden: exceeded quota: slots, requested: pods=1, used: pods=1, limited: pods=1",
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_waiting_for_quota_says_why_in_the_api_the_cli_and_the_run_page() {
    let d = kube_support::double().await;
    fill_quota(&d).await;

    let p = Processes::new();
    let kubeconfig = p.dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, d.kubeconfig(NAMESPACE)).unwrap();
    let mut p = p
        .env("SLIPWAY_IN_PROCESS_RUNNER", "false")
        .env("KUBECONFIG", kubeconfig.to_str().unwrap())
        .env("SLIPWAY_KUBE_NAMESPACE", NAMESPACE)
        .env("SLIPWAY_KUBE_HELPER_IMAGE", IMAGE);
    p.start_server("server");
    let source = p.dir.path().join("repo");
    let sha = crate::git::commit(&source, &[(".slipway.yml", PIPELINE)]);
    p.cli(&[
        "repo",
        "add",
        "team/app",
        "--forge",
        "git",
        "--clone-url",
        source.to_str().unwrap(),
    ]);
    p.cli_with_input(&["user", "add", "dev", "--role", "developer"], PASSWORD);
    let admin = p.cli(&["token", "create", "admin", "--scope", "admin"]);
    let hook = p.cli(&[
        "token", "create", "hook", "--scope", "hook", "--repo", "team/app",
    ]);
    let runner = p.cli(&["token", "create", "kube", "--scope", "runner"]);
    p.start_runner(
        "kube-runner",
        &runner,
        &["--backend", "kubernetes", "--shutdown-grace", "1"],
    );
    let pushed = reqwest::Client::new()
        .post(p.url("/hooks/git/team/app"))
        .bearer_auth(&hook)
        .json(&json!({ "updates": [{
            "old": "0".repeat(40), "new": sha, "ref": "refs/heads/main", "message": "first",
        }]}))
        .send()
        .await
        .unwrap();
    assert_eq!(pushed.status(), 202, "{}", pushed.text().await.unwrap());

    // The API: leased (running), no step started, and why.
    let detail = p
        .wait("the stage to say it waits for quota", WAIT, || async {
            let detail = p.run_detail(&admin, "team/app", 1).await?;
            match stage(&detail, "build")["waiting"].as_str() {
                Some(_) => Ok(detail),
                None => Err(format!("{detail:#}")),
            }
        })
        .await;
    let build = stage(&detail, "build");
    assert_eq!(build["status"], "running", "{detail:#}");
    assert_eq!(build["steps"][0]["status"], "pending", "{detail:#}");
    let reason = build["waiting"].as_str().unwrap();
    assert!(is_quota_refusal(reason), "{reason}");

    // The CLI.
    let home = tempfile::tempdir().unwrap();
    let out = slipway()
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path().join(".config"))
        .env("SLIPWAY_SERVER", p.url(""))
        .env("SLIPWAY_TOKEN", &admin)
        .args(["runs", "show", "team/app", "1"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{shown}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        shown.lines().any(|l| l
            .trim()
            .strip_prefix("waiting: ")
            .is_some_and(is_quota_refusal)),
        "{shown}"
    );

    // The run page: still queued, with the reason.
    let b = Browser::start().await;
    let base = p.url("");
    b.sign_in(&base, "dev", PASSWORD).await;
    let page = format!("{base}/repos/team/app/runs/1");
    b.goto(&page).await;
    let card = b
        .wait_text(".stage h3", "build", Duration::from_secs(10))
        .await;
    assert!(card.contains("queued"), "{card}");
    let why = b
        .wait_text(".stage p.muted", "exceeded quota", Duration::from_secs(10))
        .await;
    assert!(
        why.strip_prefix("waiting: ").is_some_and(is_quota_refusal),
        "{why}"
    );
    b.screenshot("run-stage-waiting-for-quota-desktop").await;

    // Quota frees up: the stage runs (the runner re-creates its pod every 10 s), and
    // the page follows without a reload.
    b.js("window.__sameDocument = 'yes'; return null").await;
    pods(&d, NAMESPACE)
        .delete("blocker", &DeleteParams::default())
        .await
        .unwrap();
    let done = p
        .wait_run_end(&admin, "team/app", 1, Duration::from_secs(90))
        .await;
    assert_eq!(done["run"]["status"], "success", "{done:#}\n{}", p.logs());
    assert!(stage(&done, "build").get("waiting").is_none(), "{done:#}");
    b.wait_text(".stage h3", "success", Duration::from_secs(30))
        .await;
    assert!(
        !b.read(".stages").await.contains("exceeded quota"),
        "the reason outlived the wait"
    );
    assert_eq!(
        b.js("return window.__sameDocument || 'reloaded'").await,
        "yes"
    );
    b.close().await;
    d.shutdown().await;
}

/// `slipway exec --backend kubernetes` says so too, on the stage's own lines, and
/// goes on once quota frees up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_on_kubernetes_prints_why_a_stage_waits_and_when_it_stops() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let d = kube_support::double().await;
    fill_quota(&d).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    crate::git::commit(&repo, &[(".slipway.yml", PIPELINE)]);
    // The commit holds it; exec reads the working tree.
    std::fs::write(repo.join(".slipway.yml"), PIPELINE).unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, d.kubeconfig(NAMESPACE)).unwrap();
    let mut child = slipway()
        .env("HOME", dir.path())
        .env("KUBECONFIG", &kubeconfig)
        .env("SLIPWAY_KUBE_NAMESPACE", NAMESPACE)
        .env("SLIPWAY_KUBE_HELPER_IMAGE", IMAGE)
        .args(["exec", "--backend", "kubernetes"])
        .arg(&repo)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Lines as they come, read on a thread (the pipe blocks).
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr = || std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
    let mut seen = Vec::new();
    let next = |seen: &mut Vec<String>| {
        let line = lines.recv_timeout(WAIT).unwrap_or_else(|_| {
            panic!(
                "no further output; so far:\n{}\nstderr:\n{}",
                seen.join("\n"),
                stderr()
            )
        });
        seen.push(line.clone());
        line
    };
    loop {
        let line = next(&mut seen);
        if let Some((_, why)) = line.split_once("… waiting: ") {
            assert!(line.starts_with("build"), "{line}");
            assert!(is_quota_refusal(why), "{why}");
            break;
        }
    }
    pods(&d, NAMESPACE)
        .delete("blocker", &DeleteParams::default())
        .await
        .unwrap();
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(90)) {
        seen.push(line);
    }
    let status = child.wait().unwrap();
    let text = format!("{}\nstderr:\n{}", seen.join("\n"), stderr());
    assert!(status.success(), "{text}");
    let no_longer = seen
        .iter()
        .position(|l| l.ends_with("… no longer waiting"))
        .unwrap_or_else(|| panic!("{text}"));
    let built = seen
        .iter()
        .position(|l| l.ends_with("| built"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(no_longer < built, "{text}");
    d.shutdown().await;
}
