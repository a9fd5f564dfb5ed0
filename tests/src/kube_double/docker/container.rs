//! A Kubernetes container as a Docker container: env from secrets, user and
//! non-root check, mounts, limits, security options; or why it must wait.

use std::collections::{BTreeMap, HashMap};

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType};
use k8s_openapi::api::core::v1::{Container, Pod, Secret};

use super::PodNames;
use crate::kube_double::quantity;
use crate::kube_double::store::Store;

/// Why a container cannot be created yet: the waiting reason and message the
/// kubelet would report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub reason: &'static str,
    pub message: String,
}

/// Whether `image` is on the engine (the double never pulls), with its user.
pub async fn image_user(docker: &Docker, image: &str) -> Result<Option<String>, DockerError> {
    let inspect = docker.inspect_image(image).await?;
    Ok(inspect
        .config
        .and_then(|c| c.user)
        .filter(|u| !u.is_empty()))
}

/// Builds the Docker container for a Kubernetes container: everything resolved
/// (env from secrets, user, limits, mounts). `Err` is a reason to wait.
pub fn container_body(
    pod: &Pod,
    c: &Container,
    image_user: Option<&str>,
    store: &Store,
    names: &PodNames,
    labels: &HashMap<String, String>,
    termination_file: Option<&std::path::Path>,
) -> Result<ContainerCreateBody, Waiting> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let spec = pod.spec.as_ref().expect("validated pods have a spec");
    let config_error = |message: String| Waiting {
        reason: "CreateContainerConfigError",
        message,
    };
    let secret = |name: &str| store.get::<Secret>(ns, name);

    // envFrom first, then env: explicit variables win, as in the kubelet.
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        env.retain(|(ek, _)| *ek != k);
        env.push((k, v));
    };
    for from in c.env_from.iter().flatten() {
        let Some(r) = &from.secret_ref else { continue };
        match secret(&r.name) {
            Some(s) => {
                for (k, v) in s.data.unwrap_or_default() {
                    let k = format!("{}{k}", from.prefix.as_deref().unwrap_or_default());
                    set(&mut env, k, String::from_utf8_lossy(&v.0).into_owned());
                }
            }
            None if r.optional == Some(true) => {}
            None => return Err(config_error(format!("secret {:?} not found", r.name))),
        }
    }
    for e in c.env.iter().flatten() {
        let value = match e
            .value_from
            .as_ref()
            .and_then(|f| f.secret_key_ref.as_ref())
        {
            None => e.value.clone().unwrap_or_default(),
            Some(r) => {
                let optional = r.optional == Some(true);
                match secret(&r.name) {
                    None if optional => continue,
                    None => return Err(config_error(format!("secret {:?} not found", r.name))),
                    Some(s) => match s.data.as_ref().and_then(|d| d.get(&r.key)) {
                        Some(v) => String::from_utf8_lossy(&v.0).into_owned(),
                        None if optional => continue,
                        None => {
                            return Err(config_error(format!(
                                "couldn't find key {} in Secret {ns}/{}",
                                r.key, r.name
                            )));
                        }
                    },
                }
            }
        };
        set(&mut env, e.name.clone(), value);
    }

    // User: container securityContext over the pod's, then the image's.
    let pod_sc = spec.security_context.as_ref();
    let sc = c.security_context.as_ref();
    let uid = sc
        .and_then(|s| s.run_as_user)
        .or(pod_sc.and_then(|s| s.run_as_user));
    let gid = sc
        .and_then(|s| s.run_as_group)
        .or(pod_sc.and_then(|s| s.run_as_group));
    let non_root = sc
        .and_then(|s| s.run_as_non_root)
        .or(pod_sc.and_then(|s| s.run_as_non_root))
        == Some(true);
    let image_uid = image_user.map(|u| u.split(':').next().unwrap_or_default());
    if non_root {
        match (uid, image_uid) {
            (Some(0), _) => {
                return Err(config_error(
                    "container's runAsUser breaks non-root policy".into(),
                ));
            }
            (Some(_), _) => {}
            (None, None) | (None, Some("0")) | (None, Some("root")) => {
                return Err(config_error(
                    "container has runAsNonRoot and image will run as root".into(),
                ));
            }
            (None, Some(u)) if u.parse::<u32>().is_err() => {
                return Err(config_error(format!(
                    "container has runAsNonRoot and image has non-numeric user ({u}), cannot verify user is non-root"
                )));
            }
            (None, Some(_)) => {}
        }
    }
    let user = match (uid, gid) {
        (Some(u), Some(g)) => Some(format!("{u}:{g}")),
        (Some(u), None) => Some(u.to_string()),
        (None, Some(g)) => Some(format!("{}:{g}", image_uid.unwrap_or("0"))),
        (None, None) => None,
    };
    let mut groups: Vec<String> = pod_sc
        .and_then(|s| s.supplemental_groups.clone())
        .unwrap_or_default()
        .iter()
        .map(i64::to_string)
        .collect();
    if let Some(fs) = pod_sc.and_then(|s| s.fs_group) {
        groups.push(fs.to_string());
    }

    let secret_volumes: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.secret.is_some())
        .map(|v| v.name.as_str())
        .collect();
    let mut mounts: Vec<Mount> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| Mount {
            typ: Some(MountType::VOLUME),
            source: Some(names.volume(&m.name)),
            target: Some(m.mount_path.clone()),
            read_only: Some(m.read_only == Some(true) || secret_volumes.contains(&m.name.as_str())),
            // No copy-up: an empty volume mounted over an image directory (or the
            // working directory the engine creates) would otherwise take that
            // directory's owner and mode, where a kubelet's emptyDir stays 0777.
            volume_options: Some(bollard::models::MountVolumeOptions {
                no_copy: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    if let Some(file) = termination_file {
        mounts.push(Mount {
            typ: Some(MountType::BIND),
            source: Some(file.to_string_lossy().into_owned()),
            target: Some(
                c.termination_message_path
                    .clone()
                    .unwrap_or_else(|| "/dev/termination-log".into()),
            ),
            ..Default::default()
        });
    }

    let limits: BTreeMap<String, String> = c
        .resources
        .as_ref()
        .and_then(|r| r.limits.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|(k, q)| (k, q.0))
        .collect();
    let memory = limits.get("memory").and_then(|q| quantity::memory_bytes(q));
    let nano_cpus = limits.get("cpu").and_then(|q| quantity::nano_cpus(q));
    let caps = sc.and_then(|s| s.capabilities.as_ref());

    Ok(ContainerCreateBody {
        image: c.image.clone(),
        // Kubernetes `command` replaces the image's ENTRYPOINT and `args` its CMD;
        // Docker's create API has the same rule (a given Entrypoint drops the
        // image's Cmd).
        entrypoint: c.command.clone(),
        cmd: c.args.clone(),
        working_dir: c.working_dir.clone(),
        env: Some(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()),
        user,
        labels: Some(labels.clone()),
        tty: Some(c.tty == Some(true)),
        host_config: Some(HostConfig {
            network_mode: Some(format!("container:{}", names.sandbox())),
            mounts: Some(mounts),
            memory,
            // No swap on top of the limit: over the limit is OOMKilled, as in a pod.
            memory_swap: memory,
            nano_cpus,
            cap_add: caps.and_then(|c| c.add.clone()),
            cap_drop: caps.and_then(|c| c.drop.clone()),
            security_opt: Some(security_opt(spec, sc)).filter(|o| !o.is_empty()),
            readonly_rootfs: sc.and_then(|s| s.read_only_root_filesystem),
            group_add: (!groups.is_empty()).then_some(groups),
            // The pod log API reads the engine's copy of the output; the `local`
            // driver keeps bytes as written (json-file would replace invalid
            // UTF-8), as the kubelet's CRI log files do.
            log_config: Some(HostConfigLogConfig {
                typ: Some("local".into()),
                config: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Engine security options for a container: no-new-privileges for
/// `allowPrivilegeEscalation: false`; `Unconfined` seccomp and AppArmor profiles
/// (container level, else pod level) lift the engine's default profiles, as an
/// image builder's pod asks. `RuntimeDefault` keeps them; `Localhost` is refused at
/// validation.
fn security_opt(
    spec: &k8s_openapi::api::core::v1::PodSpec,
    sc: Option<&k8s_openapi::api::core::v1::SecurityContext>,
) -> Vec<String> {
    let pod = spec.security_context.as_ref();
    let mut opts = Vec::new();
    if sc.and_then(|s| s.allow_privilege_escalation) == Some(false) {
        opts.push("no-new-privileges".into());
    }
    let seccomp = sc
        .and_then(|s| s.seccomp_profile.as_ref())
        .or_else(|| pod.and_then(|p| p.seccomp_profile.as_ref()));
    if seccomp.is_some_and(|p| p.type_ == "Unconfined") {
        opts.push("seccomp=unconfined".into());
    }
    let apparmor = sc
        .and_then(|s| s.app_armor_profile.as_ref())
        .or_else(|| pod.and_then(|p| p.app_armor_profile.as_ref()));
    if apparmor.is_some_and(|p| p.type_ == "Unconfined") {
        opts.push("apparmor=unconfined".into());
    }
    opts
}
