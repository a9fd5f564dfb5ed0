//! The rig every rollout test starts from: a real `slipway server` process (SQLite),
//! the repository `team/app` with an environment `prod` whose kubeconfig points at a
//! fresh Kubernetes API-server double, and in that double's namespace `shop` the
//! stable version: Deployment `web` (image v1 by digest, a readiness probe), Service
//! `web` and HTTPRoute `web` (through the double's gateway). Two versions of a real
//! HTTP service (busybox httpd answering `v1` or `v2`) are pushed to the local
//! registry once per test binary, so the pipeline can name them by digest.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::kube_double::{self, KubeDouble};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use kube::api::{DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::server_support::git::GitRepo;
use crate::server_support::process::Processes;

pub const NS: &str = "shop";
/// How long a rollout step may take on a loaded two-core machine.
pub const WITHIN: Duration = Duration::from_secs(120);

/// The two versions, by digest.
pub struct Images {
    pub v1: String,
    pub v2: String,
}

static IMAGES: OnceCell<Images> = OnceCell::const_new();

fn registry() -> String {
    std::env::var("SLIPWAY_TEST_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5000".into())
}

/// The docker CLI; its stdout, trimmed (a failure panics with its stderr).
pub fn docker(args: &[&str], input: Option<&str>) -> String {
    use std::io::Write;
    let mut cmd = std::process::Command::new("docker");
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("docker CLI");
    if let Some(i) = input {
        child.stdin.take().unwrap().write_all(i.as_bytes()).unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Builds and pushes both versions (once), returning their digest references.
pub async fn images() -> &'static Images {
    IMAGES
        .get_or_init(|| async {
            tokio::task::spawn_blocking(|| {
                let reg = registry();
                docker(
                    &["login", &reg, "-u", "slipway", "--password-stdin"],
                    Some("slipway-test"),
                );
                let mut refs = Vec::new();
                for v in ["v1", "v2"] {
                    let dir = tempfile::tempdir().unwrap();
                    std::fs::write(
                        dir.path().join("Dockerfile"),
                        format!(
                            "FROM slipway-test/httpd:latest\n\
                             RUN echo {v} > /www/index.html && echo ok > /www/healthz \\\n\
                             && mkdir -p /www/cgi-bin \\\n\
                             && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho {v}\\necho x >> /tmp/hits\\n' > /www/cgi-bin/hit \\\n\
                             && chmod +x /www/cgi-bin/hit\n\
                             LABEL slipway.test.version={v}\n"
                        ),
                    )
                    .unwrap();
                    let tag = format!("{reg}/slipway-rollout/web:{v}");
                    docker(&["build", "-q", "-t", &tag, dir.path().to_str().unwrap()], None);
                    docker(&["push", "-q", &tag], None);
                    let digest = docker(
                        &["inspect", "--format", "{{index .RepoDigests 0}}", &tag],
                        None,
                    );
                    assert!(digest.contains("@sha256:"), "{digest}");
                    refs.push(digest);
                }
                Images {
                    v2: refs.pop().unwrap(),
                    v1: refs.pop().unwrap(),
                }
            })
            .await
            .unwrap()
        })
        .await
}

pub struct Rig {
    pub double: KubeDouble,
    pub p: Processes,
    pub source: PathBuf,
    pub hook: String,
    pub admin: String,
    pub tokens: HashMap<String, String>,
    pub http: reqwest::Client,
    pub images: &'static Images,
    pushes: u32,
}

pub fn kubeconfig(url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster:\n    server: {url}\n\
         contexts:\n- name: prod\n  context:\n    cluster: double\n    user: nobody\n    namespace: {NS}\n\
         users:\n- name: nobody\n  user: {{}}\ncurrent-context: prod\n"
    )
}

impl Rig {
    /// The rig with `replicas` stable pods.
    pub async fn start(replicas: i32) -> Rig {
        Rig::start_with(replicas, &[]).await
    }

    /// [`Rig::start`] with the server's environment extended by `env` (e.g. its
    /// in-process runner on the Docker backend, for image stages).
    pub async fn start_with(replicas: i32, env: &[(&str, &str)]) -> Rig {
        let images = images().await;
        let double = kube_double::start(Default::default()).await.unwrap();
        let mut p = Processes::new();
        for (k, v) in env {
            p = p.env(k, v);
        }
        let source = p.dir.path().join("repo");
        std::fs::create_dir_all(&source).unwrap();
        GitRepo::init(&source);
        p.start_server("server");
        p.cli(&[
            "repo",
            "add",
            "team/app",
            "--forge",
            "git",
            "--clone-url",
            source.to_str().unwrap(),
        ]);
        let hook = p.cli(&[
            "token", "create", "hook", "--scope", "hook", "--repo", "team/app",
        ]);
        let admin = p.cli(&["token", "create", "admin", "--scope", "admin"]);
        let mut tokens = HashMap::new();
        for (name, role) in [("rm", "release-manager"), ("dev", "developer")] {
            p.cli_with_input(
                &["user", "add", name, "--role", role],
                "a long enough password",
            );
            tokens.insert(
                name.to_string(),
                p.cli(&["token", "create", "cli", "--user", name]),
            );
        }
        let kc = p.dir.path().join("prod.kubeconfig");
        std::fs::write(&kc, kubeconfig(&double.base_url)).unwrap();
        let rig = Rig {
            double,
            p,
            source,
            hook,
            admin,
            tokens,
            http: reqwest::Client::new(),
            images,
            pushes: 0,
        };
        rig.ok_as(
            &rig.admin.clone(),
            &[
                "env",
                "set",
                "team/app",
                "prod",
                "--namespace",
                NS,
                "--kubeconfig",
                kc.to_str().unwrap(),
            ],
        );
        rig.create_stable(replicas).await;
        rig
    }

    pub fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.double.client(), NS)
    }

    pub fn services(&self) -> Api<Service> {
        Api::namespaced(self.double.client(), NS)
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.double.client(), NS)
    }

    pub fn routes(&self) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
        let ar = ApiResource::from_gvk_with_plural(&gvk, "httproutes");
        Api::namespaced_with(self.double.client(), NS, &ar)
    }

    async fn create_stable(&self, replicas: i32) {
        let d: Deployment = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": "web", "namespace": NS },
            "spec": {
                "replicas": replicas,
                "selector": { "matchLabels": { "app": "web" } },
                "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxSurge": 1, "maxUnavailable": 0 } },
                "template": {
                    "metadata": { "labels": { "app": "web" } },
                    "spec": { "containers": [{
                        "name": "web", "image": self.images.v1,
                        "ports": [{ "name": "http", "containerPort": 8080 }],
                        "readinessProbe": { "httpGet": { "path": "/healthz", "port": "http" }, "periodSeconds": 1 }
                    }] }
                }
            }
        }))
        .unwrap();
        self.deployments()
            .create(&PostParams::default(), &d)
            .await
            .unwrap();
        let s: Service = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": "web", "namespace": NS },
            "spec": { "selector": { "app": "web" }, "ports": [{ "name": "http", "port": 80, "targetPort": "http" }] }
        }))
        .unwrap();
        self.services()
            .create(&PostParams::default(), &s)
            .await
            .unwrap();
        let r: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": { "name": "web", "namespace": NS },
            "spec": {
                "parentRefs": [{ "name": "gateway" }],
                "rules": [{ "backendRefs": [{ "name": "web", "port": 80 }] }]
            }
        }))
        .unwrap();
        self.routes()
            .create(&PostParams::default(), &r)
            .await
            .unwrap();
        self.wait("the stable version to be ready", || async {
            let d = self
                .deployments()
                .get("web")
                .await
                .map_err(|e| e.to_string())?;
            let ready = d
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0);
            if ready == replicas {
                Ok(())
            } else {
                Err(format!("{ready} of {replicas} ready"))
            }
        })
        .await;
    }

    /// Waits (bounded) until `check` says `Ok`.
    pub async fn wait<T, F, Fut>(&self, what: &str, check: F) -> T
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < WITHIN {
            match check().await {
                Ok(v) => return v,
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "timed out after {WITHIN:?} waiting for {what}: {last}\npods:\n{}\nserver log:\n{}",
            self.pods_summary().await,
            self.server_log_tail()
        );
    }

    /// Each pod of the namespace with its image and container states, for failure
    /// messages.
    pub async fn pods_summary(&self) -> String {
        let Ok(pods) = self.pods().list(&ListParams::default()).await else {
            return "(the double did not list its pods)".into();
        };
        pods.items
            .iter()
            .map(|p| {
                let image = p
                    .spec
                    .as_ref()
                    .and_then(|s| s.containers[0].image.clone())
                    .unwrap_or_default();
                let states = serde_json::to_string(
                    &p.status.as_ref().map(|s| (&s.phase, &s.container_statuses)),
                )
                .unwrap_or_default();
                format!(
                    "{} {image} {states}",
                    p.metadata.name.as_deref().unwrap_or("?")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The last lines of the server's log, for failure messages.
    pub fn server_log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.p.log_path("server")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn token(&self, user: &str) -> String {
        self.tokens[user].clone()
    }

    /// `slipway ARGS` as a client of the server with `token`.
    pub fn cli_as(&self, token: &str, args: &[&str]) -> Output {
        self.p
            .command()
            .args(args)
            .env("SLIPWAY_SERVER", self.p.url(""))
            .env("SLIPWAY_TOKEN", token)
            .output()
            .unwrap()
    }

    pub fn ok_as(&self, token: &str, args: &[&str]) -> String {
        let out = self.cli_as(token, args);
        assert!(
            out.status.success(),
            "slipway {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub async fn api(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), self.p.url(path))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Commits `pipeline` as `.slipway.yml` on main and tells the server; the new run's
    /// number (runs are numbered in push order here).
    pub async fn push(&mut self, pipeline: &str) -> i64 {
        self.push_files(&[(".slipway.yml", pipeline)]).await
    }

    /// [`Rig::push`] of exactly `files` (the pipeline among them).
    pub async fn push_files(&mut self, files: &[(&str, &str)]) -> i64 {
        self.pushes += 1;
        let sha = GitRepo::init(&self.source)
            .commit(
                "refs/heads/main",
                &[],
                files,
                &format!("release {}", self.pushes),
            )
            .to_string();
        let updates = json!({ "updates": [{
            "old": "0".repeat(40), "new": sha, "ref": "refs/heads/main",
        }]});
        let (status, body) = self
            .api(
                "POST",
                "/hooks/git/team/app",
                &self.hook.clone(),
                Some(updates),
            )
            .await;
        assert!(status < 300, "hook: {status} {body}");
        i64::from(self.pushes)
    }

    /// The rollout of stage `stage` of run `run` once `done` holds for it.
    pub async fn rollout_when(
        &self,
        run: i64,
        stage: &str,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let path = format!("/api/repos/team/app/runs/{run}/stages/{stage}/rollout");
        let admin = self.admin.clone();
        self.wait(what, || {
            let path = path.clone();
            let admin = admin.clone();
            let done = &done;
            async move {
                let (status, v) = self.api("GET", &path, &admin, None).await;
                if status == 200 && done(&v) {
                    Ok(v)
                } else {
                    Err(format!("{status} {v:#}"))
                }
            }
        })
        .await
    }

    /// The run once it has finished.
    pub async fn finished(&self, run: i64) -> Value {
        let path = format!("/api/repos/team/app/runs/{run}");
        let admin = self.admin.clone();
        self.wait(&format!("run #{run} to finish"), || {
            let path = path.clone();
            let admin = admin.clone();
            async move {
                let (status, v) = self.api("GET", &path, &admin, None).await;
                match v["run"]["status"].as_str() {
                    Some("pending" | "running") | None => Err(format!("{status} {v:#}")),
                    Some(_) => Ok(v),
                }
            }
        })
        .await
    }

    /// The image the stable Deployment runs.
    pub async fn stable_image(&self) -> String {
        let d = self.deployments().get("web").await.unwrap();
        d.spec.unwrap().template.spec.unwrap().containers[0]
            .image
            .clone()
            .unwrap()
    }

    /// Whether anything a rollout creates is still in the namespace.
    pub async fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        let lp = ListParams::default().labels("slipway.dev/rollout");
        for d in self.deployments().list(&lp).await.unwrap() {
            out.push(format!(
                "Deployment {}",
                d.metadata.name.unwrap_or_default()
            ));
        }
        for s in self.services().list(&lp).await.unwrap() {
            out.push(format!("Service {}", s.metadata.name.unwrap_or_default()));
        }
        let route = self.routes().get("web").await.unwrap();
        let refs = route.data["spec"]["rules"].to_string();
        if refs.contains("canary") {
            out.push(format!("HTTPRoute web still routes to the canary: {refs}"));
        }
        out
    }

    /// The pods of a version that are ready.
    pub async fn ready_pods(&self, image: &str) -> usize {
        let pods = self.pods().list(&ListParams::default()).await.unwrap();
        pods.items
            .iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.spec
                        .as_ref()
                        .is_some_and(|s| s.containers[0].image.as_deref() == Some(image))
                    && p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        })
            })
            .count()
    }

    /// The stage's rollout log.
    pub async fn rollout_log(&self, run: i64, stage: &str) -> String {
        let (_, detail) = self
            .api(
                "GET",
                &format!("/api/repos/team/app/runs/{run}"),
                &self.admin.clone(),
                None,
            )
            .await;
        let id = detail["stages"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["key"] == stage))
            .map(|s| s["id"].clone())
            .unwrap_or(Value::Null);
        let path = format!("/api/repos/team/app/runs/{run}/stages/{id}/steps/0/logs.txt");
        let r = self
            .http
            .get(self.p.url(&path))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap();
        r.text().await.unwrap()
    }
}
