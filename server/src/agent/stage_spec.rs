//! Planned stage (`pipelines`) → runnable stage (`runner`): the one mapping, shared by
//! `slipway exec` and the runners that execute the server's stages, so that a stage runs
//! the same way on a laptop and in CI.
//!
//! Secrets: a [`PlannedStage`] names secrets (env var → secret name), never values.
//! The caller passes the values it has; what happens to a referenced secret that is not
//! among them is the caller's choice ([`OnMissing`]): `slipway exec` refuses to run, a
//! runner leaves the variable unset (the server withheld the secret on purpose, e.g.
//! for a pull request from a fork; undefined secrets are refused by the server before
//! the stage is handed out).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pipelines::{PlannedKind, PlannedStage, ScanLevel};
use runner::{
    ContainerSettings, ImageSpec, PodSettings, RegistryAuth, ScanSpec, ServiceSpec, Severity,
    Source, StageKind, StageSpec, StepSpec, Toleration,
};

/// What to do when a referenced secret has no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnMissing {
    /// Refuse with [`SpecError::MissingSecret`].
    Error,
    /// Leave the environment variable unset.
    Omit,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The stage's kind needs something the local backend does not have.
    #[error("{0}")]
    Unsupported(String),
    #[error("stage `{stage}` needs secret `{secret}`, which has no value")]
    MissingSecret { stage: String, secret: String },
    /// The registry secret is not in a usable form (the message never holds it).
    #[error("stage `{stage}`: {message}")]
    BadRegistrySecret { stage: String, message: String },
}

/// Why a stage of this kind cannot run on a runner at all (`None`: it can; whether the
/// runner's backend can build images is the backend's to say, see
/// [`runner::Backend::build_image`]).
pub fn unsupported_reason(kind: &PlannedKind) -> Option<&'static str> {
    match kind {
        PlannedKind::Run
        | PlannedKind::Scan { .. }
        | PlannedKind::Image { .. }
        | PlannedKind::Deploy { rollout: None, .. } => None,
        PlannedKind::Deploy {
            rollout: Some(_), ..
        } => Some(
            "a rollout is driven by the server's rollout controller, never by a runner \
             (the server does not lease rollout stages; this runner got one from a server \
             older than its pipeline)",
        ),
    }
}

/// The stage's step names as the runner reports them: the plan's steps, then the step
/// its kind adds (`build image`, `scan`; see [`runner::StageKind::step_name`]).
pub fn step_names(stage: &PlannedStage) -> Vec<String> {
    let mut names: Vec<String> = stage.steps.iter().map(|s| s.name.clone()).collect();
    let extra = match stage.kind {
        PlannedKind::Image { .. } => Some(runner::IMAGE_STEP),
        PlannedKind::Scan { .. } => Some(runner::SCAN_STEP),
        PlannedKind::Deploy {
            rollout: Some(_), ..
        } => Some(ROLLOUT_STEP),
        PlannedKind::Run | PlannedKind::Deploy { .. } => None,
    };
    names.extend(extra.map(String::from));
    names
}

/// The one step of a rollout stage: the rollout controller's log of what it did.
pub const ROLLOUT_STEP: &str = "rollout";

/// OCI labels put on every image Slipway builds.
pub const LABEL_REVISION: &str = "org.opencontainers.image.revision";
pub const LABEL_RUN_URL: &str = "io.slipway.run-url";

fn stage_kind(
    stage: &PlannedStage,
    id: &str,
    env: &BTreeMap<String, String>,
    secrets: &BTreeMap<String, String>,
    on_missing: OnMissing,
) -> Result<StageKind, SpecError> {
    Ok(match &stage.kind {
        PlannedKind::Run | PlannedKind::Deploy { .. } => StageKind::Run,
        PlannedKind::Scan { sarif, fail_on } => StageKind::Scan(ScanSpec {
            sarif: sarif.clone(),
            fail_on: severity(*fail_on),
        }),
        PlannedKind::Image {
            dockerfile,
            context,
            push,
            registry_secret,
            build_args,
            target,
        } => {
            let mut labels = BTreeMap::new();
            if let Some(sha) = env.get("SLIPWAY_COMMIT_SHA") {
                labels.insert(LABEL_REVISION.to_string(), sha.clone());
            }
            if let Some(url) = env.get("SLIPWAY_RUN_URL").filter(|u| !u.is_empty()) {
                labels.insert(LABEL_RUN_URL.to_string(), url.clone());
            }
            let registry_auth = match (registry_secret, push) {
                (Some(name), Some(reference)) => match secrets.get(name) {
                    Some(value) => Some(
                        RegistryAuth::parse(value, registry_host(reference)).map_err(|e| {
                            SpecError::BadRegistrySecret {
                                stage: id.to_string(),
                                message: e.to_string(),
                            }
                        })?,
                    ),
                    None if on_missing == OnMissing::Omit => None,
                    None => {
                        return Err(SpecError::MissingSecret {
                            stage: id.to_string(),
                            secret: name.clone(),
                        });
                    }
                },
                _ => None,
            };
            StageKind::Image(ImageSpec {
                dockerfile: dockerfile.clone(),
                context: context.clone(),
                target: target.clone(),
                build_args: build_args.clone(),
                labels,
                push: push.clone(),
                registry_auth,
            })
        }
    })
}

/// Every secret value, plus the registry password on its own: the secret holds
/// `user:password` or a config.json, and a build log could show the password alone.
fn mask_values(secrets: &BTreeMap<String, String>, kind: &StageKind) -> Vec<String> {
    let mut values: Vec<String> = secrets.values().cloned().collect();
    if let StageKind::Image(ImageSpec {
        registry_auth: Some(auth),
        ..
    }) = kind
    {
        values.push(auth.password.clone());
    }
    values
}

fn severity(level: ScanLevel) -> Option<Severity> {
    match level {
        ScanLevel::None => None,
        ScanLevel::Note => Some(Severity::Note),
        ScanLevel::Low => Some(Severity::Low),
        ScanLevel::Medium => Some(Severity::Medium),
        ScanLevel::High => Some(Severity::High),
        ScanLevel::Critical => Some(Severity::Critical),
    }
}

/// The registry host of an image reference, as Docker reads it: the first path
/// component if it looks like a host (has `.` or `:`, or is `localhost`), else Docker Hub.
pub fn registry_host(reference: &str) -> &str {
    match reference.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

/// Every secret name the stage references: stage- and step-level, and an image stage's
/// registry credentials.
pub fn referenced_secrets(stage: &PlannedStage) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = stage.secrets.values().cloned().collect();
    for step in &stage.steps {
        names.extend(step.secrets.values().cloned());
    }
    if let PlannedKind::Image {
        registry_secret: Some(name),
        ..
    } = &stage.kind
    {
        names.insert(name.clone());
    }
    names
}

/// The run a stage belongs to, as `${{ run.number }}`, `${{ run.id }}` and
/// `${{ run.url }}` read it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunInfo {
    pub number: i64,
    pub id: i64,
    pub url: String,
}

impl RunInfo {
    /// What `slipway exec` gives: a local run has no record on a server, so its number
    /// and id are 0 and its URL is empty (set, never missing).
    pub fn local() -> RunInfo {
        RunInfo::default()
    }
}

/// Adds `run` to a stage's environment as the variables `${{ run.* }}` became in its
/// scripts ([`pipelines::expr::Expr::env_var`]): the server at lease, `exec` per stage.
pub fn add_run_info(env: &mut BTreeMap<String, String>, run: &RunInfo) {
    use pipelines::expr::{Expr, RunField};
    for field in [RunField::Number, RunField::Id, RunField::Url] {
        let value = match field {
            RunField::Number => run.number.to_string(),
            RunField::Id => run.id.to_string(),
            RunField::Url => run.url.clone(),
        };
        env.insert(Expr::Run(field).env_var(), value);
    }
}

/// Adds the outputs of stages a stage needs to its environment, as the variables that
/// `${{ stages.<name>.outputs.<key> }}` became in its scripts
/// ([`pipelines::expr::Expr::env_var`]). `outputs` are `(stage name, key, value)` with
/// the plan's stage name, so every expansion of a matrix stage answers to it; when
/// expansions disagree, the first given wins (callers pass them in plan order). A
/// variable the stage's env already has is replaced: the value is known only now.
pub fn add_stage_outputs<'a>(
    env: &mut BTreeMap<String, String>,
    outputs: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>,
) {
    let mut set = BTreeSet::new();
    for (stage, key, value) in outputs {
        let var = pipelines::expr::Expr::StageOutput {
            stage: stage.to_string(),
            key: key.to_string(),
        }
        .env_var();
        if set.insert(var.clone()) {
            env.insert(var, value.to_string());
        }
    }
}

/// Maps `stage` onto a [`StageSpec`] with id `id` and workspace `source`. Secret values
/// come from `secrets` (by secret name) and are injected as the environment variables
/// the plan names; every value in `secrets` is also handed to the runner for masking,
/// not just the referenced ones: a step could read a file that happens to hold another.
pub fn stage_spec(
    stage: &PlannedStage,
    id: &str,
    source: Source,
    secrets: &BTreeMap<String, String>,
    on_missing: OnMissing,
) -> Result<StageSpec, SpecError> {
    if let Some(reason) = unsupported_reason(&stage.kind) {
        return Err(SpecError::Unsupported(reason.to_string()));
    }
    let inject = |env: &mut BTreeMap<String, String>,
                  refs: &BTreeMap<String, String>|
     -> Result<(), SpecError> {
        for (var, name) in refs {
            match secrets.get(name) {
                Some(value) => {
                    env.insert(var.clone(), value.clone());
                }
                None if on_missing == OnMissing::Omit => {
                    // Not inherited from a level above either: the variable is unset.
                    env.remove(var);
                }
                None => {
                    return Err(SpecError::MissingSecret {
                        stage: id.to_string(),
                        secret: name.clone(),
                    });
                }
            }
        }
        Ok(())
    };
    let mut env = stage.env.clone();
    inject(&mut env, &stage.secrets)?;
    let mut steps = Vec::with_capacity(stage.steps.len());
    for step in &stage.steps {
        let mut step_env = step.env.clone();
        inject(&mut step_env, &step.secrets)?;
        steps.push(StepSpec {
            name: step.name.clone(),
            script: step.script.clone(),
            env: step_env,
            timeout: step.timeout_secs.map(Duration::from_secs),
        });
    }
    let kind = stage_kind(stage, id, &env, secrets, on_missing)?;
    let services = stage
        .services
        .iter()
        .map(|(name, s)| ServiceSpec {
            name: name.clone(),
            image: s.image.clone(),
            env: s.env.clone(),
            command: s.command.clone(),
            ready: s.ready.clone(),
        })
        .collect();
    Ok(StageSpec {
        id: id.to_string(),
        image: stage.image.clone(),
        source,
        env,
        steps,
        timeout: stage.timeout_secs.map(Duration::from_secs),
        artifacts: stage.artifacts.clone(),
        secrets: mask_values(secrets, &kind),
        kind,
        services,
        container: container_settings(&stage.container),
        pod: pod_settings(&stage.kubernetes),
        // Set by the runner agent from its lease (repo, run, stage, attempt).
        labels: Default::default(),
        adoption: None,
    })
}

/// The YAML's `kubernetes:` block (already checked by `pipelines`: valid labels,
/// consistent tolerations; the service account only reaches a plan the server let
/// through, see [`pipelines::untrusted_service_accounts`]).
fn pod_settings(k: &pipelines::KubernetesSettings) -> PodSettings {
    PodSettings {
        node_selector: k.node_selector.clone(),
        tolerations: k
            .tolerations
            .iter()
            .map(|t| Toleration {
                key: t.key.clone(),
                operator: Some(t.operator.as_str().to_string()),
                value: t.value.clone(),
                effect: t.effect.map(|e| e.as_str().to_string()),
                // Checked to fit when the YAML was read.
                toleration_seconds: t
                    .toleration_seconds
                    .map(|s| i64::try_from(s).unwrap_or(i64::MAX)),
            })
            .collect(),
        service_account: k.service_account.as_ref().map(|sa| sa.name.clone()),
    }
}

/// The YAML's `user`, `workdir` and `resources`, for the backend to apply.
fn container_settings(c: &pipelines::Container) -> ContainerSettings {
    ContainerSettings {
        user: c.user.clone(),
        workdir: c.workdir.clone(),
        memory_bytes: c.memory_bytes,
        cpu_millis: c.cpu_millis,
        disk_bytes: c.disk_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(yaml: &str) -> PlannedStage {
        let pipeline = pipelines::parse(".slipway.yml", yaml).expect("valid yaml");
        let ctx = pipelines::EventContext {
            branch: Some("main".into()),
            sha: "0".repeat(40),
            ..Default::default()
        };
        pipelines::plan(&pipeline, &ctx)
            .expect("plan")
            .stages
            .remove(0)
    }

    const YAML: &str = "stages:\n  build:\n    steps:\n      - name: one\n        run: echo $TOKEN\n        env:\n          TOKEN: ${{ secrets.API_TOKEN }}\n";

    #[test]
    fn injects_secrets_and_masks_all_given_values() {
        let stage = planned(YAML);
        assert_eq!(
            referenced_secrets(&stage),
            BTreeSet::from(["API_TOKEN".to_string()])
        );
        let secrets = BTreeMap::from([
            ("API_TOKEN".to_string(), "s3cret".to_string()),
            ("OTHER".to_string(), "other-value".to_string()),
        ]);
        let spec = stage_spec(&stage, "build", Source::Empty, &secrets, OnMissing::Error).unwrap();
        assert_eq!(
            spec.steps[0].env.get("TOKEN").map(String::as_str),
            Some("s3cret")
        );
        assert_eq!(spec.secrets.len(), 2);
    }

    #[test]
    fn stage_outputs_become_the_script_variables() {
        let yaml = "stages:\n  build:\n    steps: [\"true\"]\n  deploy:\n    needs: [build]\n    steps:\n      - run: echo ${{ stages.build.outputs.digest }}\n";
        let pipeline = pipelines::parse(".slipway.yml", yaml).expect("valid yaml");
        let ctx = pipelines::EventContext {
            branch: Some("main".into()),
            sha: "0".repeat(40),
            ..Default::default()
        };
        let plan = pipelines::plan(&pipeline, &ctx).expect("plan");
        let deploy = &plan.stages[1];
        let mut env = BTreeMap::from([("SLIPWAY_STAGE_BUILD_DIGEST".to_string(), "stale".into())]);
        add_stage_outputs(
            &mut env,
            [
                ("build", "digest", "sha256:1"),
                ("build", "digest", "sha256:2"),
                ("build", "image-ref", "r"),
            ],
        );
        assert_eq!(env["SLIPWAY_STAGE_BUILD_DIGEST"], "sha256:1");
        assert_eq!(env["SLIPWAY_STAGE_BUILD_IMAGE_REF"], "r");
        assert!(
            deploy.steps[0]
                .script
                .contains("${SLIPWAY_STAGE_BUILD_DIGEST}"),
            "{}",
            deploy.steps[0].script
        );
    }

    #[test]
    fn container_settings_come_from_the_yaml() {
        let stage = planned(
            "stages:\n  build:\n    user: \"1000:1000\"\n    workdir: ./api/\n    resources: { memory: 512Mi, cpu: 500m, disk: 20Gi }\n    steps: [make]\n",
        );
        let spec = stage_spec(
            &stage,
            "build",
            Source::Empty,
            &BTreeMap::new(),
            OnMissing::Error,
        )
        .unwrap();
        assert_eq!(
            spec.container,
            ContainerSettings {
                user: Some("1000:1000".into()),
                workdir: Some("api".into()),
                memory_bytes: Some(512 * 1024 * 1024),
                cpu_millis: Some(500),
                disk_bytes: Some(20 << 30),
            }
        );
        let plain = planned("stages:\n  build:\n    steps: [make]\n");
        let spec = stage_spec(
            &plain,
            "build",
            Source::Empty,
            &BTreeMap::new(),
            OnMissing::Error,
        )
        .unwrap();
        assert_eq!(spec.container, ContainerSettings::default());
    }

    #[test]
    fn pod_settings_come_from_the_kubernetes_block() {
        let stage = planned(
            "stages:
  deploy:
    kubernetes:
      node_selector: { kubernetes.io/arch: arm64, pool: ci }
      tolerations:
        - { key: dedicated, value: ci, effect: NoSchedule }
        - { key: spot, operator: Exists, effect: NoExecute, toleration_seconds: 300 }
        - { operator: Exists }
      service_account: deployer
    steps: [make]
",
        );
        let spec = stage_spec(
            &stage,
            "deploy",
            Source::Empty,
            &BTreeMap::new(),
            OnMissing::Error,
        )
        .unwrap();
        assert_eq!(
            spec.pod,
            PodSettings {
                node_selector: BTreeMap::from([
                    ("kubernetes.io/arch".to_string(), "arm64".to_string()),
                    ("pool".to_string(), "ci".to_string()),
                ]),
                tolerations: vec![
                    Toleration {
                        key: Some("dedicated".into()),
                        operator: Some("Equal".into()),
                        value: Some("ci".into()),
                        effect: Some("NoSchedule".into()),
                        toleration_seconds: None,
                    },
                    Toleration {
                        key: Some("spot".into()),
                        operator: Some("Exists".into()),
                        value: None,
                        effect: Some("NoExecute".into()),
                        toleration_seconds: Some(300),
                    },
                    Toleration {
                        key: None,
                        operator: Some("Exists".into()),
                        value: None,
                        effect: None,
                        toleration_seconds: None,
                    },
                ],
                service_account: Some("deployer".into()),
            }
        );
        let plain = planned("stages:\n  build:\n    steps: [make]\n");
        let spec = stage_spec(
            &plain,
            "build",
            Source::Empty,
            &BTreeMap::new(),
            OnMissing::Error,
        )
        .unwrap();
        assert_eq!(spec.pod, PodSettings::default());
    }

    #[test]
    fn missing_secrets_error_or_stay_unset() {
        let stage = planned(YAML);
        let none = BTreeMap::new();
        let err = stage_spec(&stage, "build", Source::Empty, &none, OnMissing::Error).unwrap_err();
        assert_eq!(
            err,
            SpecError::MissingSecret {
                stage: "build".into(),
                secret: "API_TOKEN".into()
            }
        );
        let spec = stage_spec(&stage, "build", Source::Empty, &none, OnMissing::Omit).unwrap();
        assert!(spec.secrets.is_empty());
        assert!(!spec.steps[0].env.contains_key("TOKEN"));
        assert!(!spec.env.contains_key("TOKEN"));
    }
}
