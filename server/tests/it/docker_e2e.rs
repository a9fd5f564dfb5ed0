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

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

const REPO: &str = "demo/docker-app";
const REGISTRY: &str = "127.0.0.1:5000";
const REGISTRY_AUTH: &str = "slipway:slipway-test";

fn slipway_bin() -> PathBuf {
    std::env::var_os("SLIPWAY_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_slipway")))
}

struct Server {
    child: Child,
    base: String,
    data: PathBuf,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(work: &Path) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let data = work.join("data");
        let log = work.join("server.log");
        let child = Command::new(slipway_bin())
            .arg("server")
            .env("SLIPWAY_DATA_DIR", &data)
            .env("SLIPWAY_LISTEN", format!("127.0.0.1:{port}"))
            .env("SLIPWAY_RUNNER_BACKEND", "docker")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            data,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = reqwest::blocking::get(format!("{}/readyz", server.base))
                && r.status().is_success()
            {
                return server;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("server not ready:\n{}", server.log_text());
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs an admin CLI command against the server's data dir; its stdout.
    fn cli(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut child = Command::new(slipway_bin())
            .args(args)
            .env("SLIPWAY_DATA_DIR", &self.data)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let mut input = child.stdin.take().unwrap();
            input
                .write_all(stdin.unwrap_or_default().as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "slipway {args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.name=Dev", "-c", "user.email=dev@example.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

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

struct Api {
    base: String,
    token: String,
    http: reqwest::blocking::Client,
}

impl Api {
    fn get(&self, path: &str) -> Value {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .unwrap();
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.json().unwrap()
    }

    fn text(&self, path: &str) -> String {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .unwrap();
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.text().unwrap()
    }

    /// Waits (bounded) for run `number` to finish; its detail.
    fn finished_run(&self, number: u32, server: &Server) -> Value {
        let deadline = Instant::now() + Duration::from_secs(300);
        while Instant::now() < deadline {
            let resp = self
                .http
                .get(format!("{}/api/repos/{REPO}/runs/{number}", self.base))
                .bearer_auth(&self.token)
                .send()
                .unwrap();
            if resp.status().is_success() {
                let run: Value = resp.json().unwrap();
                let status = run["run"]["status"].as_str().unwrap_or_default().to_owned();
                if !matches!(status.as_str(), "pending" | "running") {
                    return run;
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "run #{number} did not finish in time; server log:\n{}",
            server.log_text()
        );
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
    let work = tempfile::tempdir().unwrap();
    let server = Server::start(work.path());

    // A plain git repository with the post-receive hook, registered with its secret.
    let bare = work.path().join("forge/docker-app.git");
    std::fs::create_dir_all(&bare).unwrap();
    git(&bare, &["init", "-q", "--bare"]);
    server.cli(
        &[
            "repo",
            "add",
            REPO,
            "--forge",
            "git",
            "--clone-url",
            bare.to_str().unwrap(),
        ],
        None,
    );
    server.cli(
        &["secret", "set", REPO, "REGISTRY_AUTH"],
        Some(REGISTRY_AUTH),
    );
    let hook_token = server
        .cli(&["token", "create", "hook", "--scope", "hook"], None)
        .trim()
        .to_owned();
    let admin = server
        .cli(&["token", "create", "e2e", "--scope", "admin"], None)
        .trim()
        .to_owned();
    let hook = bare.join("hooks/post-receive");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nSLIPWAY_TOKEN='{hook_token}' exec '{}' hook --server '{}' --repo '{REPO}'\n",
            slipway_bin().display(),
            server.base
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let api = Api {
        base: server.base.clone(),
        token: admin,
        http: reqwest::blocking::Client::new(),
    };

    // Push 1: the example as it is.
    let checkout = work.path().join("checkout");
    git(
        work.path(),
        &["clone", "-q", bare.to_str().unwrap(), "checkout"],
    );
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/docker-app");
    copy_dir(&example, &checkout);
    git(&checkout, &["add", "-A"]);
    git(&checkout, &["commit", "-qm", "docker-app"]);
    git(&checkout, &["push", "-q", "origin", "HEAD:main"]);

    let run = api.finished_run(1, &server);
    assert_eq!(
        run["run"]["status"],
        "success",
        "{:?}\n{}",
        statuses(&run),
        server.log_text()
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
    assert!(!server.log_text().contains("slipway-test"));

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
    let run = api.finished_run(2, &server);
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
    let run = api.finished_run(3, &server);
    let scan = stage(&run, "scan");
    assert_eq!(scan["status"], "failure", "{:?}", statuses(&run));
    let reason = scan["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("app/hello.sh:2") && reason.contains("CVE-2026-0001"),
        "{reason}"
    );
}
