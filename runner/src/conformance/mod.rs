//! The backend conformance suite: written once, run by every backend.
//!
//! Each case is a public async fn taking the backend under test and the image to
//! run steps in (`None` for the local backend). Scripts only use POSIX `sh` and
//! busybox-level tools (`printf`, `head`, `tr`, `yes`, `base64`, `sleep`, `ln`,
//! `env`), so a busybox image is enough for container backends.
//!
//! Use it through the macro, which generates one test per case:
//!
//! ```ignore
//! runner::conformance_tests!(std::sync::Arc::new(runner::LocalBackend::new(None)), None);
//! ```
//!
//! The backend expression is evaluated inside the test's async runtime, so it may
//! `.await` (e.g. `Arc::new(DockerBackend::connect().await.unwrap())`).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::{
    Backend, LogLine, LogStreamKind, RunOptions, Source, StageEvent, StageOutcome, StageSpec,
    Status, StepSpec, run_stage,
};

/// Upper bound for one case, so a hanging backend fails the test instead of CI.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(300);
/// Generous bound proving that a timeout or a cancel took effect (the steps sleep
/// for 300 s); not a performance assertion.
const KILL_BOUND: Duration = Duration::from_secs(60);

/// Generates one `#[test]` per conformance case for a backend.
///
/// `$backend`: an expression of type `Arc<dyn Backend>` (or coercible to it),
/// evaluated once per test inside a Tokio runtime (it may use `.await`).
/// `$image`: an `Option<String>` with the image steps run in.
///
/// Each test builds its own multi-threaded runtime, so the calling crate needs no
/// tokio test macros.
#[macro_export]
macro_rules! conformance_tests {
    ($backend:expr, $image:expr $(,)?) => {
        $crate::conformance_tests!(@cases ($backend) ($image)
            exit_codes,
            env_isolation,
            workspace_shared_between_steps,
            git_source,
            directory_source,
            step_timeout,
            term_ignored_still_killed,
            stage_timeout,
            cancel_kills_process_tree,
            background_process_does_not_block,
            large_output,
            binary_output,
            masking,
            artifacts,
            stdout_stderr_separation,
            long_lines,
            event_order,
            scan_stage,
            image_stage_missing_dockerfile,
        );
    };
    (@cases ($backend:expr) ($image:expr) $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::conformance::run_case(stringify!($case), async {
                    let backend: ::std::sync::Arc<dyn $crate::Backend> = $backend;
                    let image: ::std::option::Option<::std::string::String> = $image;
                    $crate::conformance::$case(backend, image).await;
                });
            }
        )*
    };
}

/// Runs one case on a fresh multi-threaded runtime, bounded by [`CASE_TIMEOUT`].
pub fn run_case(name: &str, case: impl Future<Output = ()>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building a tokio runtime");
    rt.block_on(async {
        if tokio::time::timeout(CASE_TIMEOUT, case).await.is_err() {
            panic!("conformance case `{name}` did not finish within {CASE_TIMEOUT:?}");
        }
    });
}

// ---------------------------------------------------------------------------
// Helpers (public so that backend-specific tests can reuse them).
// ---------------------------------------------------------------------------

/// A finished stage and every event it sent.
#[derive(Debug)]
pub struct Run {
    pub outcome: StageOutcome,
    pub events: Vec<StageEvent>,
}

impl Run {
    /// Lines of step `step`, in order.
    pub fn lines(&self, step: usize) -> Vec<&LogLine> {
        self.events
            .iter()
            .filter_map(|e| match e {
                StageEvent::Line(l) if l.step == step => Some(l),
                _ => None,
            })
            .collect()
    }

    /// Text of step `step`'s lines from one stream (lossy UTF-8).
    pub fn text(&self, step: usize, stream: LogStreamKind) -> Vec<String> {
        self.lines(step)
            .into_iter()
            .filter(|l| l.stream == stream)
            .map(|l| String::from_utf8_lossy(&l.bytes).into_owned())
            .collect()
    }

    pub fn stdout(&self, step: usize) -> Vec<String> {
        self.text(step, LogStreamKind::Stdout)
    }

    fn statuses(&self) -> Vec<Status> {
        self.outcome
            .steps
            .iter()
            .map(|s| s.status.clone())
            .collect()
    }
}

/// A stage spec with one step per script.
pub fn stage(id: &str, image: &Option<String>, scripts: &[&str]) -> StageSpec {
    let mut spec = StageSpec::new(id);
    spec.image = image.clone();
    spec.steps = scripts
        .iter()
        .enumerate()
        .map(|(i, s)| StepSpec::new(format!("step{i}"), *s))
        .collect();
    spec
}

/// Runs `spec`, handing each event to `on_event` as it arrives.
pub async fn drive(
    backend: &dyn Backend,
    spec: &StageSpec,
    opts: RunOptions,
    cancel: CancellationToken,
    mut on_event: impl FnMut(StageEvent),
) -> StageOutcome {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let consume = async {
        while let Some(event) = rx.recv().await {
            on_event(event);
        }
    };
    // run_stage drops the sender when it returns, which ends `consume`.
    let (outcome, ()) = tokio::join!(run_stage(backend, spec, opts, tx, cancel), consume);
    outcome
}

/// Runs `spec` and collects all events.
pub async fn run(backend: &dyn Backend, spec: &StageSpec) -> Run {
    run_with(backend, spec, RunOptions::default()).await
}

pub async fn run_with(backend: &dyn Backend, spec: &StageSpec, opts: RunOptions) -> Run {
    let mut events = Vec::new();
    let outcome = drive(backend, spec, opts, CancellationToken::new(), |e| {
        events.push(e)
    })
    .await;
    Run { outcome, events }
}

/// How a step identifies a process it started: its pid as the step sees it, and
/// the step's PID namespace (`pid:[4026531836]`). The pair names the process on
/// any backend whose steps run on this host's kernel: the local backend (the
/// namespace is the test's own) and containers (their own namespace, whose pids
/// the host sees under other numbers). A step prints it with [`PRINT_GRANDCHILD`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessRef {
    pub pid: u32,
    pub pid_ns: String,
}

/// Shell that prints the last background job as a [`ProcessRef`] line.
pub const PRINT_GRANDCHILD: &str = "echo grandchild=$! $(readlink /proc/self/ns/pid)";

impl ProcessRef {
    /// Parses the `grandchild=<pid> <pid namespace>` line a step printed.
    pub fn from_lines(lines: &[String]) -> ProcessRef {
        let line = lines
            .iter()
            .find_map(|l| l.strip_prefix("grandchild="))
            .unwrap_or_else(|| panic!("step did not print its grandchild: {lines:?}"));
        let (pid, ns) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("grandchild line without a namespace: {line:?}"));
        ProcessRef {
            pid: pid.trim().parse().expect("grandchild pid"),
            pid_ns: ns.trim().to_owned(),
        }
    }

    /// Whether the process still runs `sleep`. Zombies count as dead: they are
    /// gone as far as resources go, and reaping them is the job of whatever PID 1
    /// they have. Scans the host's /proc for a process in the namespace whose
    /// innermost pid (the last `NSpid` field) matches.
    pub fn sleep_alive(&self) -> bool {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return false;
        };
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(host_pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let base = Path::new("/proc").join(host_pid);
            let Ok(ns) = std::fs::read_link(base.join("ns/pid")) else {
                continue;
            };
            if ns.to_string_lossy() != self.pid_ns {
                continue;
            }
            let Ok(status) = std::fs::read_to_string(base.join("status")) else {
                continue;
            };
            let inner = status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|v| v.split_whitespace().last())
                .and_then(|p| p.parse::<u32>().ok());
            if inner != Some(self.pid) {
                continue;
            }
            let state = status
                .lines()
                .find_map(|l| l.strip_prefix("State:"))
                .and_then(|v| v.trim_start().chars().next());
            if matches!(state, Some('Z') | Some('X')) {
                return false;
            }
            // A reused pid running something else is not our grandchild.
            let cmdline = std::fs::read(base.join("cmdline")).unwrap_or_default();
            return cmdline.windows(5).any(|w| w == b"sleep");
        }
        false
    }
}

/// Checks that the grandchild a step printed (see [`ProcessRef`]) is gone.
async fn assert_grandchild_gone(run_lines: &[String]) {
    let grandchild = ProcessRef::from_lines(run_lines);
    // SIGKILL delivery is asynchronous; give the kernel a moment.
    let until = Instant::now() + Duration::from_secs(20);
    while grandchild.sleep_alive() {
        assert!(
            Instant::now() < until,
            "grandchild process {grandchild:?} survived the step"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------

/// Exit codes are results: 0 succeeds, 1 and 42 fail with their code, later steps
/// are skipped, and `sh -e` stops a script at its first failing command.
pub async fn exit_codes(backend: Arc<dyn Backend>, image: Option<String>) {
    let spec = stage("exit-codes", &image, &["echo ok", "exit 42", "echo never"]);
    let r = run(&*backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Failure, "{:?}", r.outcome);
    assert_eq!(
        r.statuses(),
        vec![Status::Success, Status::Failure, Status::Skipped]
    );
    let codes: Vec<Option<i32>> = r.outcome.steps.iter().map(|s| s.exit_code).collect();
    assert_eq!(codes, vec![Some(0), Some(42), None]);
    assert!(r.outcome.steps.iter().all(|s| !s.oom_killed));
    assert!(r.lines(2).is_empty());

    let spec = stage("exit-one", &image, &["false\necho not reached"]);
    let r = run(&*backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Failure);
    assert_eq!(r.outcome.steps[0].exit_code, Some(1));
    assert!(
        r.stdout(0).is_empty(),
        "sh -e must stop at `false`: {:?}",
        r.stdout(0)
    );

    let spec = stage("exit-zero", &image, &["exit 0"]);
    let r = run(&*backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Success);
    assert_eq!(r.outcome.steps[0].exit_code, Some(0));
}

/// Stage and step env are visible (the step's wins); the runner's own environment
/// is not.
pub async fn env_isolation(backend: Arc<dyn Backend>, image: Option<String>) {
    let mut spec = stage("env", &image, &["env"]);
    spec.env = env(&[("STAGE_ONLY", "stage"), ("OVERRIDE", "stage")]);
    spec.steps[0].env = env(&[("STEP_ONLY", "step value"), ("OVERRIDE", "step")]);
    let r = run(&*backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Success, "{:?}", r.outcome);
    let out = r.stdout(0);
    for want in ["STAGE_ONLY=stage", "STEP_ONLY=step value", "OVERRIDE=step"] {
        assert!(out.iter().any(|l| l == want), "missing {want} in {out:?}");
    }
    assert!(!out.iter().any(|l| l == "OVERRIDE=stage"));

    // Variables a step environment legitimately has whatever the parent's are.
    const EXPECTED: &[&str] = &[
        "PATH", "HOME", "LANG", "TMPDIR", "PWD", "OLDPWD", "SHLVL", "_", "HOSTNAME", "TERM",
        "USER", "LOGNAME", "SHELL",
    ];
    let mut checked = 0;
    for (k, v) in std::env::vars() {
        if EXPECTED.contains(&k.as_str()) || v.is_empty() || v.contains('\n') {
            continue;
        }
        let leaked = format!("{k}={v}");
        assert!(
            !out.contains(&leaked),
            "the runner's environment variable {k} leaked into the step"
        );
        checked += 1;
    }
    // Under cargo/nextest the parent always has CARGO_* variables.
    assert!(checked > 0, "no parent variables to check against");
}

/// Steps of a stage share one workspace, and run in it.
pub async fn workspace_shared_between_steps(backend: Arc<dyn Backend>, image: Option<String>) {
    let spec = stage(
        "workspace",
        &image,
        &[
            "echo shared-content > shared.txt\nmkdir -p dir/sub\necho nested > dir/sub/f",
            "test \"$(cat shared.txt)\" = shared-content\ncat dir/sub/f",
        ],
    );
    let r = run(&*backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Success, "{:?}", r.events);
    assert_eq!(r.stdout(1), vec!["nested"]);
}

fn commit_file(
    repo: &git2::Repository,
    parent: Option<&git2::Commit<'_>>,
    files: &[(&str, &str)],
    update_ref: Option<&str>,
) -> git2::Oid {
    let sig = git2::Signature::now("Slipway Test", "test@example.com").unwrap();
    let mut builder = repo.treebuilder(None).unwrap();
    for (name, content) in files {
        let blob = repo.blob(content.as_bytes()).unwrap();
        builder.insert(name, blob, 0o100644).unwrap();
    }
    let tree = repo.find_tree(builder.write().unwrap()).unwrap();
    let parents: Vec<&git2::Commit<'_>> = parent.into_iter().collect();
    repo.commit(update_ref, &sig, &sig, "test commit", &tree, &parents)
        .unwrap()
}

/// The workspace is a clone of a git repository at the requested commit (a sha, a
/// revision like `HEAD`, or a commit only reachable from a non-branch ref); a
/// missing commit is a clear, non-retryable error.
pub async fn git_source(backend: Arc<dyn Backend>, image: Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let repo = git2::Repository::init(dir.path()).unwrap();
    let first = commit_file(&repo, None, &[("a.txt", "one\n")], Some("HEAD"));
    let first_commit = repo.find_commit(first).unwrap();
    let second = commit_file(
        &repo,
        Some(&first_commit),
        &[("a.txt", "two\n")],
        Some("HEAD"),
    );
    let pr = commit_file(
        &repo,
        Some(&first_commit),
        &[("a.txt", "pull\n")],
        Some("refs/pull/1/head"),
    );
    let url = dir.path().to_str().unwrap().to_owned();

    for (commit, want) in [
        (first.to_string(), "one"),
        ("HEAD".to_string(), "two"),
        (second.to_string()[..12].to_string(), "two"),
        (pr.to_string(), "pull"),
    ] {
        let mut spec = stage("git", &image, &["cat a.txt"]);
        spec.source = Source::Git {
            url: url.clone(),
            commit: commit.clone(),
        };
        let r = run(&*backend, &spec).await;
        assert_eq!(
            r.outcome.status,
            Status::Success,
            "{commit}: {:?}",
            r.outcome
        );
        assert_eq!(r.stdout(0), vec![want], "checkout of {commit}");
    }

    let missing = "0123456789abcdef0123456789abcdef01234567";
    let mut spec = stage("git-missing", &image, &["true"]);
    spec.source = Source::Git {
        url,
        commit: missing.into(),
    };
    let r = run(&*backend, &spec).await;
    match &r.outcome.status {
        Status::Error(msg) => assert!(msg.contains(missing), "{msg}"),
        other => panic!("expected an error for a missing commit, got {other:?}"),
    }
    assert_eq!(r.statuses(), vec![Status::Skipped]);
}

/// A directory source is copied with permissions and symlinks (as symlinks), and
/// `.git` is included.
pub async fn directory_source(backend: Arc<dyn Backend>, image: Option<String>) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("bin")).unwrap();
    std::fs::create_dir_all(p.join(".git")).unwrap();
    std::fs::write(p.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
    std::fs::write(
        p.join("bin/hello.sh"),
        "#!/bin/sh\necho hello from script\n",
    )
    .unwrap();
    std::fs::set_permissions(
        p.join("bin/hello.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("bin/hello.sh", p.join("link")).unwrap();

    let mut spec = stage(
        "directory",
        &image,
        &["./bin/hello.sh\ntest -L link\n./link\ntest -f .git/HEAD"],
    );
    spec.source = Source::Directory(p.to_path_buf());
    let r = run(&*backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Success, "{:?}", r.events);
    assert_eq!(r.stdout(0), vec!["hello from script", "hello from script"]);
}

/// A step timeout kills the step (and its background children) and skips the rest.
pub async fn step_timeout(backend: Arc<dyn Backend>, image: Option<String>) {
    let mut spec = stage(
        "step-timeout",
        &image,
        &[
            &format!("sleep 300 &\n{PRINT_GRANDCHILD}\nsleep 300"),
            "echo never",
        ],
    );
    spec.steps[0].timeout = Some(Duration::from_secs(2));
    let started = Instant::now();
    let r = run(&*backend, &spec).await;
    assert!(
        started.elapsed() < KILL_BOUND,
        "timeout did not fire in time"
    );
    assert_eq!(r.outcome.status, Status::TimedOut, "{:?}", r.outcome);
    assert_eq!(r.statuses(), vec![Status::TimedOut, Status::Skipped]);
    assert_eq!(r.outcome.steps[0].exit_code, None);
    assert_grandchild_gone(&r.stdout(0)).await;
}

/// A step that ignores SIGTERM is still killed (SIGKILL after the grace period).
pub async fn term_ignored_still_killed(backend: Arc<dyn Backend>, image: Option<String>) {
    let mut spec = stage(
        "term-ignored",
        &image,
        &["trap '' TERM\necho ready\nwhile true; do sleep 1; done"],
    );
    spec.steps[0].timeout = Some(Duration::from_secs(2));
    let started = Instant::now();
    let r = run(&*backend, &spec).await;
    assert!(
        started.elapsed() < KILL_BOUND,
        "SIGKILL escalation did not happen"
    );
    assert_eq!(r.outcome.status, Status::TimedOut, "{:?}", r.outcome);
    assert_eq!(r.stdout(0), vec!["ready"]);
}

/// The stage timeout covers all steps together.
pub async fn stage_timeout(backend: Arc<dyn Backend>, image: Option<String>) {
    let mut spec = stage(
        "stage-timeout",
        &image,
        &["echo first", "sleep 300", "echo never"],
    );
    spec.timeout = Some(Duration::from_secs(8));
    let started = Instant::now();
    let r = run(&*backend, &spec).await;
    assert!(started.elapsed() < KILL_BOUND + Duration::from_secs(8));
    assert_eq!(r.outcome.status, Status::TimedOut, "{:?}", r.outcome);
    assert_eq!(
        r.statuses(),
        vec![Status::Success, Status::TimedOut, Status::Skipped]
    );
}

/// Cancelling mid-step stops the step and its whole process tree.
pub async fn cancel_kills_process_tree(backend: Arc<dyn Backend>, image: Option<String>) {
    let spec = stage(
        "cancel",
        &image,
        &[
            &format!("sleep 300 &\n{PRINT_GRANDCHILD}\necho ready\nwait"),
            "echo never",
        ],
    );
    let cancel = CancellationToken::new();
    let mut cancelled_at = None;
    let mut seen_alive = None;
    let mut events = Vec::new();
    let outcome = drive(
        &*backend,
        &spec,
        RunOptions::default(),
        cancel.clone(),
        |e| {
            if let StageEvent::Line(l) = &e
                && l.bytes == b"ready"
                && cancelled_at.is_none()
            {
                // The probe must see the grandchild while it runs, or "gone"
                // afterwards would prove nothing. Bounded: `sleep` may still be
                // between fork and exec.
                let lines: Vec<String> = events
                    .iter()
                    .filter_map(|e| match e {
                        StageEvent::Line(l) => Some(String::from_utf8_lossy(&l.bytes).into_owned()),
                        _ => None,
                    })
                    .collect();
                let grandchild = ProcessRef::from_lines(&lines);
                let until = Instant::now() + Duration::from_secs(10);
                while !grandchild.sleep_alive() && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(20));
                }
                seen_alive = Some(grandchild.sleep_alive());
                cancel.cancel();
                cancelled_at = Some(Instant::now());
            }
            events.push(e);
        },
    )
    .await;
    let cancelled_at = cancelled_at.expect("the step never printed `ready`");
    assert_eq!(
        seen_alive,
        Some(true),
        "the running grandchild was not visible in /proc (is the backend on this host?)"
    );
    assert!(
        cancelled_at.elapsed() < KILL_BOUND,
        "cancel did not take effect in time"
    );
    let r = Run { outcome, events };
    assert_eq!(r.outcome.status, Status::Cancelled, "{:?}", r.outcome);
    assert_eq!(r.statuses(), vec![Status::Cancelled, Status::Skipped]);
    assert_grandchild_gone(&r.stdout(0)).await;
}

/// A step that leaves a background process behind still finishes when its main
/// process exits, and the leftover is killed.
pub async fn background_process_does_not_block(backend: Arc<dyn Backend>, image: Option<String>) {
    let spec = stage(
        "background",
        &image,
        &[
            &format!("sleep 300 &\n{PRINT_GRANDCHILD}\necho done"),
            "echo next",
        ],
    );
    let started = Instant::now();
    let r = run(&*backend, &spec).await;
    assert!(
        started.elapsed() < KILL_BOUND,
        "a background child blocked the step"
    );
    assert_eq!(r.outcome.status, Status::Success, "{:?}", r.outcome);
    assert_eq!(r.stdout(1), vec!["next"]);
    assert_grandchild_gone(&r.stdout(0)).await;
}

/// 20 MB on stdout and 5 MB on stderr at the same time arrive complete (no
/// deadlock from an undrained pipe, no lost lines), without the test holding them.
pub async fn large_output(backend: Arc<dyn Backend>, image: Option<String>) {
    const OUT_LINES: usize = 200_000;
    const ERR_LINES: usize = 50_000;
    let out_line = "o".repeat(100);
    let err_line = "e".repeat(100);
    let script = format!(
        "(yes {err_line} | head -n {ERR_LINES} >&2) &\nyes {out_line} | head -n {OUT_LINES}\nwait"
    );
    let spec = stage("large", &image, &[&script]);
    let err_stream = if backend.separates_streams() {
        LogStreamKind::Stderr
    } else {
        LogStreamKind::Stdout
    };
    let (mut out, mut err, mut bad, mut max_number, mut count) =
        (0usize, 0usize, 0usize, 0u64, 0u64);
    let outcome = drive(
        &*backend,
        &spec,
        RunOptions::default(),
        CancellationToken::new(),
        |e| {
            if let StageEvent::Line(l) = e {
                count += 1;
                max_number = max_number.max(l.number);
                if l.stream == LogStreamKind::Stdout && l.bytes == out_line.as_bytes() {
                    out += 1;
                } else if l.stream == err_stream && l.bytes == err_line.as_bytes() {
                    err += 1;
                } else {
                    bad += 1;
                }
            }
        },
    )
    .await;
    assert_eq!(outcome.status, Status::Success, "{outcome:?}");
    assert_eq!((out, err, bad), (OUT_LINES, ERR_LINES, 0));
    assert_eq!(count, (OUT_LINES + ERR_LINES) as u64);
    assert_eq!(max_number, count, "line numbers are 1-based and contiguous");
}

/// Non-UTF-8 bytes, NUL and `\r` pass through byte-exact; a last line without a
/// newline is still emitted.
pub async fn binary_output(backend: Arc<dyn Backend>, image: Option<String>) {
    let spec = stage(
        "binary",
        &image,
        &["printf '\\377\\376\\000abc\\r\\n\\200\\201'"],
    );
    let r = run(&*backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Success, "{:?}", r.outcome);
    let lines: Vec<Vec<u8>> = r.lines(0).iter().map(|l| l.bytes.clone()).collect();
    assert_eq!(
        lines,
        vec![b"\xff\xfe\x00abc\r".to_vec(), b"\x80\x81".to_vec()]
    );
}

/// No secret — raw, base64 (standard, URL-safe, padded or not, embedded at any
/// alignment, wrapped), split across writes, across a forced line split, or line
/// by line for a multi-line secret — appears in any event.
pub async fn masking(backend: Arc<dyn Backend>, image: Option<String>) {
    let s1 = "s3cr3t-Value-XYZ";
    // Its base64 contains `+` and `/`, so the URL-safe form differs.
    let s2 = "??>>??~~pa55w0rd";
    let s3 =
        "-----BEGIN TEST KEY-----\nAAAAsecretline1\nBBBBsecretline2\n}\n-----END TEST KEY-----";
    let script = r#"
echo "raw: $S1"
echo "again:$S1:and:$S2"
echo "err: $S1" >&2
printf '%s' "$S1" | base64
printf '%s' "$S2" | base64
printf '%s' "$S2" | base64 | tr '+/' '-_'
printf '%s' "$S2" | base64 | tr '+/' '-_' | tr -d '='
printf 'x%s' "$S1" | base64
printf 'xy%s' "$S1" | base64
printf '%s' "$S3" | base64
printf '%s' "$S3" | base64 | tr -d '\n'; echo
printf '%s\n' "$S3"
printf '%s' "${S1%%-*}"; sleep 1; printf -- '-%s\n' "${S1#*-}"
head -c 65530 /dev/zero | tr '\0' a; printf '%s\n' "$S1"
echo "brace: { }"
"#;
    let mut spec = stage("masking", &image, &[script]);
    spec.env = env(&[("S1", s1), ("S2", s2), ("S3", s3)]);
    spec.secrets = vec![s1.into(), s2.into(), s3.into()];
    let r = run(&*backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Success, "{:?}", r.outcome);

    let mut forbidden: Vec<String> = Vec::new();
    for secret in [s1, s2, s3] {
        forbidden.extend(
            secret
                .lines()
                .filter(|l| l.trim().len() >= 4)
                .map(str::to_owned),
        );
        for enc in [
            STANDARD.encode(secret),
            STANDARD_NO_PAD.encode(secret),
            URL_SAFE.encode(secret),
            URL_SAFE_NO_PAD.encode(secret),
        ] {
            // Any 16-character window of an encoding: catches partial leaks too.
            let chars: Vec<char> = enc.chars().collect();
            for w in chars.windows(16) {
                forbidden.push(w.iter().collect());
            }
        }
    }
    // The middle of the encodings of `x<S1>` and `xy<S1>` (the ends depend on the
    // neighbouring bytes).
    for prefix in ["x", "xy"] {
        let enc = STANDARD.encode(format!("{prefix}{s1}"));
        forbidden.push(enc[4..enc.len() - 4].to_owned());
    }

    let lines: Vec<&LogLine> = r.lines(0);
    let mut masked = 0;
    for line in &lines {
        let text = String::from_utf8_lossy(&line.bytes);
        for f in &forbidden {
            assert!(
                !text.contains(f.as_str()),
                "secret material {f:?} leaked in line {}: {text:?}",
                line.number
            );
        }
        if text.contains("********") {
            masked += 1;
        }
    }
    let out = r.stdout(0);
    assert!(out.iter().any(|l| l == "raw: ********"), "{out:?}");
    assert!(out.iter().any(|l| l == "********"), "split write: {out:?}");
    assert!(
        out.iter().any(|l| l == "brace: { }"),
        "over-masking: {out:?}"
    );
    if backend.separates_streams() {
        assert_eq!(r.text(0, LogStreamKind::Stderr), vec!["err: ********"]);
    } else {
        assert!(r.text(0, LogStreamKind::Stderr).is_empty());
        assert!(out.iter().any(|l| l == "err: ********"), "{out:?}");
    }
    assert!(
        masked >= 12,
        "expected many masked lines, got {masked}: {out:?}"
    );
}

/// Artifacts are collected after success with correct sizes and sha256, not after
/// a failure, and paths escaping the workspace are refused.
pub async fn artifacts(backend: Arc<dyn Backend>, image: Option<String>) {
    let dest = tempfile::tempdir().unwrap();
    let mut spec = stage(
        "artifacts",
        &image,
        &[
            "mkdir -p out/sub\nprintf hello > out/a.txt\nprintf '\\000\\001\\002' > out/sub/b.bin\necho log > build.log\necho no > skip.tmp",
        ],
    );
    spec.artifacts = vec!["out/**".into(), "*.log".into()];
    let opts = RunOptions {
        artifact_dir: Some(dest.path().to_path_buf()),
        ..Default::default()
    };
    let r = run_with(&*backend, &spec, opts.clone()).await;
    assert_eq!(r.outcome.status, Status::Success, "{:?}", r.outcome);
    let paths: Vec<&str> = r
        .outcome
        .artifacts
        .iter()
        .map(|a| a.path.as_str())
        .collect();
    assert_eq!(paths, vec!["build.log", "out/a.txt", "out/sub/b.bin"]);
    for a in &r.outcome.artifacts {
        let bytes = std::fs::read(dest.path().join(&a.path)).unwrap();
        assert_eq!(a.size, bytes.len() as u64, "{}", a.path);
        assert_eq!(a.sha256, hex::encode(Sha256::digest(&bytes)), "{}", a.path);
    }
    assert_eq!(
        r.outcome.artifacts[1].sha256,
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    );
    assert!(!dest.path().join("skip.tmp").exists());

    // A failed stage collects nothing.
    let failed_dest = tempfile::tempdir().unwrap();
    let mut failed = stage("artifacts-failed", &image, &["echo x > a.log\nexit 3"]);
    failed.artifacts = vec!["*.log".into()];
    let r = run_with(
        &*backend,
        &failed,
        RunOptions {
            artifact_dir: Some(failed_dest.path().to_path_buf()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.outcome.status, Status::Failure);
    assert!(r.outcome.artifacts.is_empty());
    assert!(is_empty_dir(failed_dest.path()));

    // Escapes are refused, not followed.
    for (script, glob) in [
        ("true", "../outside"),
        ("true", "/etc/hostname"),
        ("ln -s /etc/hostname leak.txt", "*.txt"),
    ] {
        let escape_dest = tempfile::tempdir().unwrap();
        let mut spec = stage("artifacts-escape", &image, &[script]);
        spec.artifacts = vec![glob.into()];
        let r = run_with(
            &*backend,
            &spec,
            RunOptions {
                artifact_dir: Some(escape_dest.path().to_path_buf()),
                ..Default::default()
            },
        )
        .await;
        assert!(
            matches!(r.outcome.status, Status::Error(_)),
            "{glob}: {:?}",
            r.outcome
        );
        assert!(is_empty_dir(escape_dest.path()), "{glob}");
    }
}

fn is_empty_dir(p: &Path) -> bool {
    std::fs::read_dir(p).unwrap().next().is_none()
}

/// Stdout and stderr lines keep their stream (or, on a backend that merges them,
/// all arrive as stdout).
pub async fn stdout_stderr_separation(backend: Arc<dyn Backend>, image: Option<String>) {
    let spec = stage(
        "streams",
        &image,
        &["echo out1\necho err1 >&2\necho out2\necho err2 >&2"],
    );
    let r = run(&*backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Success);
    if backend.separates_streams() {
        assert_eq!(r.stdout(0), vec!["out1", "out2"]);
        assert_eq!(r.text(0, LogStreamKind::Stderr), vec!["err1", "err2"]);
    } else {
        // Merged (the Kubernetes log API): all of it as stdout, each stream in
        // its own order (the two are written apart, so only that is promised).
        assert!(r.text(0, LogStreamKind::Stderr).is_empty());
        let out = r.stdout(0);
        let pos = |l: &str| out.iter().position(|o| o == l);
        assert_eq!(out.len(), 4, "{out:?}");
        assert!(
            pos("out1") < pos("out2") && pos("out1").is_some(),
            "{out:?}"
        );
        assert!(
            pos("err1") < pos("err2") && pos("err1").is_some(),
            "{out:?}"
        );
    }
}

/// Lines longer than 64 KiB arrive as several lines of at most 64 KiB that join
/// back to the original.
pub async fn long_lines(backend: Arc<dyn Backend>, image: Option<String>) {
    let spec = stage(
        "long-lines",
        &image,
        &["head -c 200000 /dev/zero | tr '\\0' a\necho\nprintf tail"],
    );
    let r = run(&*backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Success, "{:?}", r.outcome);
    let lines = r.lines(0);
    let lens: Vec<usize> = lines.iter().map(|l| l.bytes.len()).collect();
    assert_eq!(lens, vec![65536, 65536, 65536, 200_000 - 3 * 65536, 4]);
    let joined: Vec<u8> = lines[..4].iter().flat_map(|l| l.bytes.clone()).collect();
    assert!(joined.iter().all(|&b| b == b'a'));
    assert_eq!(lines[4].bytes, b"tail");
}

/// Events come in order: started, lines numbered from 1 per step, finished; skipped
/// steps only get `StepFinished`.
pub async fn event_order(backend: Arc<dyn Backend>, image: Option<String>) {
    let spec = stage(
        "events",
        &image,
        &[
            "echo a\nprintf 'b\\nc'",
            "echo d >&2",
            "exit 5",
            "echo never",
        ],
    );
    let r = run(&*backend, &spec).await;
    let summary: Vec<String> = r
        .events
        .iter()
        .map(|e| match e {
            StageEvent::StepStarted { index, stage, .. } => {
                assert_eq!(stage, "events");
                format!("start {index}")
            }
            StageEvent::Line(l) => format!(
                "line {} {} {}",
                l.step,
                l.number,
                String::from_utf8_lossy(&l.bytes)
            ),
            StageEvent::StepFinished { index, outcome, .. } => {
                format!("finish {index} {:?}", outcome.status)
            }
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            "start 0",
            "line 0 1 a",
            "line 0 2 b",
            "line 0 3 c",
            "finish 0 Success",
            "start 1",
            "line 1 1 d",
            "finish 1 Success",
            "start 2",
            "finish 2 Failure",
            "finish 3 Skipped",
        ]
    );
    assert_eq!(r.outcome.steps[2].exit_code, Some(5));
    assert_eq!(r.outcome.id, "events");
}

/// A scan stage: the steps' files are scanned after the steps, as an extra `scan`
/// step; a planted token fails the stage with its file and line, a SARIF finding
/// below `fail_on` is reported without failing, and an allow-listed file is ignored.
pub async fn scan_stage(backend: Arc<dyn Backend>, image: Option<String>) {
    // Built at run time so this source file itself holds no token-shaped string.
    let token = ["ghp_", "aB3dE5fG7h", "I9jK1lM3nO", "5pQ7rS9tU1", "vW3xY5"].concat();
    let sarif = r#"{"version":"2.1.0","runs":[{"tool":{"driver":{"name":"lint"}},"results":[{"ruleId":"L1","level":"warning","message":{"text":"style"},"locations":[{"physicalLocation":{"artifactLocation":{"uri":"src/app.sh"},"region":{"startLine":2}}}]}]}]}"#;
    let mut spec = stage(
        "scan",
        &image,
        &[
            "mkdir -p src reports .slipway fixtures\nprintf 'echo hi\\nexport TOKEN=\"%s\"\\n' \"$T\" > src/app.sh\nprintf 'T=%s\\n' \"$T\" > fixtures/fake.env\necho fixtures/ > .slipway/scan-allow",
            "printf '%s' \"$SARIF\" > reports/lint.sarif",
        ],
    );
    spec.env = env(&[("T", &token), ("SARIF", sarif)]);
    spec.kind = crate::StageKind::Scan(crate::ScanSpec {
        sarif: vec!["reports/*.sarif".into()],
        fail_on: Some(crate::Severity::High),
    });
    let r = run(&*backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Failure, "{r:#?}");
    assert_eq!(r.outcome.steps.len(), 3);
    assert_eq!(r.outcome.steps[2].name, crate::SCAN_STEP);
    let at = |path: &str| {
        r.outcome
            .findings
            .iter()
            .filter(|f| f.path.as_deref() == Some(path))
            .collect::<Vec<_>>()
    };
    let planted = at("src/app.sh");
    assert!(
        planted.iter().any(|f| f.line == Some(2)
            && f.severity >= crate::Severity::High
            && f.tool == "slipway-secrets"),
        "{:#?}",
        r.outcome.findings
    );
    assert!(planted.iter().any(|f| f.tool == "lint" && f.rule == "L1"));
    assert!(at("fixtures/fake.env").is_empty(), "allow-listed");
    let log = r.stdout(2).join("\n");
    assert!(log.contains("src/app.sh:2"), "{log}");
    assert!(
        !log.contains(&token),
        "the token itself never reaches the log: {log}"
    );

    // Below fail_on: reported, not failing.
    spec.kind = crate::StageKind::Scan(crate::ScanSpec {
        sarif: vec!["reports/*.sarif".into()],
        fail_on: None,
    });
    let r = run(&*backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Success, "{r:#?}");
    assert!(!r.outcome.findings.is_empty());

    // A failing step skips the scan.
    let mut failing = stage("scan-skipped", &image, &["exit 3"]);
    failing.kind = spec.kind.clone();
    let r = run(&*backend, &failing).await;
    assert_eq!(r.outcome.status, Status::Failure);
    assert_eq!(r.outcome.steps[1].status, Status::Skipped);
    assert_eq!(r.outcome.steps[1].name, crate::SCAN_STEP);
}

/// A stage of kind image whose Dockerfile does not exist fails its `build image` step
/// with the reason in the log, as a failure (not a retryable error) — on a backend
/// that cannot build images as on one that can. Real builds are tested per backend.
pub async fn image_stage_missing_dockerfile(backend: Arc<dyn Backend>, image: Option<String>) {
    let mut spec = stage("image", &image, &["true"]);
    spec.kind = crate::StageKind::Image(crate::ImageSpec {
        dockerfile: "Dockerfile.missing".into(),
        context: ".".into(),
        target: None,
        build_args: BTreeMap::new(),
        labels: BTreeMap::new(),
        push: None,
        registry_auth: None,
    });
    let r = run(&*backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Failure, "{r:#?}");
    assert_eq!(r.outcome.steps[1].name, crate::IMAGE_STEP);
    assert_eq!(r.outcome.steps[1].status, Status::Failure);
    let log = r.text(1, LogStreamKind::Stderr).join("\n");
    assert!(!log.is_empty(), "the build step says why it failed");
}

/// A backend that keeps `guard` alive as long as it lives: e.g. the Kubernetes
/// backend and the API-server test double it talks to, so the double outlives
/// every call of a conformance case.
pub struct WithGuard<B, G> {
    pub backend: B,
    pub guard: G,
}

#[async_trait::async_trait]
impl<B: crate::Backend, G: Send + Sync> crate::Backend for WithGuard<B, G> {
    fn name(&self) -> &'static str {
        self.backend.name()
    }
    fn separates_streams(&self) -> bool {
        self.backend.separates_streams()
    }
    async fn setup_stage(&self, spec: &StageSpec) -> crate::Result<crate::StageHandle> {
        self.backend.setup_stage(spec).await
    }
    async fn start_step(
        &self,
        stage: &crate::StageHandle,
        index: usize,
        step: &StepSpec,
    ) -> crate::Result<crate::StepHandle> {
        self.backend.start_step(stage, index, step).await
    }
    async fn tail_step(
        &self,
        stage: &crate::StageHandle,
        step: &crate::StepHandle,
    ) -> crate::Result<crate::LogStream> {
        self.backend.tail_step(stage, step).await
    }
    async fn wait_step(
        &self,
        stage: &crate::StageHandle,
        step: &crate::StepHandle,
    ) -> crate::Result<crate::StepExit> {
        self.backend.wait_step(stage, step).await
    }
    async fn destroy_step(
        &self,
        stage: &crate::StageHandle,
        step: &crate::StepHandle,
    ) -> crate::Result<()> {
        self.backend.destroy_step(stage, step).await
    }
    async fn collect_artifacts(
        &self,
        stage: &crate::StageHandle,
        globs: &[String],
        dest: &Path,
    ) -> crate::Result<Vec<crate::Artifact>> {
        self.backend.collect_artifacts(stage, globs, dest).await
    }
    async fn destroy_stage(&self, stage: &crate::StageHandle) -> crate::Result<()> {
        self.backend.destroy_stage(stage).await
    }
    async fn build_image(
        &self,
        stage: &crate::StageHandle,
        image: &crate::ImageSpec,
        log: tokio::sync::mpsc::UnboundedSender<crate::LogChunk>,
    ) -> crate::Result<crate::BuiltImage> {
        self.backend.build_image(stage, image, log).await
    }
}
