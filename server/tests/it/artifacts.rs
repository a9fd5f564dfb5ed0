//! Artifacts and caches end to end: a real server (SQLite and PostgreSQL), the
//! in-process runner on the local backend, the runner protocol spoken directly where a
//! test needs to send what a well-behaved runner never would, and the public API.
//!
//! Long on purpose: one test per behaviour of this area, each written out end to end;
//! the set-up they share is in `support/`.

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use server::daemon::config::Settings;
use server::protocol::*;
use server::store::*;
use sha2::{Digest, Sha256};

use crate::support::both_databases;
use crate::support::test_server::TestServer;

const FILES: &[(&str, &str)] = &[
    ("README.md", "hello from the repository\n"),
    ("Cargo.lock", "# a lock file: part of the cache key\n"),
];

fn sha_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

// ---------------------------------------------------------------- between stages

both_databases!(artifacts_flow_between_stages, artifact_and_cache_rows);

async fn artifacts_flow_between_stages(db: Dialect) {
    let server = TestServer::builder().on(db).heartbeat_secs(3).start().await;
    let (repo, sha) = server.repo(FILES).await;
    let yaml = r#"
stages:
  build:
    artifacts: [out/]
    steps:
      - name: make
        run: |
          mkdir -p out/bin
          echo "built from $(cat README.md)" > out/result.txt
          cp out/result.txt out/same.txt
          printf '#!/bin/sh\necho tool ran\n' > out/bin/tool
          chmod +x out/bin/tool
          echo not an artifact > scratch.txt
  test:
    needs: [build]
    steps:
      - name: read
        run: |
          cat out/result.txt
          ./out/bin/tool
          test ! -e scratch.txt && echo no scratch
"#;
    let run = server.run(&repo, &sha, yaml, false).await;
    let run = server.wait_run(run.id, Duration::from_secs(90)).await;
    assert_eq!(
        run.status,
        RunStatus::Success,
        "{}",
        server.dump(run.id).await
    );
    // Stage B read stage A's files from its own workspace, modes kept.
    let test = server.stage(run.id, "test").await;
    assert_eq!(
        server.log_lines(&test.stage, 0),
        [
            "built from hello from the repository",
            "tool ran",
            "no scratch"
        ]
    );

    // The API lists them…
    let admin = server.admin_token().await;
    let http = reqwest::Client::new();
    let list: Vec<Value> = http
        .get(format!("{}/api/runs/{}/artifacts", server.url(), run.id))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = list.iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["out/bin/tool", "out/result.txt", "out/same.txt"]);
    for a in &list {
        assert_eq!(a["stage_key"], "build");
        assert_eq!(a["kind"], "file");
    }
    assert_eq!(list[0]["mode"], 0o755);
    assert_eq!(list[1]["sha256"], list[2]["sha256"]);
    let content = b"built from hello from the repository\n";
    assert_eq!(list[1]["sha256"], sha_hex(content));
    assert_eq!(list[1]["size"], content.len());

    // …identical content is stored once: two blobs for three artifacts, no temp files.
    let blobs = server.blob_files();
    assert_eq!(blobs.len(), 2, "{blobs:?}");
    assert!(blobs.iter().any(|p| p.ends_with(&sha_hex(content)[2..])));

    // …and downloads them.
    let id = list[1]["id"].as_i64().unwrap();
    let r = http
        .get(format!("{}/api/artifacts/{id}/download", server.url()))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers();
    assert_eq!(h["etag"], format!("\"{}\"", sha_hex(content)));
    assert_eq!(h["content-length"], content.len().to_string());
    assert_eq!(
        h["content-disposition"],
        "attachment; filename=\"result.txt\""
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), content);

    // A runner token is not enough for the public routes; unknown ids are 404.
    let runner = server.runner_token("reader").await;
    let r = http
        .get(format!("{}/api/artifacts/{id}/download", server.url()))
        .bearer_auth(&runner)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http
        .get(format!("{}/api/runs/999999/artifacts", server.url()))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rerun_of_failed_stages_gets_the_carried_over_stages_artifacts() {
    let server = TestServer::builder().heartbeat_secs(3).start().await;
    let (repo, sha) = server.repo(FILES).await;
    // `test` fails until the flag file exists (outside the workspace: a local backend).
    let flag = server.dir.path().join("let-it-pass");
    let yaml = format!(
        "
stages:
  build:
    artifacts: [out/]
    steps:
      - name: make
        run: mkdir out && echo from-run-1 > out/result.txt
  test:
    needs: [build]
    steps:
      - name: read
        run: |
          cat out/result.txt
          test -f {}
",
        flag.display()
    );
    let first = server.run(&repo, &sha, &yaml, false).await;
    let first = server.wait_run(first.id, Duration::from_secs(60)).await;
    assert_eq!(
        first.status,
        RunStatus::Failure,
        "{}",
        server.dump(first.id).await
    );

    std::fs::write(&flag, "").unwrap();
    let admin = server.admin_token().await;
    let rerun: Value = reqwest::Client::new()
        .post(format!(
            "{}/api/repos/{}/runs/{}/rerun",
            server.url(),
            repo.name,
            first.number
        ))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"failed_only": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = rerun["id"].as_i64().unwrap();
    server.state.wake.queue.notify_waiters();
    let second = server.wait_run(id, Duration::from_secs(60)).await;
    assert_eq!(
        second.status,
        RunStatus::Success,
        "{}",
        server.dump(id).await
    );
    // `build` did not run again, yet `test` read its file from run 1.
    let build = server.stage(id, "build").await;
    assert!(build.stage.started_at.is_none());
    let test = server.stage(id, "test").await;
    assert_eq!(server.log_lines(&test.stage, 0), ["from-run-1"]);
    // The rerun lists the file as its own, with the same content.
    let listed = server.state.store.list_run_artifacts(id).await.unwrap();
    let original = server
        .state
        .store
        .list_run_artifacts(first.id)
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].stage_id, build.stage.id);
    assert_eq!(listed[0].sha256, original[0].sha256);
    assert_eq!(server.blob_files().len(), 1);
    server.stop().await;
}

// ---------------------------------------------------------------- the protocol directly

/// A registered runner that leased the run's only stage.
struct Leased {
    http: reqwest::Client,
    base: String,
    token: String,
    lease: LeaseResponse,
}

impl Leased {
    async fn new(server: &TestServer, yaml: &str) -> Leased {
        let (repo, sha) = server.repo(FILES).await;
        server.run(&repo, &sha, yaml, false).await;
        let token = server.runner_token("direct runner").await;
        let http = reqwest::Client::new();
        let base = server.url();
        let reg: RegisterResponse = http
            .post(format!("{base}{REGISTER}"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"name": "direct", "capacity": 1}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let lease: LeaseResponse = http
            .post(format!("{base}{LEASE}"))
            .bearer_auth(&token)
            .json(&LeaseRequest {
                runner_id: reg.runner_id,
            })
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Leased {
            http,
            base,
            token,
            lease,
        }
    }

    fn upload(
        &self,
        name: &str,
        sha256: &str,
        size: u64,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::RequestBuilder {
        let size = size.to_string();
        self.http
            .put(format!(
                "{}{}",
                self.base,
                artifacts_path(self.lease.stage_id)
            ))
            .query(&[
                ("lease_token", self.lease.lease_token.as_str()),
                ("name", name),
                ("sha256", sha256),
                ("size", size.as_str()),
            ])
            .bearer_auth(&self.token)
            .body(body)
    }
}

/// The JSON body of a successful answer (else a panic showing the answer).
async fn ok_json<T: serde::de::DeserializeOwned>(r: reqwest::Response) -> T {
    let status = r.status();
    let text = r.text().await.unwrap();
    assert!(status.is_success(), "{status}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// (status, error code, message) of an answer.
async fn refusal(r: reqwest::Response) -> (u16, String, String) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or_default();
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unsafe_names_lies_and_oversized_uploads_are_refused() {
    let server = TestServer::builder()
        .settings(Settings {
            max_artifact_bytes: Some(1000),
            max_stage_artifact_bytes: Some(1500),
            ..Settings::default()
        })
        .in_process_runner(false)
        // Nobody heartbeats the stage these tests lease by hand.
        .heartbeat_secs(600)
        .start()
        .await;
    let l = Leased::new(
        &server,
        "stages:\n  one:\n    steps:\n      - name: s\n        run: echo hi\n",
    )
    .await;
    let data = vec![7u8; 800];
    let digest = sha_hex(&data);

    for (name, why) in [
        ("../../etc/passwd", "`..`"),
        ("/etc/passwd", "absolute"),
        ("out/../../x", "`..`"),
        ("a//b", "empty component"),
        ("a\\b", "backslash"),
        ("a\0b", "NUL"),
        ("", "empty"),
    ] {
        let r = l
            .upload(name, &digest, 800, data.clone())
            .send()
            .await
            .unwrap();
        let (status, code, message) = refusal(r).await;
        assert_eq!(
            (status, code.as_str()),
            (400, "bad_artifact_name"),
            "{name:?}"
        );
        assert!(message.contains(why), "{name:?}: {message}");
    }

    // Over the per-artifact limit: 413 before the body is read.
    // Big enough that the refusal arrives while the client is still sending.
    let big = vec![1u8; 8 * 1024 * 1024];
    let r = l
        .upload("big.bin", &sha_hex(&big), big.len() as u64, big.clone())
        .send()
        .await
        .unwrap();
    let (status, code, message) = refusal(r).await;
    assert_eq!((status, code.as_str()), (413, "payload_too_large"));
    assert!(message.contains("max_artifact_bytes"), "{message}");
    // A body longer than announced is cut off and refused.
    let r = l
        .upload("liar.bin", &sha_hex(&big), 10, big.clone())
        .send()
        .await
        .unwrap();
    let (status, code, message) = refusal(r).await;
    assert_eq!((status, code.as_str()), (400, "bad_upload"), "{message}");
    // Content that does not match its announced digest.
    let r = l
        .upload("wrong.bin", &sha_hex(b"other"), 800, data.clone())
        .send()
        .await
        .unwrap();
    let (status, code, message) = refusal(r).await;
    assert_eq!((status, code.as_str()), (400, "bad_upload"));
    assert!(message.contains("sha256"), "{message}");
    assert!(server.blob_files().is_empty(), "{:?}", server.blob_files());

    // A good upload, then the same again (a retry): one row, one blob.
    let ok: ArtifactStored = l
        .upload("dist/app.bin", &digest, 800, data.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(ok.new_blob);
    let again: ArtifactStored = l
        .upload("dist/app.bin", &digest, 800, data.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!again.new_blob);
    assert_eq!(again.id, ok.id);
    // Over the per-stage total (800 stored + 800 > 1500).
    let r = l
        .upload("dist/other.bin", &digest, 800, data.clone())
        .send()
        .await
        .unwrap();
    let (status, _, message) = refusal(r).await;
    assert_eq!(status, 413);
    assert!(message.contains("max_stage_artifact_bytes"), "{message}");

    let rows = server
        .state
        .store
        .list_run_artifacts(l.lease.run_id)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].name, "dist/app.bin");
    assert_eq!(server.blob_files().len(), 1, "{:?}", server.blob_files());

    // A stale lease token is refused, uploads and downloads alike.
    let r = l
        .http
        .put(format!("{}{}", l.base, artifacts_path(l.lease.stage_id)))
        .query(&[
            ("lease_token", "stale"),
            ("name", "x"),
            ("sha256", digest.as_str()),
            ("size", "800"),
        ])
        .bearer_auth(&l.token)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(refusal(r).await.1, "lease_lost");
    let r = l
        .http
        .get(format!(
            "{}{}",
            l.base,
            artifact_path(l.lease.stage_id, ok.id)
        ))
        .query(&[("lease_token", "stale")])
        .bearer_auth(&l.token)
        .send()
        .await
        .unwrap();
    assert_eq!(refusal(r).await.1, "lease_lost");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_symlink_artifact_fails_the_stage() {
    let server = TestServer::builder().heartbeat_secs(3).start().await;
    let (repo, sha) = server.repo(FILES).await;
    let yaml = "\
stages:
  leak:
    artifacts: [leak.txt]
    steps:
      - name: link
        run: ln -s /etc/passwd leak.txt
";
    let run = server.run(&repo, &sha, yaml, false).await;
    let run = server.wait_run(run.id, Duration::from_secs(60)).await;
    assert_ne!(run.status, RunStatus::Success);
    let stage = server.stage(run.id, "leak").await;
    let reason = stage.stage.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("symlink") && reason.contains("leak.txt"),
        "{}",
        server.dump(run.id).await
    );
    assert!(
        server
            .state
            .store
            .list_run_artifacts(run.id)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(server.blob_files().is_empty());
    server.stop().await;
}

// ---------------------------------------------------------------- 1 GB

const GIB: u64 = 1024 * 1024 * 1024;
const BLOCK: usize = 1024 * 1024;

/// Deterministic, incompressible-looking bytes: a 1 MiB pseudo-random block with each
/// copy stamped with its index, so no two MiB are alike.
fn big_stream(total: u64) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    let mut block = vec![0u8; BLOCK];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in block.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let blocks = total.div_ceil(BLOCK as u64);
    futures::stream::iter(0..blocks).map(move |i| {
        let mut b = block.clone();
        b[..8].copy_from_slice(&i.to_le_bytes());
        let len = (total - i * BLOCK as u64).min(BLOCK as u64) as usize;
        b.truncate(len);
        Ok(b)
    })
}

/// Peak resident memory of this process (VmHWM), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_one_gigabyte_artifact_round_trips() {
    let server = TestServer::builder()
        .in_process_runner(false)
        // Nobody heartbeats the stage this test leases by hand.
        .heartbeat_secs(600)
        .start()
        .await;
    let l = Leased::new(
        &server,
        "stages:\n  big:\n    steps:\n      - name: s\n        run: echo hi\n",
    )
    .await;
    let mut hasher = Sha256::new();
    let mut source = std::pin::pin!(big_stream(GIB));
    while let Some(chunk) = source.next().await {
        hasher.update(chunk.unwrap());
    }
    let digest = hex::encode(hasher.finalize());
    let rss_before = peak_rss();

    let stored = l
        .upload(
            "big/one-gigabyte.bin",
            &digest,
            GIB,
            reqwest::Body::wrap_stream(big_stream(GIB)),
        )
        .timeout(Duration::from_secs(280))
        .send()
        .await
        .unwrap();
    let stored: ArtifactStored = ok_json(stored).await;
    assert_eq!(stored.size, GIB);
    let blob = server.state.blobs.path(&digest).unwrap();
    assert_eq!(std::fs::metadata(&blob).unwrap().len(), GIB);

    let admin = server.admin_token().await;
    let resp = l
        .http
        .get(format!("{}/api/artifacts/{}/download", l.base, stored.id))
        .bearer_auth(&admin)
        .timeout(Duration::from_secs(280))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], GIB.to_string());
    let mut body = resp.bytes_stream();
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        size += chunk.len() as u64;
        hasher.update(&chunk);
    }
    assert_eq!(size, GIB);
    assert_eq!(hex::encode(hasher.finalize()), digest);
    // Streamed both ways: the process never came near holding the gigabyte.
    let grew = peak_rss().saturating_sub(rss_before);
    assert!(grew < 256 * 1024 * 1024, "peak RSS grew by {grew} bytes");

    server.stop().await;
}

// ---------------------------------------------------------------- caches

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cache_saved_by_one_run_is_restored_in_the_next() {
    let server = TestServer::builder().heartbeat_secs(3).start().await;
    let (repo, sha) = server.repo(FILES).await;
    let yaml = r#"
stages:
  deps:
    cache: [deps]
    steps:
      - name: fetch
        run: |
          if [ -f deps/lib.txt ]; then
            echo "cache hit: $(cat deps/lib.txt) $(cat deps/sub/more)"
          else
            echo "cache miss"
            mkdir -p deps/sub
            echo "fetched once" > deps/lib.txt
            echo more > deps/sub/more
          fi
"#;
    // A fork's pull request runs without a cache and may not save one.
    let fork = server.run(&repo, &sha, yaml, true).await;
    let fork = server.wait_run(fork.id, Duration::from_secs(60)).await;
    assert_eq!(
        fork.status,
        RunStatus::Success,
        "{}",
        server.dump(fork.id).await
    );
    let stage = server.stage(fork.id, "deps").await;
    assert_eq!(server.log_lines(&stage.stage, 0), ["cache miss"]);
    assert!(
        server
            .state
            .store
            .list_caches(repo.id)
            .await
            .unwrap()
            .is_empty()
    );

    let first = server.run(&repo, &sha, yaml, false).await;
    let first = server.wait_run(first.id, Duration::from_secs(60)).await;
    assert_eq!(
        first.status,
        RunStatus::Success,
        "{}",
        server.dump(first.id).await
    );
    let stage = server.stage(first.id, "deps").await;
    assert_eq!(server.log_lines(&stage.stage, 0), ["cache miss"]);
    let caches = server.state.store.list_caches(repo.id).await.unwrap();
    assert_eq!(caches.len(), 1, "{caches:?}");
    // Cached files are not artifacts.
    assert!(
        server
            .state
            .store
            .list_run_artifacts(first.id)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        server
            .state
            .blobs
            .path(&caches[0].sha256)
            .unwrap()
            .is_file()
    );

    let second = server.run(&repo, &sha, yaml, false).await;
    let second = server.wait_run(second.id, Duration::from_secs(60)).await;
    assert_eq!(second.status, RunStatus::Success);
    let stage = server.stage(second.id, "deps").await;
    assert_eq!(
        server.log_lines(&stage.stage, 0),
        ["cache hit: fetched once more"]
    );
    let after = server.state.store.list_caches(repo.id).await.unwrap();
    assert_eq!(after.len(), 1);
    assert!(after[0].last_used_at >= caches[0].last_used_at);
    server.stop().await;
}

// ---------------------------------------------------------------- store

async fn artifact_and_cache_rows(db: Dialect) {
    let server = TestServer::builder()
        .on(db)
        .in_process_runner(false)
        .heartbeat_secs(3)
        .start()
        .await;
    let store = &server.state.store;
    let (repo, sha) = server.repo(FILES).await;
    let yaml = "stages:\n  a:\n    steps:\n      - name: s\n        run: 'true'\n  b:\n    needs: [a]\n    steps:\n      - name: s\n        run: 'true'\n";
    let run = server.run(&repo, &sha, yaml, false).await;
    let a = server.stage(run.id, "a").await.stage;
    let b = server.stage(run.id, "b").await.stage;
    let file = |name: &str, sha: &str, size: i64| NewArtifact {
        name: name.into(),
        kind: ArtifactKind::File,
        sha256: sha.into(),
        size,
        mode: 0o644,
    };
    let x = "a".repeat(64);
    let y = "b".repeat(64);
    let first = store
        .put_artifact(a.id, &file("out/x", &x, 10))
        .await
        .unwrap();
    assert_eq!(first.stage_key, "a");
    assert_eq!(first.run_id, run.id);
    // Same name again (a retried attempt): replaced in place.
    let replaced = store
        .put_artifact(a.id, &file("out/x", &y, 20))
        .await
        .unwrap();
    assert_eq!(replaced.id, first.id);
    assert_eq!(replaced.sha256, y);
    store
        .put_artifact(a.id, &file("out/y", &x, 5))
        .await
        .unwrap();
    store
        .put_artifact(b.id, &file("out/x", &x, 7))
        .await
        .unwrap();
    store
        .put_artifact(
            b.id,
            &NewArtifact {
                name: "127.0.0.1:5000/team/app:1".into(),
                kind: ArtifactKind::Image,
                sha256: y.clone(),
                size: 0,
                mode: 0o644,
            },
        )
        .await
        .unwrap();
    let all = store.list_run_artifacts(run.id).await.unwrap();
    let keys: Vec<(&str, &str)> = all
        .iter()
        .map(|r| (r.stage_key.as_str(), r.name.as_str()))
        .collect();
    assert_eq!(
        keys,
        [
            ("a", "out/x"),
            ("a", "out/y"),
            ("b", "127.0.0.1:5000/team/app:1"),
            ("b", "out/x")
        ]
    );
    assert_eq!(store.stage_artifact_bytes(a.id, "").await.unwrap(), 25);
    assert_eq!(store.stage_artifact_bytes(a.id, "out/x").await.unwrap(), 5);
    // Images do not count against the byte limits.
    assert_eq!(store.stage_artifact_bytes(b.id, "").await.unwrap(), 7);
    assert_eq!(store.get_artifact(first.id).await.unwrap().size, 20);
    assert!(matches!(
        store.get_artifact(999_999).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        store.put_artifact(999_999, &file("z", &x, 1)).await,
        Err(Error::NotFound(_))
    ));
    assert_eq!(store.clear_stage_artifacts(a.id).await.unwrap(), 2);
    assert_eq!(store.list_run_artifacts(run.id).await.unwrap().len(), 2);

    // Caches: the first save of a key wins; a lookup marks it used.
    assert!(store.use_cache(repo.id, &x).await.unwrap().is_none());
    assert!(store.put_cache(repo.id, &x, &y, 123).await.unwrap());
    assert!(!store.put_cache(repo.id, &x, &x, 456).await.unwrap());
    let entry = store.use_cache(repo.id, &x).await.unwrap().unwrap();
    assert_eq!((entry.sha256.as_str(), entry.size), (y.as_str(), 123));
    assert!(entry.last_used_at >= entry.created_at);
    assert_eq!(store.list_caches(repo.id).await.unwrap(), vec![entry]);
    server.stop().await;
}
