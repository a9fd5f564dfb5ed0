//! `kind: image` on Kubernetes: the context is copied out of the stage's pod into a
//! builder pod ([`super::builder`]), whose `build` container's log is the stage's
//! log and whose termination message carries the image id and pushed digest.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;
use futures::AsyncBufReadExt as _;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::{DeleteParams, ListParams, LogParams, PropagationPolicy};
use tokio::sync::mpsc::UnboundedSender;

use super::builder::{self, BuildPaths};
use super::status::{self, Progress};
use super::watch::{self, PodView};
use super::{KubeStage, KubernetesBackend, api_err, copy, ignore_not_found, names, pod, strict};
use crate::backend::{BuiltImage, LogChunk, LogStreamKind, StageHandle};
use crate::error::{Error, Result};
use crate::image_build::{Reference, push_error_is_retryable};
use crate::spec::ImageSpec;

/// Label on a builder pod and its Secret: the stage pod it builds for.
pub const BUILDER_OF_LABEL: &str = "slipway.io/builder-of";

/// Log lines kept to explain a failed build or push.
const TAIL_LINES: usize = 20;

impl KubernetesBackend {
    fn builder_apis(&self) -> Result<(Api<Pod>, Api<Secret>, &super::BuilderOptions)> {
        let b = self.inner.options.builder.as_ref().ok_or_else(|| {
            Error::InvalidSpec(
                "kind `image` on the kubernetes backend needs a builder: set the builder image \
                 and its namespace (`kube_builder_image`, `kube_builder_namespace`)"
                    .into(),
            )
        })?;
        Ok((
            Api::namespaced(self.inner.client.clone(), &b.namespace),
            Api::namespaced(self.inner.client.clone(), &b.namespace),
            b,
        ))
    }

    /// Builds (and pushes) `image` from the stage's workspace in a builder pod, which
    /// is deleted afterwards whatever happened.
    pub(super) async fn build_in_pod(
        &self,
        handle: &StageHandle,
        image: &ImageSpec,
        log: UnboundedSender<LogChunk>,
    ) -> Result<BuiltImage> {
        let (pods, secrets, builder_options) = self.builder_apis()?;
        let paths = BuildPaths::of(image)?;
        let stage = self.stage(handle)?;
        let mut labels = match &*stage.view.borrow() {
            PodView::Present(p) => p.metadata.labels.clone().unwrap_or_default(),
            PodView::Gone => {
                return Err(Error::Backend {
                    op: "build image",
                    message: format!("pod {} is gone", stage.pod),
                });
            }
        };
        labels.insert(BUILDER_OF_LABEL.into(), names::label_value(&stage.pod));

        // The context (and an outside Dockerfile) out of the stage's pod, as a tar,
        // once its steps are done and the `workspace` container holds it.
        self.wait_until(&stage, "waiting for the workspace container", |p| {
            matches!(
                status::progress(p, names::WORKSPACE_CONTAINER),
                Progress::Running
            )
            .then_some(())
        })
        .await?;
        let context = tempfile::NamedTempFile::new()
            .map_err(|e| Error::io("creating a temp file for the build context", e))?;
        let mut command = vec!["tar", "-c", "-f", "-", "-C", pod::WORKSPACE, "--"];
        let copied = paths.to_copy();
        command.extend(copied.iter().map(String::as_str));
        copy::exec_to_file(
            &self.inner.pods,
            &stage.pod,
            names::WORKSPACE_CONTAINER,
            &command,
            context.path(),
        )
        .await
        .map_err(|e| match e {
            Error::Backend { message, .. } if message.contains("No such file") => {
                Error::ImageBuild(format!(
                    "the context `{}` or the Dockerfile `{}` is not in the workspace: {message}",
                    image.context, image.dockerfile
                ))
            }
            e => e,
        })?;

        let name = names::pod_name(&format!("{}-build", handle.stage));
        let (builder_pod, secret) = builder::builder_objects(
            image,
            &name,
            &paths,
            labels,
            &self.inner.options,
            builder_options,
        )?;
        let created = strict::create(&self.inner.client, &pods, &builder_pod)
            .await
            .map_err(|e| match e {
                kube::Error::Api(s) if s.code == 422 || s.code == 400 => Error::InvalidSpec(
                    format!("the API server refused the builder pod: {}", s.message),
                ),
                e => api_err("create builder pod")(e),
            })?;
        let password = image
            .registry_auth
            .as_ref()
            .map(|a| a.password.clone())
            .filter(|p| !p.is_empty());
        let result = self
            .run_builder(
                &pods,
                &secrets,
                created,
                secret,
                context.path(),
                image,
                &log,
                password,
            )
            .await;
        if let Err(e) = delete_builder(&pods, &secrets, &name, &self.inner.options).await {
            tracing::warn!(pod = %name, error = %e, "could not delete the builder pod");
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_builder(
        &self,
        pods: &Api<Pod>,
        secrets: &Api<Secret>,
        created: Pod,
        secret: Option<Secret>,
        context: &std::path::Path,
        image: &ImageSpec,
        log: &UnboundedSender<LogChunk>,
        password: Option<String>,
    ) -> Result<BuiltImage> {
        let name = created.metadata.name.clone().unwrap_or_default();
        let uid = created.metadata.uid.clone().unwrap_or_default();
        if let Some(mut secret) = secret {
            secret.metadata.owner_references = Some(vec![pod::owned_by_pod(&name, &uid)]);
            strict::create(&self.inner.client, secrets, &secret)
                .await
                .map_err(api_err("create registry secret"))?;
        }
        let (view, watcher) = watch::follow(pods.clone(), created);
        let builder = KubeStage {
            pod: name.clone(),
            view,
            watcher,
            finished: Mutex::new(HashSet::new()),
            tailed: Mutex::new(HashSet::new()),
        };
        self.wait_until(
            &builder,
            "waiting for the builder's source container",
            |p| {
                matches!(
                    status::progress(p, names::SOURCE_CONTAINER),
                    Progress::Running
                )
                .then_some(())
            },
        )
        .await?;
        copy::exec_with_input(
            pods,
            &name,
            names::SOURCE_CONTAINER,
            |stdin| {
                format!(
                    "{stdin} | tar -x -o -f - -C {} && touch {}",
                    builder::WORKSPACE,
                    builder::READY_MARKER
                )
            },
            context,
        )
        .await?;
        self.wait_until(&builder, "waiting for the build to start", |p| {
            (status::progress(p, builder::BUILD_CONTAINER) != Progress::Waiting).then_some(())
        })
        .await?;

        // The build's output, line by line, as the stage's log.
        let redact = |line: &str| match &password {
            Some(p) => line.replace(p.as_str(), "********"),
            None => line.to_owned(),
        };
        let lp = LogParams {
            container: Some(builder::BUILD_CONTAINER.into()),
            follow: true,
            ..Default::default()
        };
        let reader = pods
            .log_stream(&name, &lp)
            .await
            .map_err(api_err("builder log"))?;
        let mut lines = reader.lines();
        let mut tail: VecDeque<String> = VecDeque::with_capacity(TAIL_LINES);
        while let Some(line) = lines.next().await {
            let line = redact(&line.map_err(|e| Error::io("reading the builder log", e))?);
            let _ = log.send(LogChunk {
                stream: LogStreamKind::Stdout,
                bytes: Bytes::from(format!("{line}\n")),
            });
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }

        let (code, oom, message) = self
            .wait_until(&builder, "waiting for the build to finish", |p| {
                let cs = status::container_status(p, builder::BUILD_CONTAINER)?;
                let t = cs.state.as_ref()?.terminated.as_ref()?;
                Some((
                    t.exit_code,
                    t.reason.as_deref() == Some("OOMKilled"),
                    t.message.clone().unwrap_or_default(),
                ))
            })
            .await?;
        let explain = || {
            let text: Vec<&str> = tail
                .iter()
                .map(|l| l.trim())
                .filter(|l| !l.is_empty())
                .collect();
            text.join("\n")
        };
        let reference = image.push.as_deref().map(Reference::parse).transpose()?;
        match code {
            0 => {
                let (id, digest) =
                    builder::parse_result(&message).ok_or_else(|| Error::Backend {
                        op: "build image",
                        message: format!(
                            "the builder left no result (termination message {message:?})"
                        ),
                    })?;
                if reference.is_some() && digest.is_none() {
                    return Err(Error::Backend {
                        op: "build image",
                        message: "the builder pushed but reported no digest".into(),
                    });
                }
                Ok(BuiltImage {
                    id,
                    reference: reference.map(|r| r.full()),
                    digest,
                })
            }
            _ if oom => Err(Error::ImageBuild(format!(
                "the builder ran out of memory ({} bytes); {}",
                self.builder_apis()?.2.memory_bytes,
                explain()
            ))),
            builder::BUILD_FAILED => Err(Error::ImageBuild(explain())),
            builder::PUSH_FAILED => {
                let message = explain();
                Err(Error::ImagePush {
                    registry: reference.map(|r| r.registry).unwrap_or_default(),
                    retryable: push_error_is_retryable(&message),
                    message,
                })
            }
            code => Err(Error::Backend {
                op: "build image",
                message: format!("the builder exited with {code}: {}", explain()),
            }),
        }
    }

    /// Deletes the builder pods (and Secrets) of stage pod `stage_pod`: after a
    /// cancel or timeout dropped the build half-way.
    pub(super) async fn delete_builders_of(&self, stage_pod: &str) -> Result<()> {
        let Some(b) = &self.inner.options.builder else {
            return Ok(());
        };
        let pods: Api<Pod> = Api::namespaced(self.inner.client.clone(), &b.namespace);
        let secrets: Api<Secret> = Api::namespaced(self.inner.client.clone(), &b.namespace);
        let lp = ListParams::default().labels(&format!(
            "{BUILDER_OF_LABEL}={}",
            names::label_value(stage_pod)
        ));
        let list = pods.list(&lp).await.map_err(api_err("list builder pods"))?;
        for p in list.items {
            if let Some(name) = p.metadata.name {
                delete_builder(&pods, &secrets, &name, &self.inner.options).await?;
            }
        }
        Ok(())
    }

    /// Deletes this runner's builder pods and Secrets, whatever stage they were for:
    /// what a crashed runner left. Builds are not adopted — an adopted image stage
    /// builds again — so a restarted runner calls this before adopting
    /// ([`KubernetesBackend::sweep`] does too).
    pub async fn sweep_builders(&self) -> Result<Vec<String>> {
        let Some(b) = &self.inner.options.builder else {
            return Ok(Vec::new());
        };
        let pods: Api<Pod> = Api::namespaced(self.inner.client.clone(), &b.namespace);
        let secrets: Api<Secret> = Api::namespaced(self.inner.client.clone(), &b.namespace);
        let lp = ListParams::default().labels(&self.runner_selector());
        let mut deleted = Vec::new();
        for p in pods
            .list(&lp)
            .await
            .map_err(api_err("list builder pods"))?
            .items
        {
            if let Some(name) = p.metadata.name {
                delete_builder(&pods, &secrets, &name, &self.inner.options).await?;
                deleted.push(name);
            }
        }
        for s in secrets
            .list(&lp)
            .await
            .map_err(api_err("list builder secrets"))?
            .items
        {
            if let Some(name) = s.metadata.name {
                ignore_not_found(
                    secrets
                        .delete(&name, &DeleteParams::default())
                        .await
                        .map(|_| ()),
                )
                .map_err(api_err("delete builder secret"))?;
            }
        }
        Ok(deleted)
    }
}

impl KubernetesBackend {
    /// Deletes every builder pod (whichever runner made it) whose stage pod is gone
    /// or going: the server's orphan sweep calls this after removing stage pods, so a
    /// build whose runner never came back does not run on to its deadline.
    pub async fn sweep_orphan_builders(&self) -> Result<Vec<String>> {
        let Some(b) = &self.inner.options.builder else {
            return Ok(Vec::new());
        };
        let pods: Api<Pod> = Api::namespaced(self.inner.client.clone(), &b.namespace);
        let secrets: Api<Secret> = Api::namespaced(self.inner.client.clone(), &b.namespace);
        let lp = ListParams::default().labels(&format!(
            "{}={},{BUILDER_OF_LABEL}",
            names::MANAGED_BY_LABEL,
            names::MANAGED_BY
        ));
        let mut deleted = Vec::new();
        for p in pods
            .list(&lp)
            .await
            .map_err(api_err("list builder pods"))?
            .items
        {
            let (Some(name), Some(stage_pod)) = (
                p.metadata.name.clone(),
                p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(BUILDER_OF_LABEL))
                    .cloned(),
            ) else {
                continue;
            };
            let stage = self
                .inner
                .pods
                .get_opt(&stage_pod)
                .await
                .map_err(api_err("get pod"))?;
            if stage.is_none_or(|s| s.metadata.deletion_timestamp.is_some()) {
                tracing::warn!(pod = %name, stage_pod = %stage_pod, "deleting a builder pod whose stage is gone");
                delete_builder(&pods, &secrets, &name, &self.inner.options).await?;
                deleted.push(name);
            }
        }
        Ok(deleted)
    }
}

async fn delete_builder(
    pods: &Api<Pod>,
    secrets: &Api<Secret>,
    name: &str,
    options: &super::KubernetesOptions,
) -> Result<()> {
    let dp = DeleteParams {
        grace_period_seconds: Some(options.kill_grace.as_secs().max(1) as u32),
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    ignore_not_found(pods.delete(name, &dp).await.map(|_| ()))
        .map_err(api_err("delete builder pod"))?;
    ignore_not_found(
        secrets
            .delete(name, &DeleteParams::default())
            .await
            .map(|_| ()),
    )
    .map_err(api_err("delete builder secret"))
}
