//! Docker backend overhead, as a ratio against a bare `docker run --rm` of the same
//! image measured in the same run (so results compare across machines and engines).
//! Needs the test images: `bash .ci/images.sh`.
//! Run: `cargo run --release -p tests --bin bench_docker [-- --quick]`.
//!
//! - per step: (stage of n+1 steps − stage of 1 step) / n, against one
//!   `docker run --rm IMAGE sh -c true`;
//! - a one-step stage including its network, volume and workspace upload, against the
//!   same single `docker run --rm`.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use runner::{Backend, DockerBackend, DockerOptions, RunOptions, StageSpec, Status, StepSpec};
use tokio_util::sync::CancellationToken;

const IMAGE: &str = "slipway-test/busybox:latest";

fn main() -> anyhow::Result<()> {
    let quick = tests::bench_support::args(
        "bench_docker",
        "Docker backend overhead per step and per stage, against a bare `docker run --rm` of the same image in the same run (needs `bash .ci/images.sh`).",
    )
    .quick;
    let steps = if quick { 5 } else { 20 };
    let rounds = if quick { 2 } else { 5 };
    let runtime = tokio::runtime::Runtime::new()?;
    let backend: Arc<dyn Backend> = Arc::new(runtime.block_on(DockerBackend::connect(
        DockerOptions::new(format!("bench-docker-{}", std::process::id())),
    ))?);
    let stage = |n: usize| StageSpec {
        image: Some(IMAGE.into()),
        steps: (0..n)
            .map(|i| StepSpec::new(format!("s{i}"), "true"))
            .collect(),
        ..StageSpec::new("bench")
    };
    let run = |spec: StageSpec| -> anyhow::Result<Duration> {
        let (tx, mut rx) = runner::event_channel(runner::DEFAULT_EVENT_BUDGET);
        let start = Instant::now();
        let outcome = runtime.block_on(async {
            let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
            let o = runner::run_stage(
                &*backend,
                &spec,
                RunOptions::default(),
                tx,
                CancellationToken::new(),
            )
            .await;
            let _ = drain.await;
            o
        });
        anyhow::ensure!(
            outcome.status == Status::Success,
            "bench stage failed: {outcome:?}"
        );
        Ok(start.elapsed())
    };
    let bare = || -> anyhow::Result<Duration> {
        let start = Instant::now();
        let status = Command::new("docker")
            .args(["run", "--rm", IMAGE, "sh", "-c", "true"])
            .status()?;
        anyhow::ensure!(status.success(), "bare docker run failed");
        Ok(start.elapsed())
    };
    // Warm up, then interleave ours and the floor so load elsewhere hits both alike.
    run(stage(1))?;
    bare()?;
    let (mut per_steps, mut ones, mut bares) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        bares.push(bare()?);
        let one = run(stage(1))?;
        let many = run(stage(steps + 1))?;
        ones.push(one);
        per_steps.push(many.saturating_sub(one) / steps as u32);
    }
    let (per_step, one, bare) = (median(per_steps), median(ones), median(bares));
    println!("| benchmark | result | floor | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| docker backend, per step ({steps} steps) | {:.0} ms | bare `docker run --rm` {:.0} ms | {:.2}x |",
        per_step.as_secs_f64() * 1e3,
        bare.as_secs_f64() * 1e3,
        per_step.as_secs_f64() / bare.as_secs_f64()
    );
    println!(
        "| docker backend, one-step stage incl. network, volume, workspace | {:.0} ms | bare `docker run --rm` {:.0} ms | {:.2}x |",
        one.as_secs_f64() * 1e3,
        bare.as_secs_f64() * 1e3,
        one.as_secs_f64() / bare.as_secs_f64()
    );
    Ok(())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}
