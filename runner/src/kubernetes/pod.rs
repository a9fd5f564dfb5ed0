//! The Pod and Secret of a stage, as typed core/v1 objects. Pure: a spec and the
//! backend's options in, objects out, so golden tests pin exactly what is sent.
//!
//! Layout of a stage's pod (`restartPolicy: Never`):
//!
//! - init container `source` (helper image) waits until the runner has copied the
//!   workspace and the step scripts in through `exec` + `tar` (as `kubectl cp`
//!   does), then exits. The pod never sees a forge credential or server token.
//! - services as native sidecars (init containers with `restartPolicy: Always`):
//!   started before the steps, kept running beside them, stopped after the pod's
//!   main container; reachable by name through `hostAliases` → 127.0.0.1 (a pod
//!   shares one network namespace). A service's `ready:` command is its startup
//!   probe: the kubelet starts the next init container only once a sidecar's
//!   startup probe passed (KEP-753; pkg/kubelet/kuberuntime/kuberuntime_container.go,
//!   `computeInitContainerActions`), so the steps find the service answering.
//! - one init container per step, `step-<i>`, in order: the kubelet starts an init
//!   container only after the previous one exited 0, and a non-zero exit fails the
//!   pod — exactly "later steps are skipped after a failure". Each step is its own
//!   container, so its log (`pods/log?container=step-<i>`) and its exit code and
//!   OOM flag (`initContainerStatuses`) stay separate. Scripts run as
//!   `sh -e /slipway/steps/<i>.sh` from the read-only control volume, outside the
//!   workspace (artifact globs never see them) and outside argv (no size limit).
//! - main container `workspace` (helper image) idles once the steps are done, so
//!   the runner can copy artifacts out and scan or build from the workspace. The
//!   pod is deleted by the runner when the stage ends.
//!
//! Secure by default (Pod Security Standard `restricted`): non-root uid/gid,
//! `seccompProfile: RuntimeDefault`, no privilege escalation, every capability
//! dropped, no service-account token, requests = limits on every container, an
//! `activeDeadlineSeconds` backstop. Secret values never appear in the pod: env
//! vars holding one are `secretKeyRef`s into the stage's Secret, which is owned
//! by the pod (deleted with it).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction, HostAlias,
    LocalObjectReference, Pod, PodSecurityContext, PodSpec, Probe, ResourceRequirements,
    SeccompProfile, Secret, SecretKeySelector, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::KubernetesOptions;
use super::names::{self, SOURCE_CONTAINER, WORKSPACE_CONTAINER};
use crate::error::{Error, Result};
use crate::spec::{StageSpec, StepSpec};

/// Where the workspace emptyDir is mounted in every container.
pub const WORKSPACE: &str = "/workspace";
/// The control emptyDir: step scripts and the source-ready marker.
pub const CONTROL: &str = "/slipway";
/// Created by the runner once the source is in; `source` exits when it appears.
pub const READY_MARKER: &str = "/slipway/source-ready";
/// The key of [`StageSpec::adoption`] in the stage's Secret.
pub const ADOPTION_KEY: &str = "slipway.adoption";
/// Extra seconds of `activeDeadlineSeconds` beyond the stage timeout: the runner
/// enforces the timeout itself; the deadline only catches a pod it lost.
const DEADLINE_MARGIN: Duration = Duration::from_secs(300);

/// Small, fixed resources of the helper containers (`source`, `workspace`).
const HELPER_CPU: &str = "100m";
const HELPER_MEMORY: &str = "128Mi";

/// `ephemeral-storage` of a container's own files (writable layer, logs): small for
/// the helpers, 1Gi for a step's or service's image. The workspace is counted apart:
/// an emptyDir of the stage's `disk`, which the `workspace` container requests (it
/// lives as long as the pod, so the scheduler reserves the disk for the whole stage,
/// and the kubelet's pod-level limit — the sum of the containers' — covers it).
const HELPER_DISK: u64 = 64 << 20;
const LAYER_DISK: u64 = 1 << 30;
/// The control volume holds the step scripts and markers.
const CONTROL_DISK: &str = "16Mi";

/// The uid and gid the containers run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: i64,
    pub gid: i64,
}

/// The stage's `user` on Kubernetes: numeric `uid` or `uid:gid`, never root (the
/// `restricted` profile forbids it, and names cannot be resolved before the pod
/// runs). Unset: the backend's default.
pub fn run_as(spec: &StageSpec, options: &KubernetesOptions) -> Result<RunAs> {
    let Some(user) = &spec.container.user else {
        return Ok(options.run_as);
    };
    let bad = || {
        Error::InvalidSpec(format!(
            "user `{user}`: the kubernetes backend needs a numeric, non-root `uid` or `uid:gid`"
        ))
    };
    let (uid, gid) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user.as_str(), None),
    };
    let uid: i64 = uid.parse().map_err(|_| bad())?;
    let gid: i64 = match gid {
        Some(g) => g.parse().map_err(|_| bad())?,
        None => uid,
    };
    if uid <= 0 || gid < 0 {
        return Err(bad());
    }
    Ok(RunAs { uid, gid })
}

/// The step working directory: `/workspace` or a relative path inside it.
pub fn workdir(spec: &StageSpec) -> Result<String> {
    match spec.container.workdir.as_deref() {
        None | Some("") | Some(".") => Ok(WORKSPACE.to_owned()),
        Some(w) => {
            let path = std::path::Path::new(w);
            let ok = path
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !ok || w.contains('\0') {
                return Err(Error::InvalidSpec(format!(
                    "workdir `{w}` must be a relative path inside the workspace"
                )));
            }
            Ok(format!("{WORKSPACE}/{}", w.trim_end_matches('/')))
        }
    }
}

/// The objects of one stage.
#[derive(Debug, Clone)]
pub struct StageObjects {
    pub pod: Pod,
    /// The Secret holding the stage's secret env values, if it has any. Its owner
    /// reference is filled in once the pod exists (its uid is needed).
    pub secret: Option<Secret>,
}

/// Builds the pod (named `name`) and the Secret for `spec`.
pub fn stage_objects(
    spec: &StageSpec,
    name: &str,
    options: &KubernetesOptions,
) -> Result<StageObjects> {
    // An image stage has no steps: its pod only holds the workspace for the builder.
    let image = match (&spec.image, spec.steps.is_empty()) {
        (Some(image), _) => image.clone(),
        (None, true) => options.helper_image.clone(),
        (None, false) => {
            return Err(Error::InvalidSpec(format!(
                "stage `{}` has no image; the kubernetes backend runs steps in containers",
                spec.id
            )));
        }
    };
    let run_as = run_as(spec, options)?;
    let workdir = workdir(spec)?;
    let labels = names::labels(&options.runner_name, &spec.id, &spec.labels);
    let step_names: Vec<&str> = spec.steps.iter().map(|s| s.name.as_str()).collect();
    let annotations = BTreeMap::from([
        (names::STAGE_ANNOTATION.to_owned(), spec.id.clone()),
        (
            names::STEPS_ANNOTATION.to_owned(),
            serde_json::to_string(&step_names).unwrap_or_default(),
        ),
    ]);

    let mut secret_data = BTreeMap::new();
    let mut env_of = |container: &str, env: BTreeMap<String, String>| -> Vec<EnvVar> {
        env.into_iter()
            .enumerate()
            .map(|(i, (k, v))| {
                let holds_secret = spec
                    .secrets
                    .iter()
                    .any(|s| !s.is_empty() && v.contains(s.as_str()));
                if holds_secret {
                    let key = names::secret_key(container, i, &k);
                    secret_data.insert(key.clone(), v);
                    EnvVar {
                        name: k,
                        value_from: Some(EnvVarSource {
                            secret_key_ref: Some(SecretKeySelector {
                                name: name.to_owned(),
                                key,
                                optional: Some(false),
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }
                } else {
                    EnvVar {
                        name: k,
                        value: Some(v),
                        ..Default::default()
                    }
                }
            })
            .collect()
    };

    let control_ro = VolumeMount {
        name: "control".into(),
        mount_path: CONTROL.into(),
        read_only: Some(true),
        ..Default::default()
    };
    let workspace_mount = VolumeMount {
        name: "workspace".into(),
        mount_path: WORKSPACE.into(),
        ..Default::default()
    };
    let step_resources = with_disk(
        resources(
            &cpu_quantity(spec.container.cpu_millis.unwrap_or(options.cpu_millis)),
            &memory_quantity(spec.container.memory_bytes.unwrap_or(options.memory_bytes)),
        ),
        LAYER_DISK,
    );
    let disk = spec.container.disk_bytes.unwrap_or(options.disk_bytes);

    let mut init = vec![Container {
        name: SOURCE_CONTAINER.into(),
        image: Some(options.helper_image.clone()),
        command: Some(vec![
            "sh".into(),
            "-c".into(),
            format!("until [ -e {READY_MARKER} ]; do sleep 0.2; done"),
        ]),
        working_dir: Some(WORKSPACE.into()),
        volume_mounts: Some(vec![
            workspace_mount.clone(),
            VolumeMount {
                name: "control".into(),
                mount_path: CONTROL.into(),
                ..Default::default()
            },
        ]),
        resources: Some(with_disk(helper_resources(), HELPER_DISK)),
        security_context: Some(container_security()),
        ..Default::default()
    }];
    for (i, service) in spec.services.iter().enumerate() {
        let container = names::service_container(i, &service.name);
        init.push(Container {
            env: Some(env_of(&container, service.env.clone())),
            name: container,
            image: Some(service.image.clone()),
            // `command` replaces the image's CMD (its arguments), as on Docker.
            args: service.command.clone(),
            restart_policy: Some("Always".into()),
            startup_probe: service
                .ready
                .as_ref()
                .map(|command| ready_probe(command, options.service_timeout)),
            resources: Some(with_disk(
                resources(
                    &cpu_quantity(options.service_cpu_millis),
                    &memory_quantity(options.service_memory_bytes),
                ),
                LAYER_DISK,
            )),
            security_context: Some(container_security()),
            ..Default::default()
        });
    }
    for (i, step) in spec.steps.iter().enumerate() {
        let container = names::step_container(i);
        init.push(Container {
            env: Some(env_of(&container, step_env(spec, step))),
            name: container,
            image: Some(image.clone()),
            command: Some(vec!["sh".into(), "-e".into(), script_path(i)]),
            working_dir: Some(workdir.clone()),
            volume_mounts: Some(vec![workspace_mount.clone(), control_ro.clone()]),
            resources: Some(step_resources.clone()),
            security_context: Some(container_security()),
            ..Default::default()
        });
    }
    let keeper = Container {
        name: WORKSPACE_CONTAINER.into(),
        image: Some(options.helper_image.clone()),
        // Idles until the pod is deleted; exits at once on SIGTERM.
        command: Some(vec![
            "sh".into(),
            "-c".into(),
            "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done".into(),
        ]),
        working_dir: Some(WORKSPACE.into()),
        volume_mounts: Some(vec![workspace_mount]),
        resources: Some(with_disk(helper_resources(), disk + LAYER_DISK)),
        security_context: Some(container_security()),
        ..Default::default()
    };

    let deadline = spec
        .timeout
        .map(|t| t + DEADLINE_MARGIN)
        .unwrap_or(options.max_stage_duration);
    let service_names: Vec<String> = spec.services.iter().map(|s| s.name.clone()).collect();
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(options.namespace.clone()),
            labels: Some(labels.clone()),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            active_deadline_seconds: Some(deadline.as_secs().max(1) as i64),
            termination_grace_period_seconds: Some(options.kill_grace.as_secs().max(1) as i64),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            service_account_name: spec.pod.service_account.clone(),
            node_selector: (!spec.pod.node_selector.is_empty())
                .then(|| spec.pod.node_selector.clone()),
            tolerations: tolerations(spec, options),
            image_pull_secrets: (!options.image_pull_secrets.is_empty()).then(|| {
                options
                    .image_pull_secrets
                    .iter()
                    .map(|s| LocalObjectReference { name: s.clone() })
                    .collect()
            }),
            host_aliases: (!service_names.is_empty()).then(|| {
                vec![HostAlias {
                    ip: "127.0.0.1".into(),
                    hostnames: Some(service_names),
                }]
            }),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(run_as.uid),
                run_as_group: Some(run_as.gid),
                fs_group: Some(run_as.gid),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            volumes: Some(vec![
                Volume {
                    name: "workspace".into(),
                    empty_dir: Some(EmptyDirVolumeSource {
                        size_limit: Some(Quantity(memory_quantity(disk))),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                Volume {
                    name: "control".into(),
                    empty_dir: Some(EmptyDirVolumeSource {
                        size_limit: Some(Quantity(CONTROL_DISK.into())),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ]),
            init_containers: Some(init),
            containers: vec![keeper],
            ..Default::default()
        }),
        status: None,
    };

    if let Some(data) = &spec.adoption {
        secret_data.insert(ADOPTION_KEY.to_owned(), data.clone());
    }
    let secret = (!secret_data.is_empty()).then(|| Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(options.namespace.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        string_data: Some(secret_data),
        immutable: Some(true),
        ..Default::default()
    });
    Ok(StageObjects { pod, secret })
}

/// The owner reference that makes the Secret go with the pod. No
/// `blockOwnerDeletion`: setting it needs `update` on the pod's finalizers, a
/// permission the runner's Role does not have and the Secret does not need.
pub fn owned_by_pod(name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: name.to_owned(),
        uid: uid.to_owned(),
        controller: Some(true),
        block_owner_deletion: None,
    }
}

/// Where step `index`'s script is in the pod.
pub fn script_path(index: usize) -> String {
    format!("{CONTROL}/steps/{index}.sh")
}

fn step_env(spec: &StageSpec, step: &StepSpec) -> BTreeMap<String, String> {
    let mut env = spec.env.clone();
    env.extend(step.env.clone());
    env
}

/// Resources of a helper container (`source`, `workspace`).
pub fn helper_resources() -> ResourceRequirements {
    resources(HELPER_CPU, HELPER_MEMORY)
}

/// Requested and limited resources of `cpu_millis` thousandths and `memory_bytes`.
pub fn resources_of(cpu_millis: u64, memory_bytes: u64) -> ResourceRequirements {
    resources(&cpu_quantity(cpu_millis), &memory_quantity(memory_bytes))
}

/// A container's part of the `restricted` profile (the pod sets the rest).
pub fn restricted_container() -> SecurityContext {
    container_security()
}

fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A service's `ready:` command as its startup probe: run every second until it exits
/// 0, for at most `within` (then the kubelet kills and restarts the service, which
/// the backend reports as the service failing).
fn ready_probe(command: &str, within: Duration) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(vec!["sh".into(), "-c".into(), command.to_owned()]),
        }),
        period_seconds: Some(1),
        timeout_seconds: Some(10),
        success_threshold: Some(1),
        failure_threshold: Some(within.as_secs().clamp(1, i32::MAX as u64) as i32),
        ..Default::default()
    }
}

/// Requests = limits: the pod is scheduled for what it may use, and never
/// overcommits a node it shares with other builds.
fn resources(cpu: &str, memory: &str) -> ResourceRequirements {
    let both = BTreeMap::from([
        ("cpu".to_owned(), Quantity(cpu.to_owned())),
        ("memory".to_owned(), Quantity(memory.to_owned())),
    ]);
    ResourceRequirements {
        limits: Some(both.clone()),
        requests: Some(both),
        ..Default::default()
    }
}

/// `r` with `bytes` of `ephemeral-storage`, requested and limited alike.
fn with_disk(mut r: ResourceRequirements, bytes: u64) -> ResourceRequirements {
    for map in [r.limits.as_mut(), r.requests.as_mut()]
        .into_iter()
        .flatten()
    {
        map.insert(
            "ephemeral-storage".to_owned(),
            Quantity(memory_quantity(bytes)),
        );
    }
    r
}

fn cpu_quantity(millis: u64) -> String {
    format!("{}m", millis.max(1))
}

fn memory_quantity(bytes: u64) -> String {
    const MI: u64 = 1024 * 1024;
    if bytes.is_multiple_of(MI) {
        format!("{}Mi", bytes / MI)
    } else {
        bytes.to_string()
    }
}

/// The stage's own tolerations, and those that bound how long it waits for a node
/// that stopped reporting ([`super::node_loss`]).
fn tolerations(spec: &StageSpec, options: &KubernetesOptions) -> Option<Vec<Toleration>> {
    let mut all: Vec<Toleration> = spec
        .pod
        .tolerations
        .iter()
        .map(|t| Toleration {
            key: t.key.clone(),
            operator: t.operator.clone(),
            value: t.value.clone(),
            effect: t.effect.clone(),
            toleration_seconds: t.toleration_seconds,
        })
        .collect();
    let node_lost = super::node_loss::tolerations(&all, options.node_lost_timeout);
    all.extend(node_lost);
    (!all.is_empty()).then_some(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::StageSpec;

    fn options() -> KubernetesOptions {
        KubernetesOptions::new("runner-a", "builds")
    }

    #[test]
    fn users_must_be_numeric_and_not_root() {
        let with = |u: &str| {
            let mut s = StageSpec::new("a");
            s.container.user = Some(u.into());
            run_as(&s, &options())
        };
        assert_eq!(
            with("1001").unwrap(),
            RunAs {
                uid: 1001,
                gid: 1001
            }
        );
        assert_eq!(with("1001:50").unwrap(), RunAs { uid: 1001, gid: 50 });
        for bad in ["root", "0", "0:0", "app", "1:x", "-1"] {
            let e = with(bad).unwrap_err().to_string();
            assert!(e.contains("numeric, non-root"), "{bad}: {e}");
        }
        assert_eq!(
            run_as(&StageSpec::new("a"), &options()).unwrap(),
            options().run_as
        );
    }

    #[test]
    fn quantities() {
        assert_eq!(memory_quantity(512 * 1024 * 1024), "512Mi");
        assert_eq!(memory_quantity(1_000_000), "1000000");
        assert_eq!(cpu_quantity(1500), "1500m");
    }

    #[test]
    fn a_stage_without_image_or_with_an_escaping_workdir_is_refused() {
        let mut no_image = StageSpec::new("a");
        no_image.steps = vec![StepSpec::new("s", "true")];
        let e = stage_objects(&no_image, "p", &options()).unwrap_err();
        assert!(e.to_string().contains("has no image"), "{e}");
        let mut s = StageSpec::new("a");
        s.image = Some("busybox".into());
        s.container.workdir = Some("../etc".into());
        assert!(stage_objects(&s, "p", &options()).is_err());
    }

    #[test]
    fn the_stage_disk_limits_the_workspace_and_is_requested() {
        let storage = |c: &Container| {
            let r = c.resources.as_ref().unwrap();
            let req = r.requests.as_ref().unwrap()["ephemeral-storage"].0.clone();
            assert_eq!(
                Some(&Quantity(req.clone())),
                r.limits.as_ref().unwrap().get("ephemeral-storage")
            );
            req
        };
        let mut s = StageSpec::new("a");
        s.image = Some("busybox".into());
        s.steps = vec![StepSpec::new("s", "true")];
        for (disk, limit, keeper) in [
            (None, "10240Mi", "11264Mi"),
            (Some(20u64 << 30), "20480Mi", "21504Mi"),
        ] {
            s.container.disk_bytes = disk;
            let pod = stage_objects(&s, "p", &options()).unwrap().pod;
            let spec = pod.spec.unwrap();
            let workspace = spec
                .volumes
                .as_ref()
                .unwrap()
                .iter()
                .find(|v| v.name == "workspace")
                .unwrap();
            assert_eq!(
                workspace.empty_dir.as_ref().unwrap().size_limit,
                Some(Quantity(limit.into()))
            );
            assert_eq!(storage(&spec.containers[0]), keeper);
            let inits = spec.init_containers.unwrap();
            assert_eq!(storage(&inits[0]), "64Mi");
            assert_eq!(storage(inits.last().unwrap()), "1024Mi");
        }
    }
}
