//! A real server for end-to-end tests: SQLite or a throw-away PostgreSQL database, a
//! listener on 127.0.0.1:0, the in-process runner (or none), git repositories to run
//! pipelines from, and waits with a state dump on timeout. (The harness of
//! `runner_protocol.rs`, shared.)

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use git2::{Repository, Signature};
use server::config::{Config, Settings};
use server::logs::StepKey;
use server::state::AppState;
use server::store::*;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

// ---------------------------------------------------------------- harness

pub struct Server {
    pub state: AppState,
    pub addr: SocketAddr,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    pub dir: tempfile::TempDir,
    /// A throw-away PostgreSQL database to drop at the end: (admin URL, name).
    postgres: Option<(String, String)>,
}

pub struct Opts {
    pub in_process: bool,
    pub heartbeat_secs: u64,
    pub postgres: bool,
    /// Overrides for the server's settings (limits …).
    pub settings: Settings,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            in_process: true,
            heartbeat_secs: 3,
            postgres: false,
            settings: Settings::default(),
        }
    }
}

pub fn postgres() -> Opts {
    Opts {
        postgres: true,
        ..Opts::default()
    }
}

/// Creates an empty database on the test PostgreSQL server (see tests/store.rs):
/// (admin URL, database name, database URL).
pub async fn create_postgres_db() -> (String, String, String) {
    use sqlx::{Connection, Executor};
    let admin = std::env::var("SLIPWAY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://slipway:slipway@127.0.0.1:5432/postgres".into());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is unreachable at {admin} ({e}); start it with `bash .ci/postgres.sh`"
            )
        });
    let name = format!("slipway_test_{:016x}", rand::random::<u64>());
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    let (base, query) = admin.split_once('?').unwrap_or((&admin, ""));
    let authority = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority..].find('/') {
        Some(i) => &base[..authority + i],
        None => base,
    };
    let url = match query {
        "" => format!("{base}/{name}"),
        q => format!("{base}/{name}?{q}"),
    };
    (admin, name, url)
}

impl Server {
    pub async fn start(opts: Opts) -> Server {
        Server::start_in(tempfile::tempdir().unwrap(), opts).await
    }

    /// A server on `dir` (an existing data dir is reused, like a restart).
    pub async fn start_in(dir: tempfile::TempDir, opts: Opts) -> Server {
        // Server logs in the captured output of a failing test (RUST_LOG, default info).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_test_writer()
            .try_init();
        let (postgres, database_url) = if opts.postgres {
            let (admin, name, url) = create_postgres_db().await;
            (Some((admin, name)), Some(url))
        } else {
            (None, None)
        };
        let settings = Settings {
            data_dir: Some(dir.path().join("data")),
            database_url,
            in_process_runner: Some(opts.in_process),
            heartbeat_timeout_secs: Some(opts.heartbeat_secs),
            runner_capacity: Some(2),
            ..opts.settings
        };
        let config = Config::resolve(settings, None).unwrap();
        let state = server::serve::build_state(config).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = tokio::spawn(server::serve::run(listener, state.clone()));
        Server {
            state,
            addr,
            handle: Some(handle),
            dir,
            postgres,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn stop(self) {
        self.stop_keeping_dir().await;
    }

    /// Stops the server and hands back its directory for a restart.
    pub async fn stop_keeping_dir(mut self) -> tempfile::TempDir {
        self.state.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(30), h)
                .await
                .expect("server stops within 30s")
                .unwrap()
                .unwrap();
        }
        if let Some((admin, name)) = self.postgres.take() {
            use sqlx::{Connection, Executor};
            let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
            conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                .await
                .unwrap();
        }
        let Server { dir, .. } = self;
        dir
    }

    pub async fn runner_token(&self, name: &str) -> String {
        let token = server::crypto::generate_token("slp_");
        self.state
            .store
            .create_token(
                name,
                &server::crypto::hash_token(&token),
                TokenScope::Runner,
            )
            .await
            .unwrap();
        token
    }

    /// A repository whose clone URL is a real git repo holding `files` on `main`,
    /// mirrored like the planner would. Returns the repo and the commit.
    pub async fn repo(&self, files: &[(&str, &str)]) -> (Repo, String, PathBuf) {
        let n = self.state.store.list_repos().await.unwrap().len();
        let forge = self.dir.path().join(format!("forge-{n}"));
        let sha = commit(&forge, files);
        let repo = self
            .state
            .store
            .create_repo(NewRepo {
                name: format!("team/app-{n}"),
                forge: Forge::Git,
                clone_url: forge.display().to_string(),
                default_branch: "main".into(),
                webhook_secret_enc: Vec::new(),
                forge_token_enc: None,
                trusted: true,
            })
            .await
            .unwrap();
        let mirror = self.state.mirror_dir(repo.id);
        let url = repo.clone_url.clone();
        tokio::task::spawn_blocking(move || {
            let m = server::git::Mirror::open_or_init(&mirror, &url).unwrap();
            m.fetch(&["refs/heads/main".to_string()]).unwrap();
        })
        .await
        .unwrap();
        (repo, sha, forge)
    }

    pub async fn secret(&self, repo: &Repo, name: &str, value: &str, allow_pull_requests: bool) {
        let sealed = self
            .state
            .secret_box
            .seal(value.as_bytes(), &server::crypto::secret_aad(repo.id, name));
        self.state
            .store
            .put_secret(repo.id, name, &sealed, allow_pull_requests)
            .await
            .unwrap();
    }

    /// Creates a run of `yaml` at `sha` and plans it (what the planner does).
    pub async fn run(&self, repo: &Repo, sha: &str, yaml: &str, fork: bool) -> Run {
        let mut new = NewRun::new(Trigger::Manual, Event::Push, "refs/heads/main", sha);
        new.trusted = !fork;
        if fork {
            new.event = Event::PullRequest;
            new.fork = true;
            new.pr_number = Some(7);
        }
        let run = self.state.store.create_run(repo.id, new).await.unwrap();
        let pipeline = pipelines::parse(".slipway.yml", yaml).expect("valid pipeline");
        let ctx = pipelines::EventContext {
            event: if fork {
                pipelines::Event::PullRequest
            } else {
                pipelines::Event::Push
            },
            branch: Some("main".into()),
            sha: sha.into(),
            fork,
            ..Default::default()
        };
        let plan = pipelines::plan(&pipeline, &ctx).expect("plan");
        let mut stages: Vec<NewStage> = plan
            .stages
            .iter()
            .map(|s| NewStage {
                key: s.id.clone(),
                pipeline: plan.pipeline.clone(),
                needs: s.needs.clone(),
                spec: serde_json::to_value(s).unwrap(),
                max_attempts: 1 + s.retry,
                skip: None,
                succeeded: None,
                steps: server::stage_spec::step_names(s),
                labels: server::routing::stage_labels(s),
            })
            .collect();
        for s in &plan.skipped {
            let mut skipped = NewStage::new(&s.id, &[], &[]);
            skipped.skip = Some(s.reason.clone());
            stages.push(skipped);
        }
        let run = self
            .state
            .store
            .set_run_planned(
                run.id,
                // Stored like the planner stores it: one plan per pipeline file.
                &serde_json::to_value(vec![&plan]).unwrap(),
                &plan.yaml_sha256,
                stages,
            )
            .await
            .unwrap();
        self.state.wake.queue.notify_waiters();
        run
    }

    pub async fn wait_run(&self, id: RunId, within: Duration) -> Run {
        let deadline = Instant::now() + within;
        loop {
            let run = self.state.store.get_run(id).await.unwrap();
            if run.status.is_final() {
                return run;
            }
            if Instant::now() > deadline {
                panic!(
                    "run {id} still {} after {within:?}: {}",
                    run.status,
                    self.dump(id).await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until no stage of the run is waiting, queued or running.
    pub async fn wait_stages_settled(&self, id: RunId, within: Duration) -> Vec<StageWithSteps> {
        let deadline = Instant::now() + within;
        loop {
            let stages = self.state.store.list_stages(id).await.unwrap();
            if stages.iter().all(|s| s.stage.status.is_final()) {
                return stages;
            }
            if Instant::now() > deadline {
                panic!("stages of run {id} not settled: {}", self.dump(id).await);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_for_log(&self, stage: &Stage, step: u32, text: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.log_text(stage, step).contains(text) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "step {step} never logged {text:?}: {}",
                    self.dump(stage.run_id).await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn key(stage: &Stage, step: u32) -> StepKey {
        StepKey {
            run: stage.run_id,
            stage: stage.id,
            step,
        }
    }

    pub fn log_lines(&self, stage: &Stage, step: u32) -> Vec<String> {
        self.state
            .logs
            .read(Self::key(stage, step), 1, 100_000)
            .unwrap()
            .into_iter()
            .map(|l| String::from_utf8_lossy(&l.bytes).into_owned())
            .collect()
    }

    pub fn log_text(&self, stage: &Stage, step: u32) -> String {
        self.log_lines(stage, step).join("\n")
    }

    /// Every byte stored under the logs directory.
    pub fn all_log_bytes(&self) -> Vec<u8> {
        fn walk(dir: &Path, out: &mut Vec<u8>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.extend(std::fs::read(&p).unwrap());
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.state.config.data_dir.join("logs"), &mut out);
        out
    }

    pub async fn stage(&self, run: RunId, key: &str) -> StageWithSteps {
        self.state
            .store
            .list_stages(run)
            .await
            .unwrap()
            .into_iter()
            .find(|s| s.stage.key == key)
            .unwrap_or_else(|| panic!("no stage {key}"))
    }

    /// The state of a run, for failure messages.
    pub async fn dump(&self, run: RunId) -> String {
        let mut out = format!("{:?}\n", self.state.store.get_run(run).await.ok());
        for s in self.state.store.list_stages(run).await.unwrap_or_default() {
            out += &format!(
                "  stage {} {} attempt {} reason {:?}\n",
                s.stage.key, s.stage.status, s.stage.attempt, s.stage.reason
            );
            for st in &s.steps {
                out += &format!(
                    "    step {} {} exit {:?} lines {}: {:?}\n",
                    st.name,
                    st.status,
                    st.exit_code,
                    st.log_lines,
                    self.log_text(&s.stage, st.idx as u32)
                );
            }
        }
        out
    }
}

/// A non-bare repository at `path` with `files` committed on `main`.
pub fn commit(path: &Path, files: &[(&str, &str)]) -> String {
    let repo = Repository::init(path).unwrap();
    for (name, text) in files {
        let p = path.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
    }
    let mut index = repo.index().unwrap();
    index
        .add_all(["*"].iter(), git2::IndexAddOption::DEFAULT, None)
        .unwrap();
    index.write().unwrap();
    let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
    let sig = Signature::now("Dev", "dev@example.com").unwrap();
    let oid = repo
        .commit(Some("refs/heads/main"), &sig, &sig, "first", &tree, &[])
        .unwrap();
    oid.to_string()
}
