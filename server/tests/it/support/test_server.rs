//! The server in this process: its state on a temp data dir (SQLite, or a throw-away
//! PostgreSQL database), and optionally listening on 127.0.0.1:0 with its workers and
//! in-process runner; git repositories to run pipelines from, runs planned from YAML,
//! and waits that show the run on timeout.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use server::daemon::config::{Config, Settings};
use server::daemon::state::AppState;
use server::logs::StepKey;
use server::store::*;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::db::PgDatabase;
use super::poll::poll_until;

/// A server of one test; what it runs depends on how it was built ([`Builder`]).
pub struct TestServer {
    pub state: AppState,
    /// Stops the workers of a test that fails half-way (before its database goes).
    _stop: tokio_util::sync::DropGuard,
    /// The test's temp dir; the data dir is `data/` in it unless the builder was given one.
    pub dir: tempfile::TempDir,
    addr: Option<SocketAddr>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    postgres: Option<PgDatabase>,
}

/// How to set a [`TestServer`] up; its settings are the defaults unless changed here.
pub struct Builder {
    db: Dialect,
    settings: Settings,
    in_process_runner: Option<bool>,
    heartbeat_secs: Option<u64>,
    data_dir: Option<PathBuf>,
    dir: Option<tempfile::TempDir>,
    clock: Option<std::sync::Arc<dyn server::clock::Clock>>,
}

impl Builder {
    /// On SQLite (the default) or on a throw-away PostgreSQL database.
    pub fn on(mut self, db: Dialect) -> Builder {
        self.db = db;
        self
    }

    /// Settings (limits, public URL, …) under what the other methods set; the data dir
    /// and database are the builder's unless set here.
    pub fn settings(mut self, settings: Settings) -> Builder {
        self.settings = settings;
        self
    }

    pub fn in_process_runner(mut self, on: bool) -> Builder {
        self.in_process_runner = Some(on);
        self
    }

    pub fn heartbeat_secs(mut self, secs: u64) -> Builder {
        self.heartbeat_secs = Some(secs);
        self
    }

    /// A data dir that outlives the server (made with the `slipway` CLI, say).
    pub fn data_dir(mut self, data: &Path) -> Builder {
        self.data_dir = Some(data.to_path_buf());
        self
    }

    /// The store's and the lease-expiry worker's clock (default: the system's), for
    /// tests that step past lease deadlines instead of waiting.
    pub fn clock(mut self, clock: std::sync::Arc<dyn server::clock::Clock>) -> Builder {
        self.clock = Some(clock);
        self
    }

    /// The temp dir of a stopped server ([`TestServer::stop_keeping_dir`]): a restart.
    pub fn dir(mut self, dir: tempfile::TempDir) -> Builder {
        self.dir = Some(dir);
        self
    }

    /// The server's state only: no listener, no workers. Requests go through the routes
    /// without a socket (`support::http`), work is done by calling the workers' steps.
    pub async fn build(self) -> TestServer {
        // Server logs in the captured output of a failing test (RUST_LOG, default info).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_test_writer()
            .try_init();
        let dir = self.dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
        let postgres = match self.db {
            Dialect::Postgres => Some(PgDatabase::create().await),
            Dialect::Sqlite => None,
        };
        let s = self.settings;
        let settings = Settings {
            data_dir: Some(
                self.data_dir
                    .or(s.data_dir.clone())
                    .unwrap_or_else(|| dir.path().join("data")),
            ),
            database_url: postgres
                .as_ref()
                .map(|pg| pg.url.clone())
                .or(s.database_url.clone()),
            in_process_runner: self.in_process_runner.or(s.in_process_runner),
            heartbeat_timeout_secs: self.heartbeat_secs.or(s.heartbeat_timeout_secs),
            ..s
        };
        let config = Config::resolve(settings, None).unwrap();
        let state = match self.clock {
            Some(clock) => server::daemon::serve::build_state_with_clock(config, clock).await,
            None => server::daemon::serve::build_state(config).await,
        }
        .unwrap();
        assert_eq!(state.store.dialect(), self.db);
        TestServer {
            _stop: state.shutdown.clone().drop_guard(),
            state,
            dir,
            addr: None,
            handle: None,
            postgres,
        }
    }

    /// The whole server on 127.0.0.1:0: routes, workers and (unless turned off) the
    /// in-process runner.
    pub async fn start(self) -> TestServer {
        let mut server = self.build().await;
        server.serve().await;
        server
    }
}

impl TestServer {
    pub fn builder() -> Builder {
        Builder {
            db: Dialect::Sqlite,
            settings: Settings::default(),
            in_process_runner: None,
            heartbeat_secs: None,
            data_dir: None,
            dir: None,
            clock: None,
        }
    }

    /// Starts a built server (see [`Builder::start`]), after the test set things up.
    pub async fn serve(&mut self) {
        assert!(self.handle.is_none(), "the server is already serving");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.addr = Some(listener.local_addr().unwrap());
        self.handle = Some(tokio::spawn(server::daemon::serve::run(
            listener,
            self.state.clone(),
        )));
    }

    /// The base URL of a started server.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr.expect("a started server"))
    }

    /// The routes alone (no workers) on 127.0.0.1:0, for tests that need a socket.
    pub async fn serve_routes(&self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = server::api::app(self.state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    pub async fn stop(self) {
        self.stop_keeping_dir().await;
    }

    /// Stops a started server gracefully (within 30 s) and hands back its directory
    /// for a restart.
    pub async fn stop_keeping_dir(self) -> tempfile::TempDir {
        self.stop_within(Duration::from_secs(30)).await
    }

    /// Stops the server, which must have stopped gracefully `within` that time.
    pub async fn stop_within(mut self, within: Duration) -> tempfile::TempDir {
        self.state.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(within, h)
                .await
                .unwrap_or_else(|_| panic!("the server did not stop within {within:?}"))
                .unwrap()
                .unwrap();
        }
        self.state.store.close().await;
        let TestServer { dir, postgres, .. } = self;
        drop(postgres);
        dir
    }

    pub async fn admin_token(&self) -> String {
        self.token("admin", TokenScope::Admin).await
    }

    pub async fn runner_token(&self, name: &str) -> String {
        self.token(name, TokenScope::Runner).await
    }

    pub async fn token(&self, name: &str, scope: TokenScope) -> String {
        let token = server::crypto::generate_token("slp_");
        self.state
            .store
            .create_token(name, &server::crypto::hash_token(&token), scope)
            .await
            .unwrap();
        token
    }

    /// A repository whose clone URL is a real git repo holding `files` on `main`,
    /// mirrored like the planner would. Returns the repo and the commit.
    pub async fn repo(&self, files: &[(&str, &str)]) -> (Repo, String) {
        let n = self.state.store.list_repos().await.unwrap().len();
        let forge = self.dir.path().join(format!("forge-{n}"));
        let sha = super::git::commit(&forge, files);
        let repo = self
            .state
            .store
            .create_repo(NewRepo {
                api_url: None,
                name: format!("team/app-{n}"),
                forge: ForgeKind::Git,
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
        // As the server's own fetches do: the cron worker may be fetching this new
        // repository's default branch right now.
        let fetching = server::git::lock_mirror(&mirror).await;
        tokio::task::spawn_blocking(move || {
            let _fetching = fetching;
            let m = server::git::Mirror::open_or_init(&mirror, &url).unwrap();
            m.fetch(&["refs/heads/main".to_string()]).unwrap();
        })
        .await
        .unwrap();
        (repo, sha)
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
                carried_from: None,
                steps: server::agent::stage_spec::step_names(s),
                labels: server::runs::routing::stage_labels(s),
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

    /// Waits until the run is final.
    pub async fn wait_run(&self, id: RunId, within: Duration) -> Run {
        let finished = poll_until(within, || async {
            let run = self.state.store.get_run(id).await.unwrap();
            if run.status.is_final() {
                Ok(run)
            } else {
                Err(run.status)
            }
        })
        .await;
        match finished {
            Ok(run) => run,
            Err(t) => panic!(
                "run {id} still {} after {within:?}: {}",
                t.state,
                self.dump(id).await
            ),
        }
    }

    /// Waits until no stage of the run is waiting, queued or running.
    pub async fn wait_stages_settled(&self, id: RunId, within: Duration) -> Vec<StageWithSteps> {
        let settled = poll_until(within, || async {
            let stages = self.state.store.list_stages(id).await.unwrap();
            if stages.iter().all(|s| s.stage.status.is_final()) {
                Ok(stages)
            } else {
                Err(())
            }
        })
        .await;
        match settled {
            Ok(stages) => stages,
            Err(_) => panic!("stages of run {id} not settled: {}", self.dump(id).await),
        }
    }

    pub async fn wait_for_log(&self, stage: &Stage, step: u32, text: &str, within: Duration) {
        let logged = poll_until(within, || async {
            if self.log_text(stage, step).contains(text) {
                Ok(())
            } else {
                Err(())
            }
        })
        .await;
        if logged.is_err() {
            panic!(
                "step {step} never logged {text:?}: {}",
                self.dump(stage.run_id).await
            );
        }
    }

    /// Waits until the stage's row satisfies `done`; a timeout shows the run.
    pub async fn wait_stage(
        &self,
        stage: StageId,
        within: Duration,
        done: impl Fn(&Stage) -> bool,
    ) -> Stage {
        let reached = poll_until(within, || async {
            let s = self.state.store.get_stage(stage).await.unwrap();
            if done(&s) { Ok(s) } else { Err(s) }
        })
        .await;
        match reached {
            Ok(s) => s,
            Err(t) => panic!(
                "stage {stage} still {} after {within:?}: {}",
                t.state.status,
                self.dump(t.state.run_id).await
            ),
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
        let mut out = Vec::new();
        for file in files_under(&self.state.config.data_dir.join("logs")) {
            out.extend(std::fs::read(&file).unwrap());
        }
        out
    }

    /// Every file under the blob store, temp files included.
    pub fn blob_files(&self) -> Vec<PathBuf> {
        let mut out = files_under(&self.state.config.data_dir.join("blobs"));
        out.sort();
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

/// Every file under `dir`, recursively (none if it does not exist).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}
