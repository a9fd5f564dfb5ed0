//! Issue 4 end to end on real parts: a `git push` of `examples/docker-app` to a plain
//! git repository whose post-receive hook calls `slipway hook` → the real server
//! (in-process runner on the Docker backend) packages, tests against a service
//! container, scans, builds the image and pushes it to the local registry (htpasswd,
//! credentials from a sealed secret); the manifest read back from the registry has the
//! digest the run recorded, and the next stage saw that digest. Then a planted token
//! fails the scan stage with its file and line, and a SARIF report with a `high`
//! finding fails a scan stage whose `fail_on` is `high`.
//!
//! Needs `bash .ci/images.sh` (test images) and `bash .ci/registry.sh` (registry on
//! 127.0.0.1:5000, user `slipway`, password `slipway-test`).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::support::git::git;
use crate::support::process::{Processes, slipway_bin};

const REPO: &str = "demo/docker-app";
const REGISTRY: &str = "127.0.0.1:5000";
const REGISTRY_AUTH: &str = "slipway:slipway-test";

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

struct Api<'a> {
    server: &'a Processes,
    token: String,
    http: reqwest::blocking::Client,
}

impl Api<'_> {
    fn get(&self, path: &str) -> Value {
        let resp = self
            .http
            .get(self.server.url(path))
            .bearer_auth(&self.token)
            .send()
            .unwrap();
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.json().unwrap()
    }

    fn text(&self, path: &str) -> String {
        let resp = self
            .http
            .get(self.server.url(path))
            .bearer_auth(&self.token)
            .send()
            .unwrap();
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.text().unwrap()
    }

    /// Waits (bounded) for run `number` to finish; its detail.
    fn finished_run(&self, number: u32) -> Value {
        let what = format!("run #{number} to finish");
        self.server
            .wait_blocking(&what, Duration::from_secs(300), || {
                let resp = self
                    .http
                    .get(self.server.url(&format!("/api/repos/{REPO}/runs/{number}")))
                    .bearer_auth(&self.token)
                    .send()
                    .unwrap();
                if !resp.status().is_success() {
                    return Err(resp.status().to_string());
                }
                let run: Value = resp.json().unwrap();
                match run["run"]["status"].as_str().unwrap_or_default() {
                    "pending" | "running" => Err(format!("{:?}", statuses(&run))),
                    _ => Ok(run),
                }
            })
    }
}

fn stage<'a>(run: &'a Value, key: &str) -> &'a Value {
    run["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == key)
        .unwrap_or_else(|| panic!("no stage {key} in {run:#}"))
}

fn statuses(run: &Value) -> Vec<(String, String)> {
    run["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["key"].as_str().unwrap().to_owned(),
                s["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn manifest_digest(reference: &str) -> (String, String) {
    let resp = reqwest::blocking::Client::new()
        .get(format!(
            "http://{REGISTRY}/v2/examples/docker-app/manifests/{reference}"
        ))
        .basic_auth("slipway", Some("slipway-test"))
        .header(
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json",
        )
        .send()
        .unwrap_or_else(|e| panic!("registry unreachable ({e}); run `bash .ci/registry.sh`"));
    assert!(resp.status().is_success(), "manifest: {}", resp.status());
    let header = resp
        .headers()
        .get("Docker-Content-Digest")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp.bytes().unwrap();
    (
        header,
        format!("sha256:{}", hex::encode(Sha256::digest(&body))),
    )
}

#[test]
fn a_push_builds_tests_scans_and_pushes_the_image_by_digest() {
    let mut server = Processes::new().env("SLIPWAY_RUNNER_BACKEND", "docker");
    server.start_server("server");
    let work = server.dir.path();

    // A plain git repository with the post-receive hook, registered with its secret.
    let bare = work.join("forge/docker-app.git");
    std::fs::create_dir_all(&bare).unwrap();
    git(&bare, &["init", "-q", "--bare"]);
    server.cli(&[
        "repo",
        "add",
        REPO,
        "--forge",
        "git",
        "--clone-url",
        bare.to_str().unwrap(),
    ]);
    server.cli_with_input(&["secret", "set", REPO, "REGISTRY_AUTH"], REGISTRY_AUTH);
    let hook_token = server.cli(&["token", "create", "hook", "--scope", "hook", "--repo", REPO]);
    let admin = server.cli(&["token", "create", "e2e", "--scope", "admin"]);
    let hook = bare.join("hooks/post-receive");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nSLIPWAY_TOKEN='{hook_token}' exec '{}' hook --server '{}' --repo '{REPO}'\n",
            slipway_bin().display(),
            server.url("")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let api = Api {
        server: &server,
        token: admin,
        http: reqwest::blocking::Client::new(),
    };

    // Push 1: the example as it is.
    let checkout = work.join("checkout");
    git(work, &["clone", "-q", bare.to_str().unwrap(), "checkout"]);
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/docker-app");
    copy_dir(&example, &checkout);
    git(&checkout, &["add", "-A"]);
    git(&checkout, &["commit", "-qm", "docker-app"]);
    git(&checkout, &["push", "-q", "origin", "HEAD:main"]);

    let run = api.finished_run(1);
    assert_eq!(
        run["run"]["status"],
        "success",
        "{:?}\n{}",
        statuses(&run),
        server.logs()
    );
    let sha = run["run"]["sha"].as_str().unwrap().to_owned();
    let image = stage(&run, "image");
    let digest = image["outputs"]["digest"].as_str().unwrap().to_owned();
    assert_eq!(
        image["outputs"]["image"],
        format!("{REGISTRY}/examples/docker-app:{sha}")
    );
    // The registry serves exactly the recorded digest for the pushed tag.
    let (header, body) = manifest_digest(&sha);
    assert_eq!(header, digest);
    assert_eq!(body, digest);
    let (by_digest, _) = manifest_digest(&digest);
    assert_eq!(by_digest, digest);
    // …and the run's artifacts record it, next to the packaged file.
    let run_id = run["run"]["id"].as_i64().unwrap();
    let artifacts = api.get(&format!("/api/runs/{run_id}/artifacts"));
    let list = artifacts
        .as_array()
        .or_else(|| artifacts["artifacts"].as_array())
        .unwrap()
        .clone();
    assert!(
        list.iter().any(|a| a["kind"] == "image"
            && format!("sha256:{}", a["sha256"].as_str().unwrap()) == digest),
        "{artifacts:#}"
    );
    assert!(
        list.iter().any(|a| a["name"] == "dist/hello"),
        "{artifacts:#}"
    );
    // The stage after the image saw the digest, never a mutable tag.
    let notes = stage(&run, "release-notes");
    let log = api.text(&format!(
        "/api/repos/{REPO}/runs/1/stages/{}/steps/0/logs.txt",
        notes["id"]
    ));
    assert!(
        log.contains(&format!("{REGISTRY}/examples/docker-app@{digest}")),
        "{log}"
    );
    // The registry password never reached a log.
    let build_log = api.text(&format!(
        "/api/repos/{REPO}/runs/1/stages/{}/steps/0/logs.txt",
        image["id"]
    ));
    assert!(!build_log.contains("slipway-test"), "{build_log}");
    assert!(!server.logs().contains("slipway-test"));

    // Push 2: a planted token fails the scan with the file and line; nothing is pushed.
    let token = ["ghp_", "Q8wE3rT6yU", "9iO2pA5sD8", "fG1hJ4kL7z", "X0cV3b"].concat();
    std::fs::create_dir_all(checkout.join("config")).unwrap();
    std::fs::write(
        checkout.join("config/settings.env"),
        format!("# settings\nLOG_LEVEL=info\nGITHUB_TOKEN={token}\n"),
    )
    .unwrap();
    git(&checkout, &["add", "-A"]);
    git(&checkout, &["commit", "-qm", "oops"]);
    git(&checkout, &["push", "-q", "origin", "HEAD:main"]);
    let run = api.finished_run(2);
    assert_eq!(run["run"]["status"], "failure", "{:?}", statuses(&run));
    let scan = stage(&run, "scan");
    assert_eq!(scan["status"], "failure");
    let reason = scan["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("config/settings.env:3"), "{reason}");
    assert_eq!(stage(&run, "image")["status"], "skipped");
    let findings = api.get(&format!("/api/repos/{REPO}/runs/2/findings"));
    let findings = findings
        .as_array()
        .or_else(|| findings["findings"].as_array())
        .unwrap()
        .clone();
    assert!(
        findings.iter().any(|f| f["path"] == "config/settings.env"
            && f["line"] == 3
            && f["severity"] == "high"
            && f["stage_key"] == "scan"),
        "{findings:#?}"
    );
    assert!(
        !serde_json::to_string(&findings).unwrap().contains(&token),
        "a finding never holds the secret"
    );

    // Push 3: the token is gone; a scanner step writes SARIF with a `high` result.
    std::fs::remove_file(checkout.join("config/settings.env")).unwrap();
    let pipeline = std::fs::read_to_string(checkout.join(".slipway.yml")).unwrap();
    let sarif = r#"{"version":"2.1.0","runs":[{"tool":{"driver":{"name":"depcheck"}},"results":[{"ruleId":"CVE-2026-0001","level":"error","message":{"text":"vulnerable dependency"},"locations":[{"physicalLocation":{"artifactLocation":{"uri":"app/hello.sh"},"region":{"startLine":2}}}]}]}]}"#;
    let pipeline = pipeline.replace(
        "    kind: scan\n    fail_on: high\n",
        &format!(
            "    kind: scan\n    fail_on: high\n    sarif: [reports/*.sarif]\n    steps:\n      - name: depcheck\n        run: mkdir -p reports && echo '{sarif}' > reports/depcheck.sarif\n"
        ),
    );
    std::fs::write(checkout.join(".slipway.yml"), pipeline).unwrap();
    git(&checkout, &["add", "-A"]);
    git(&checkout, &["commit", "-qm", "scan dependencies"]);
    git(&checkout, &["push", "-q", "origin", "HEAD:main"]);
    let run = api.finished_run(3);
    let scan = stage(&run, "scan");
    assert_eq!(scan["status"], "failure", "{:?}", statuses(&run));
    let reason = scan["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("app/hello.sh:2") && reason.contains("CVE-2026-0001"),
        "{reason}"
    );
}
