//! Benchmarks that print ratios against a floor measured in the same run, so results
//! compare across machines. Run: `cargo run --release -p tests --bin bench`.
//!
//! - parse + validate + plan of a 200-stage pipeline, against a bare YAML parse of the
//!   same text (what our diagnostics and planning add on top of reading YAML at all);
//! - local-backend cost per step, against a bare `sh -c true` spawn + wait.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use runner::{LocalBackend, RunOptions, StageSpec, Status, StepSpec};
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    let quick = tests::bench_support::args(
        "bench",
        "Pipeline model and local backend benchmarks, each with a floor measured in the same run: parse+validate+plan of a 200-stage pipeline, a step and a one-step stage on the local backend.",
    )
    .quick;
    let rounds = if quick { 5 } else { 30 };
    println!("| benchmark | result | floor | ratio |");
    println!("|---|---|---|---|");
    parse_and_plan(rounds)?;
    local_step_overhead(if quick { 20 } else { 100 })?;
    Ok(())
}

/// A pipeline with `n` stages shaped like real ones: needs on earlier stages, env,
/// several steps with expressions, `when` filters, and a few matrices.
fn big_pipeline(n: usize) -> String {
    let mut y = String::from(
        "on:\n  push: { branches: [main, \"release/*\"] }\n  pull_request: {}\nenv: { GLOBAL: one }\nstages:\n",
    );
    for i in 0..n {
        let _ = writeln!(y, "  s{i}:");
        if i > 0 {
            let _ = writeln!(
                y,
                "    needs: [s{}{}]",
                i - 1,
                if i > 1 {
                    format!(", s{}", i / 2)
                } else {
                    String::new()
                }
            );
        }
        if i % 20 == 0 {
            let _ = writeln!(y, "    matrix: {{ os: [a, b], level: [\"1\", \"2\"] }}");
        }
        if i % 7 == 0 {
            let _ = writeln!(
                y,
                "    when: {{ branch: [main, \"release/*\"], paths: [\"src/**\", \"crates/s{i}/**\"] }}"
            );
        }
        let _ = writeln!(y, "    env: {{ STAGE_NO: \"{i}\" }}");
        let _ = writeln!(y, "    timeout: 10m");
        let _ = writeln!(y, "    steps:");
        for s in 0..3 {
            let _ = writeln!(
                y,
                "      - name: step{s}\n        run: echo ${{{{ git.sha }}}} {s} && make target-{i}-{s}"
            );
        }
    }
    y
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn parse_and_plan(rounds: usize) -> anyhow::Result<()> {
    let yaml = big_pipeline(200);
    let ctx = pipelines::EventContext {
        event: pipelines::Event::Push,
        branch: Some("main".into()),
        sha: "0123456789abcdef0123456789abcdef01234567".into(),
        changed_paths: Some(vec!["src/lib.rs".into(), "README.md".into()]),
        ..Default::default()
    };
    let mut ours = Vec::new();
    let mut floor = Vec::new();
    let mut planned = 0;
    for _ in 0..rounds {
        let start = Instant::now();
        let pipeline = pipelines::parse(".slipway.yml", &yaml)
            .map_err(|d| anyhow::anyhow!("benchmark pipeline invalid: {d:?}"))?;
        let plan = pipelines::plan(&pipeline, &ctx)?;
        ours.push(start.elapsed());
        planned = plan.stages.len() + plan.skipped.len();

        let start = Instant::now();
        let node = marked_yaml::parse_yaml(0, &yaml)?;
        std::hint::black_box(node);
        floor.push(start.elapsed());
    }
    let (ours, floor) = (median(ours), median(floor));
    println!(
        "| parse+validate+plan, 200 stages ({planned} planned, {} KiB) | {:.2} ms | bare YAML parse {:.2} ms | {:.1}x |",
        yaml.len() / 1024,
        ours.as_secs_f64() * 1e3,
        floor.as_secs_f64() * 1e3,
        ours.as_secs_f64() / floor.as_secs_f64()
    );
    Ok(())
}

fn local_step_overhead(steps: usize) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let backend = Arc::new(LocalBackend::new(None));
    let stage = |n: usize| StageSpec {
        steps: (0..n)
            .map(|i| StepSpec {
                name: format!("s{i}"),
                script: "true".into(),
                env: BTreeMap::new(),
                timeout: None,
            })
            .collect(),
        secrets: vec!["not-a-real-secret".into()],
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
    // Warm up the page cache and the runtime, then interleave rounds of ours and the
    // floor so that load from elsewhere on the machine hits both alike.
    run(stage(3))?;
    let bare_batch = || -> anyhow::Result<Duration> {
        let start = Instant::now();
        for _ in 0..steps {
            let status = Command::new("sh").args(["-c", "true"]).status()?;
            anyhow::ensure!(status.success());
        }
        Ok(start.elapsed() / steps as u32)
    };
    let (mut per_steps, mut ones, mut bares) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        bares.push(bare_batch()?);
        let one = run(stage(1))?;
        let many = run(stage(steps + 1))?;
        ones.push(one);
        per_steps.push(many.saturating_sub(one) / steps as u32);
    }
    let (per_step, one, bare) = (median(per_steps), median(ones), median(bares));
    println!(
        "| local backend, per step ({steps} steps) | {:.2} ms | bare `sh -c true` {:.2} ms | {:.2}x |",
        per_step.as_secs_f64() * 1e3,
        bare.as_secs_f64() * 1e3,
        per_step.as_secs_f64() / bare.as_secs_f64()
    );
    println!(
        "| local backend, one-step stage incl. workspace set-up | {:.2} ms | bare `sh -c true` {:.2} ms | {:.2}x |",
        one.as_secs_f64() * 1e3,
        bare.as_secs_f64() * 1e3,
        one.as_secs_f64() / bare.as_secs_f64()
    );
    Ok(())
}
