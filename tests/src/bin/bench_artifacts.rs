//! Artifact store benchmarks: a real server (the `server` library's HTTP app on
//! 127.0.0.1, SQLite) with a runner speaking the runner protocol, each number printed
//! with a floor measured in the same run on the same machine, rounds interleaved:
//!
//! - upload throughput (PUT of an artifact: streamed, hashed, written, fsynced,
//!   recorded), against writing the same bytes to a file plus their sha256 plus fsync;
//! - download throughput (GET through the admin API, streamed), against reading the
//!   blob file directly.
//!
//! Run: `cargo run --release -p tests --bin bench_artifacts` (`--quick`: 64 MiB, 3
//! rounds; default 512 MiB, 5 rounds).

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use server::daemon::config::{Config, Settings};
use server::protocol::{
    ArtifactStored, LEASE, LeaseRequest, LeaseResponse, REGISTER, RegisterResponse, artifacts_path,
};
use server::store::{Event, NewRepo, NewRun, NewStage, TokenScope, Trigger};
use sha2::{Digest, Sha256};

const MIB: usize = 1024 * 1024;

fn main() -> anyhow::Result<()> {
    let quick = tests::bench_support::args(
        "bench_artifacts",
        "Artifact upload and download through a real server over HTTP, against file write + sha256 + fsync and a plain file read measured in the same run.",
    )
    .quick;
    let (size, rounds) = if quick { (64 * MIB, 3) } else { (512 * MIB, 5) };
    tokio::runtime::Runtime::new()?.block_on(run(size, rounds))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mb_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// `size` deterministic bytes, different for every `round`.
fn data(size: usize, round: u64) -> Vec<u8> {
    let mut out = vec![0u8; size];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ round;
    for chunk in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    out
}

/// A git repository with one commit, for a run to point at.
fn commit(path: &Path) -> anyhow::Result<String> {
    let repo = git2::Repository::init(path)?;
    std::fs::write(path.join("README.md"), "bench\n")?;
    let mut index = repo.index()?;
    index.add_path(Path::new("README.md"))?;
    let tree = repo.find_tree(index.write_tree()?)?;
    let sig = git2::Signature::now("Bench", "bench@example.com")?;
    Ok(repo
        .commit(Some("refs/heads/main"), &sig, &sig, "bench", &tree, &[])?
        .to_string())
}

async fn run(size: usize, rounds: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let settings = Settings {
        data_dir: Some(dir.path().join("data")),
        in_process_runner: Some(false),
        heartbeat_timeout_secs: Some(600),
        ..Settings::default()
    };
    let state = server::daemon::serve::build_state(Config::resolve(settings, None)?).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let serving = tokio::spawn(server::daemon::serve::run(listener, state.clone()));

    // One run with one stage, leased by a runner speaking the protocol.
    let forge = dir.path().join("forge");
    let sha = commit(&forge)?;
    let repo = state
        .store
        .create_repo(NewRepo {
            api_url: None,
            name: "bench/artifacts".into(),
            forge: server::store::ForgeKind::Git,
            clone_url: forge.display().to_string(),
            default_branch: "main".into(),
            webhook_secret_enc: Vec::new(),
            forge_token_enc: None,
            trusted: true,
        })
        .await?;
    let run = state
        .store
        .create_run(
            repo.id,
            NewRun::new(Trigger::Manual, Event::Push, "refs/heads/main", &sha),
        )
        .await?;
    let yaml = "stages:\n  one:\n    steps:\n      - name: s\n        run: 'true'\n";
    let pipeline = pipelines::parse(".slipway.yml", yaml).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let ctx = pipelines::EventContext {
        branch: Some("main".into()),
        sha: sha.clone(),
        ..Default::default()
    };
    let plan = pipelines::plan(&pipeline, &ctx).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let stages = plan
        .stages
        .iter()
        .map(|s| NewStage {
            key: s.id.clone(),
            pipeline: plan.pipeline.clone(),
            needs: s.needs.clone(),
            spec: serde_json::to_value(s).expect("a plan serialises"),
            max_attempts: 1,
            skip: None,
            succeeded: None,
            carried_from: None,
            steps: server::agent::stage_spec::step_names(s),
            labels: server::runs::routing::stage_labels(s),
        })
        .collect();
    state
        .store
        .set_run_planned(
            run.id,
            &serde_json::to_value(&plan)?,
            &plan.yaml_sha256,
            stages,
        )
        .await?;
    let runner_token = server::crypto::generate_token("slp_");
    state
        .store
        .create_token(
            "bench runner",
            &server::crypto::hash_token(&runner_token),
            TokenScope::Runner,
        )
        .await?;
    let (_, admin) =
        server::api::tokens::create_token(&state.store, "bench admin", TokenScope::Admin)
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let http = reqwest::Client::new();
    let reg: RegisterResponse = http
        .post(format!("{base}{REGISTER}"))
        .bearer_auth(&runner_token)
        .json(&serde_json::json!({"name": "bench", "capacity": 1}))
        .send()
        .await?
        .json()
        .await?;
    let lease: LeaseResponse = http
        .post(format!("{base}{LEASE}"))
        .bearer_auth(&runner_token)
        .json(&LeaseRequest {
            runner_id: reg.runner_id,
        })
        .send()
        .await?
        .json()
        .await?;

    let floor_dir = dir.path().join("floor");
    std::fs::create_dir_all(&floor_dir)?;
    let (mut up, mut up_floor, mut down, mut down_floor) = (vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        let bytes = bytes::Bytes::from(data(size, round));
        let digest = hex::encode(Sha256::digest(&bytes));

        // Ours: the upload, as the runner sends it.
        let started = Instant::now();
        let stored: ArtifactStored = http
            .put(format!("{base}{}", artifacts_path(lease.stage_id)))
            .query(&[
                ("lease_token", lease.lease_token.as_str()),
                ("name", &format!("out/round-{round}.bin")),
                ("sha256", &digest),
                ("size", &size.to_string()),
            ])
            .bearer_auth(&runner_token)
            .body(bytes.clone())
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        up.push(started.elapsed());
        ensure!(
            stored.new_blob && stored.size == size as u64,
            "upload not stored"
        );

        // Floor: the same bytes written to a file, hashed, fsynced.
        let path = floor_dir.join(format!("round-{round}.bin"));
        let started = Instant::now();
        let mut f = std::fs::File::create(&path)?;
        let mut h = Sha256::new();
        for chunk in bytes.chunks(64 * 1024) {
            h.update(chunk);
            f.write_all(chunk)?;
        }
        f.sync_all()?;
        ensure!(hex::encode(h.finalize()) == digest);
        up_floor.push(started.elapsed());

        // Ours: the download through the API, streamed.
        let started = Instant::now();
        let mut resp = http
            .get(format!("{base}/api/artifacts/{}/download", stored.id))
            .bearer_auth(admin.as_str())
            .send()
            .await?
            .error_for_status()?;
        let mut got = 0usize;
        while let Some(chunk) = resp.chunk().await? {
            got += chunk.len();
        }
        down.push(started.elapsed());
        ensure!(got == size, "short download");

        // Floor: reading the blob file.
        let blob = state.blobs.path(&digest)?;
        let started = Instant::now();
        let mut f = std::fs::File::open(&blob).context("blob")?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut read = 0usize;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            read += n;
        }
        down_floor.push(started.elapsed());
        ensure!(read == size);
        std::fs::remove_file(&path)?;
    }
    let mib = size / MIB;
    let (u, uf, d, df) = (
        median(up),
        median(up_floor),
        median(down),
        median(down_floor),
    );
    println!("| benchmark | result | floor | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| artifact upload, {mib} MiB (median of {rounds}) | {:.0} MB/s | file write + sha256 + fsync {:.0} MB/s | {:.1}x slower |",
        mb_per_s(size, u),
        mb_per_s(size, uf),
        u.as_secs_f64() / uf.as_secs_f64()
    );
    println!(
        "| artifact download, {mib} MiB (median of {rounds}) | {:.0} MB/s | reading the blob file {:.0} MB/s | {:.1}x slower |",
        mb_per_s(size, d),
        mb_per_s(size, df),
        d.as_secs_f64() / df.as_secs_f64()
    );
    state.shutdown.cancel();
    let _ = serving.await;
    Ok(())
}
