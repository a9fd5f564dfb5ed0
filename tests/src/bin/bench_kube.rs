//! Kubernetes backend cost against the API-server test double (`tests::kube_double`:
//! pods run as containers on the Docker engine), each number next to a floor
//! measured in the same run on the same double, rounds interleaved, medians
//! reported. Needs the test images: `bash .ci/images.sh`.
//! Run: `cargo run --release -p tests --bin bench_kube [-- --quick]`.
//!
//! Stages of 1 and 5 `true` steps go through `runner::run_stage` on the Kubernetes
//! backend. The floors are bare pods driven through the same API with the least
//! any client needs (create, watch until the `true` container has exited, delete,
//! watch until deleted): one of the same layout as a stage's (an init container
//! running `true`, then a main container idling like `workspace`), and a
//! one-container pod that completes. Printed:
//!
//! - API requests per stage, by route (deltas of `KubeDouble::requests`);
//! - a one-step stage from `run_stage` to its return, against each bare pod's
//!   create → deleted;
//! - per step: (5-step stage − 1-step stage) / 4, against a bare `docker run --rm`;
//! - the tail of a stage, from the moment its last step's container exits (the
//!   engine's `die` event, nanosecond clock) to the runner having that exit (the
//!   `StepFinished` event: `wait_step` returned, output drained, step released) and
//!   on to `run_stage` returning (pod deleted and gone: the runner may take the next
//!   stage). The floors, on the same-layout pod: exit → `terminated` seen on its
//!   watch, and delete → `DELETED` seen. `finishedAt` in the pod status is not
//!   used: API times have whole-second precision.

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, PostParams, PropagationPolicy, WatchEvent, WatchParams};
use runner::{
    KubernetesBackend, KubernetesOptions, RunOptions, StageEvent, StageSpec, Status, StepSpec,
};
use tests::kube_double::{self, INSTANCE_LABEL, KubeDouble};
use tokio_util::sync::CancellationToken;

const IMAGE: &str = "slipway-test/busybox:latest";
const NAMESPACE: &str = "bench";
/// The larger stage; the smaller has one step.
const STEPS: usize = 5;
/// The `workspace` container's command in the stage pods (`runner::kubernetes::pod`).
const IDLE: &str = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done";

type Requests = BTreeMap<String, u64>;

/// When each of the double's containers exited, from the engine's event stream.
#[derive(Clone, Default)]
struct Exits(Arc<Mutex<Vec<(String, SystemTime)>>>);

impl Exits {
    /// Follows `die` events of the double's containers (by its instance label).
    async fn follow(double: &KubeDouble) -> anyhow::Result<Exits> {
        use bollard::query_parameters::EventsOptionsBuilder;
        let exits = Exits::default();
        let filters = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            ("event".to_owned(), vec!["die".to_owned()]),
            (
                "label".to_owned(),
                vec![format!("{INSTANCE_LABEL}={}", double.instance)],
            ),
        ]);
        let options = EventsOptionsBuilder::new().filters(&filters).build();
        let mut events = double.docker().events(Some(options));
        let sink = exits.clone();
        tokio::spawn(async move {
            while let Some(Ok(event)) = events.next().await {
                let name = event
                    .actor
                    .and_then(|a| a.attributes)
                    .and_then(|mut a| a.remove("name"));
                if let (Some(name), Some(nanos)) = (name, event.time_nano) {
                    let at = UNIX_EPOCH + Duration::from_nanos(nanos as u64);
                    sink.0.lock().unwrap().push((name, at));
                }
            }
        });
        Ok(exits)
    }

    /// The exit, after `since`, of the container whose Docker name ends in `suffix`
    /// (`-<pod container name>`). The event may trail the exit by a moment.
    async fn of(&self, suffix: &str, since: SystemTime) -> anyhow::Result<SystemTime> {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let found = self
                .0
                .lock()
                .unwrap()
                .iter()
                .filter(|(name, at)| name.ends_with(suffix) && *at >= since)
                .map(|(_, at)| *at)
                .max();
            if let Some(at) = found {
                return Ok(at);
            }
            ensure!(Instant::now() < until, "no `die` event for *{suffix}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn delta(before: &Requests, after: &Requests) -> Requests {
    after
        .iter()
        .filter_map(|(route, n)| {
            let d = n - before.get(route).copied().unwrap_or(0);
            (d > 0).then(|| (route.clone(), d))
        })
        .collect()
}

fn between(from: SystemTime, to: SystemTime) -> Duration {
    to.duration_since(from).unwrap_or_default()
}

/// One measured run: the whole, its tail, and the API requests it made.
struct Run {
    total: Duration,
    /// Last container exit → the runner (or the bare pod's watch) has it.
    exit_seen: Duration,
    /// Then → the pod is deleted and gone.
    teardown: Duration,
    requests: Requests,
}

impl Run {
    fn exit_to_gone(&self) -> Duration {
        self.exit_seen + self.teardown
    }
}

async fn stage(
    backend: &KubernetesBackend,
    double: &KubeDouble,
    exits: &Exits,
    steps: usize,
) -> anyhow::Result<Run> {
    let spec = StageSpec {
        image: Some(IMAGE.into()),
        steps: (0..steps)
            .map(|i| StepSpec::new(format!("s{i}"), "true"))
            .collect(),
        ..StageSpec::new(format!("bench-{steps}"))
    };
    let last = steps - 1;
    let (tx, mut rx) = runner::event_channel(runner::DEFAULT_EVENT_BUDGET);
    let seen = tokio::spawn(async move {
        let mut at = None;
        while let Some(event) = rx.recv().await {
            if let StageEvent::StepFinished { index, .. } = event
                && index == last
            {
                at = Some(SystemTime::now());
            }
        }
        at
    });
    let before = double.requests();
    let since = SystemTime::now();
    let start = Instant::now();
    let outcome = runner::run_stage(
        backend,
        &spec,
        RunOptions::default(),
        tx,
        CancellationToken::new(),
    )
    .await;
    let done = SystemTime::now();
    let total = start.elapsed();
    let requests = delta(&before, &double.requests());
    ensure!(
        outcome.status == Status::Success,
        "bench stage failed: {outcome:?}"
    );
    let seen = seen.await?.context("no StepFinished for the last step")?;
    let exit = exits.of(&format!("-step-{last}"), since).await?;
    Ok(Run {
        total,
        exit_seen: between(exit, seen),
        teardown: between(seen, done),
        requests,
    })
}

/// The shape of a floor pod.
#[derive(Clone, Copy)]
enum Layout {
    /// One container running `true`: the pod completes (`Succeeded`).
    Minimal,
    /// Ours without the backend: an init container `step-0` running `true`, then
    /// a main container idling like `workspace` until the pod is deleted.
    StageLike,
}

/// A floor: a pod of `layout` driven through the same API with the least any
/// client needs: create, watch until the `true` container has exited, delete,
/// watch until it is deleted.
async fn bare_pod(
    pods: &Api<Pod>,
    double: &KubeDouble,
    exits: &Exits,
    name: String,
    grace: u32,
    layout: Layout,
) -> anyhow::Result<Run> {
    let both = serde_json::json!({"cpu": "1000m", "memory": "2Gi"});
    let container = |name: &str, script: &str| {
        serde_json::json!({
            "name": name,
            "image": IMAGE,
            "command": ["sh", "-c", script],
            "resources": {"requests": both, "limits": both},
        })
    };
    let (spec, exiting) = match layout {
        Layout::Minimal => (
            serde_json::json!({"containers": [container("main", "true")]}),
            "main",
        ),
        Layout::StageLike => (
            serde_json::json!({
                "initContainers": [container("step-0", "true")],
                "containers": [container("workspace", IDLE)],
            }),
            "step-0",
        ),
    };
    let mut pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": spec,
    }))?;
    let pod_spec = pod.spec.as_mut().expect("a spec");
    pod_spec.restart_policy = Some("Never".into());
    pod_spec.termination_grace_period_seconds = Some(grace.into());

    let before = double.requests();
    let since = SystemTime::now();
    let start = Instant::now();
    let created = pods.create(&PostParams::default(), &pod).await?;
    let rv = created.metadata.resource_version.unwrap_or_default();
    let wp = WatchParams::default().fields(&format!("metadata.name={name}"));
    let mut events = pods.watch(&wp, &rv).await?.boxed();
    loop {
        match events.try_next().await? {
            Some(WatchEvent::Added(p) | WatchEvent::Modified(p)) => {
                let status = p.status.unwrap_or_default();
                ensure!(
                    status.phase.as_deref() != Some("Failed"),
                    "the bare pod failed"
                );
                let exited = status
                    .init_container_statuses
                    .into_iter()
                    .chain(status.container_statuses)
                    .flatten()
                    .filter(|c| c.name == exiting)
                    .filter_map(|c| c.state?.terminated)
                    .next();
                if let Some(t) = exited {
                    ensure!(t.exit_code == 0, "the bare pod's {exiting} failed");
                    break;
                }
            }
            Some(WatchEvent::Error(e)) => bail!("watching the bare pod: {e:?}"),
            Some(_) => {}
            None => bail!("the bare pod's watch ended"),
        }
    }
    let seen = SystemTime::now();
    let dp = DeleteParams {
        grace_period_seconds: Some(grace),
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    pods.delete(&name, &dp).await?;
    loop {
        match events.try_next().await? {
            Some(WatchEvent::Deleted(_)) => break,
            Some(WatchEvent::Error(e)) => bail!("watching the bare pod: {e:?}"),
            Some(_) => {}
            None => bail!("the bare pod's watch ended"),
        }
    }
    let done = SystemTime::now();
    let total = start.elapsed();
    let requests = delta(&before, &double.requests());
    let exit = exits.of(&format!("-{exiting}"), since).await?;
    Ok(Run {
        total,
        exit_seen: between(exit, seen),
        teardown: between(seen, done),
        requests,
    })
}

fn bare_docker_run() -> anyhow::Result<Duration> {
    let start = Instant::now();
    let status = Command::new("docker")
        .args(["run", "--rm", IMAGE, "sh", "-c", "true"])
        .status()?;
    ensure!(status.success(), "bare docker run failed");
    Ok(start.elapsed())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

fn ratio(ours: Duration, floor: Duration) -> String {
    format!("{:.2}x", ours.as_secs_f64() / floor.as_secs_f64())
}

/// Requests on `route` per run.
fn counts(runs: &[Run], route: &str) -> String {
    spread(
        runs.iter()
            .map(|r| r.requests.get(route).copied().unwrap_or(0))
            .collect(),
    )
}

/// All requests per run.
fn totals(runs: &[Run]) -> String {
    spread(runs.iter().map(|r| r.requests.values().sum()).collect())
}

/// `n`, or `min–max` when the rounds differed.
fn spread(n: Vec<u64>) -> String {
    let (lo, hi) = (n.iter().min().unwrap(), n.iter().max().unwrap());
    if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}–{hi}")
    }
}

fn main() -> anyhow::Result<()> {
    let quick = tests::bench_support::args(
        "bench_kube",
        "Kubernetes backend cost on the API-server test double (pods on Docker; needs `bash .ci/images.sh`), against bare pods driven through the same API in the same run.",
    )
    .quick;
    let rounds = if quick { 2 } else { 9 };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let double = kube_double::start(Default::default()).await?;
        let exits = Exits::follow(&double).await?;
        let mut options =
            KubernetesOptions::new(format!("bench-kube-{}", std::process::id()), NAMESPACE);
        options.helper_image = IMAGE.into();
        let grace = options.kill_grace.as_secs() as u32;
        let backend = KubernetesBackend::new(double.client(), options)?;
        let pods: Api<Pod> = Api::namespaced(double.client(), NAMESPACE);

        // Warm up (and check the engine's events arrive), then interleave ours and
        // the floors so load elsewhere hits both alike.
        let bare = |n: String, layout| bare_pod(&pods, &double, &exits, n, grace, layout);
        stage(&backend, &double, &exits, 1).await?;
        bare("warm-like".into(), Layout::StageLike).await?;
        bare("warm-minimal".into(), Layout::Minimal).await?;
        let (mut ones, mut manys, mut likes, mut minimals, mut dockers) =
            (vec![], vec![], vec![], vec![], vec![]);
        for round in 1..=rounds {
            likes.push(bare(format!("like-{round}"), Layout::StageLike).await?);
            minimals.push(bare(format!("minimal-{round}"), Layout::Minimal).await?);
            dockers.push(tokio::task::block_in_place(bare_docker_run)?);
            ones.push(stage(&backend, &double, &exits, 1).await?);
            manys.push(stage(&backend, &double, &exits, STEPS).await?);
        }
        let med = |runs: &[Run], f: fn(&Run) -> Duration| median(runs.iter().map(f).collect());

        let routes: std::collections::BTreeSet<&String> = ones
            .iter()
            .chain(&manys)
            .chain(&likes)
            .flat_map(|r| r.requests.keys())
            .collect();
        println!("API requests per stage ({rounds} rounds; `min–max` where they differed):\n");
        println!("| route | 1-step stage | {STEPS}-step stage | bare pod, same layout |");
        println!("|---|---|---|---|");
        for route in &routes {
            println!(
                "| `{route}` | {} | {} | {} |",
                counts(&ones, route),
                counts(&manys, route),
                counts(&likes, route)
            );
        }
        println!(
            "| total | {} | {} | {} |",
            totals(&ones),
            totals(&manys),
            totals(&likes)
        );

        let (one, many) = (med(&ones, |r| r.total), med(&manys, |r| r.total));
        let (like, minimal) = (med(&likes, |r| r.total), med(&minimals, |r| r.total));
        let per_step = many.saturating_sub(one) / (STEPS as u32 - 1);
        let docker = median(dockers);
        let row = |what: &str, ours: Duration, floor: &str, floor_time: Duration| {
            println!(
                "| {what} | {} | {floor} {} | {} |",
                ms(ours),
                ms(floor_time),
                ratio(ours, floor_time)
            )
        };
        println!("\n| benchmark | result | floor | ratio |");
        println!("|---|---|---|---|");
        row(
            "kube backend, one-step stage (`run_stage` → return)",
            one,
            "bare pod, same layout: create → deleted",
            like,
        );
        row(
            "kube backend, one-step stage (`run_stage` → return)",
            one,
            "bare one-container pod: create → `Succeeded` → deleted",
            minimal,
        );
        row(
            &format!(
                "kube backend, per step (({STEPS}-step − 1-step) / {})",
                STEPS - 1
            ),
            per_step,
            "bare `docker run --rm`",
            docker,
        );
        let floor_seen = med(&likes, |r| r.exit_seen);
        let floor_teardown = med(&likes, |r| r.teardown);
        let floor_tail = med(&likes, Run::exit_to_gone);
        for (label, runs) in [("1-step", &ones), (&format!("{STEPS}-step"), &manys)] {
            row(
                &format!("{label} stage: last step exits → runner has the exit"),
                med(runs, |r| r.exit_seen),
                "same layout: exit → `terminated` on its watch",
                floor_seen,
            );
            row(
                &format!("{label} stage: runner has the exit → `run_stage` returns"),
                med(runs, |r| r.teardown),
                "same layout: delete → `DELETED` on its watch",
                floor_teardown,
            );
            row(
                &format!("{label} stage: last step exits → `run_stage` returns"),
                med(runs, Run::exit_to_gone),
                "same layout: exit → `DELETED`",
                floor_tail,
            );
        }
        let leftovers = double.shutdown().await;
        ensure!(leftovers.is_empty(), "the double left {leftovers:?}");
        Ok(())
    })
}
