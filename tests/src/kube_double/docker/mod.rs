//! What the double does on the Docker engine: names and labels of the objects it
//! creates for a pod, the mapping of a Kubernetes container onto a Docker container,
//! and removal by label (so cleanup needs no memory of what was created).

use std::collections::{BTreeMap, HashMap};

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, ListVolumesOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder,
};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Secret};

use super::quantity;
use super::store::Store;

/// Label on every Docker object of one double instance (value: the instance id).
pub const INSTANCE_LABEL: &str = "io.slipway.kube-double";
/// Label naming the pod uid an object belongs to.
pub const POD_UID_LABEL: &str = "io.slipway.kube-double.pod-uid";
/// Label with `namespace/name` of the pod, for people reading `docker ps`.
pub const POD_LABEL: &str = "io.slipway.kube-double.pod";

/// Where the sandbox container mounts every pod volume (to set emptyDir permissions
/// and write secret volume files).
const SANDBOX_VOLUMES: &str = "/kube-double/volumes";

/// Names of one pod's Docker objects. Kubernetes names are DNS labels, so `_`
/// cannot clash with a container or volume named by the pod.
#[derive(Debug, Clone)]
pub struct PodNames {
    prefix: String,
}

impl PodNames {
    pub fn new(instance: &str, uid: &str) -> PodNames {
        PodNames {
            prefix: format!("kd-{instance}-{uid}"),
        }
    }
    pub fn sandbox(&self) -> String {
        format!("{}_sandbox", self.prefix)
    }
    pub fn container(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }
    pub fn volume(&self, name: &str) -> String {
        format!("{}_{name}", self.prefix)
    }
}

pub fn labels(instance: &str, pod: &Pod) -> HashMap<String, String> {
    HashMap::from([
        (INSTANCE_LABEL.to_owned(), instance.to_owned()),
        (
            POD_UID_LABEL.to_owned(),
            pod.metadata.uid.clone().unwrap_or_default(),
        ),
        (
            POD_LABEL.to_owned(),
            format!(
                "{}/{}",
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.name.as_deref().unwrap_or_default()
            ),
        ),
    ])
}

/// The engine's own message when it sent one.
pub fn message(e: &DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

pub fn is_not_found(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Creates the pod's volumes: emptyDir and secret volumes alike are local Docker
/// volumes (secret files are written into them through the sandbox).
pub async fn create_volumes(
    docker: &Docker,
    names: &PodNames,
    spec: &PodSpec,
    labels: &HashMap<String, String>,
) -> Result<(), DockerError> {
    for v in spec.volumes.iter().flatten() {
        docker
            .create_volume(VolumeCreateRequest {
                name: Some(names.volume(&v.name)),
                driver: Some("local".into()),
                labels: Some(labels.clone()),
                ..Default::default()
            })
            .await?;
    }
    Ok(())
}

/// How the pod's containers are networked: every container joins the sandbox's
/// network namespace, so sidecars are reachable over `localhost`, as in a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PodNetwork {
    /// The sandbox is on Docker's default bridge, with `host.docker.internal`
    /// resolving to the host (to reach a server listening on the bridge gateway or
    /// on 0.0.0.0).
    #[default]
    Bridge,
    /// The sandbox shares the host's network namespace: the pod reaches services on
    /// the host's 127.0.0.1, but pods share ports with each other and the host.
    Host,
}

/// Creates and starts the sandbox: a container that only sleeps and holds the
/// pod's network namespace and volumes; then opens emptyDir volumes to everyone
/// (0777, as the kubelet creates them) so non-root containers can write.
pub async fn start_sandbox(
    docker: &Docker,
    names: &PodNames,
    image: &str,
    pod: &Pod,
    network: PodNetwork,
    labels: &HashMap<String, String>,
) -> Result<(), DockerError> {
    let spec = pod.spec.as_ref().expect("validated pods have a spec");
    let mounts = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| Mount {
            typ: Some(MountType::VOLUME),
            source: Some(names.volume(&v.name)),
            target: Some(format!("{SANDBOX_VOLUMES}/{}", v.name)),
            ..Default::default()
        })
        .collect();
    let hostname = spec
        .hostname
        .clone()
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    let mut hostname: String = hostname.chars().take(63).collect();
    hostname = hostname.trim_end_matches(['-', '.']).to_owned();
    let body = ContainerCreateBody {
        image: Some(image.to_owned()),
        entrypoint: Some(vec!["sleep".into(), "2147483647".into()]),
        cmd: Some(vec![]),
        user: Some("0:0".into()),
        hostname: (network == PodNetwork::Bridge).then_some(hostname),
        labels: Some(labels.clone()),
        host_config: Some(HostConfig {
            mounts: Some(mounts),
            network_mode: Some(
                match network {
                    PodNetwork::Bridge => "bridge",
                    PodNetwork::Host => "host",
                }
                .into(),
            ),
            extra_hosts: Some(extra_hosts(spec, network)),
            ..Default::default()
        }),
        ..Default::default()
    };
    let opts = CreateContainerOptionsBuilder::new()
        .name(&names.sandbox())
        .build();
    docker.create_container(Some(opts), body).await?;
    docker.start_container(&names.sandbox(), None).await?;
    let empty_dirs: Vec<String> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.empty_dir.is_some())
        .map(|v| format!("{SANDBOX_VOLUMES}/{}", v.name))
        .collect();
    if !empty_dirs.is_empty() {
        let mut cmd = vec!["chmod".to_owned(), "0777".to_owned()];
        cmd.extend(empty_dirs);
        exec(docker, &names.sandbox(), cmd).await?;
    }
    Ok(())
}

/// `/etc/hosts` entries of the sandbox (shared by the pod's containers): the
/// pod's `hostAliases`, and `host.docker.internal` on the bridge network.
fn extra_hosts(spec: &k8s_openapi::api::core::v1::PodSpec, network: PodNetwork) -> Vec<String> {
    let mut hosts: Vec<String> = spec
        .host_aliases
        .iter()
        .flatten()
        .flat_map(|a| {
            a.hostnames
                .iter()
                .flatten()
                .map(move |h| format!("{h}:{}", a.ip))
        })
        .collect();
    if network == PodNetwork::Bridge {
        hosts.push("host.docker.internal:host-gateway".into());
    }
    hosts
}

/// Runs a command in a running container and fails unless it exits 0.
async fn exec(docker: &Docker, container: &str, cmd: Vec<String>) -> Result<(), DockerError> {
    use bollard::exec::{CreateExecOptions, StartExecResults};
    use futures::StreamExt;
    let created = docker
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(cmd.clone()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await?;
    let mut output = String::new();
    if let StartExecResults::Attached {
        output: mut out, ..
    } = docker.start_exec(&created.id, None).await?
    {
        while let Some(chunk) = out.next().await {
            output.push_str(&chunk?.to_string());
        }
    }
    let inspect = docker.inspect_exec(&created.id).await?;
    match inspect.exit_code {
        Some(0) => Ok(()),
        code => Err(DockerError::DockerResponseServerError {
            status_code: 500,
            message: format!("{cmd:?} in the pod sandbox exited with {code:?}: {output}"),
        }),
    }
}

/// Writes a secret volume's files (every key, or the listed `items`) into its
/// volume through the sandbox. `Err(message)` when the secret or a key is missing:
/// the pod then waits, as the kubelet does for a volume it cannot mount.
pub async fn fill_secret_volumes(
    docker: &Docker,
    names: &PodNames,
    store: &Store,
    pod: &Pod,
) -> Result<(), String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let spec = pod.spec.as_ref().expect("validated pods have a spec");
    for v in spec.volumes.iter().flatten() {
        let Some(source) = &v.secret else { continue };
        let secret_name = source.secret_name.as_deref().unwrap_or_default();
        let Some(secret) = store.get::<Secret>(ns, secret_name) else {
            if source.optional == Some(true) {
                continue;
            }
            return Err(format!(
                "MountVolume.SetUp failed for volume {:?} : secret {secret_name:?} not found",
                v.name
            ));
        };
        let data = secret.data.unwrap_or_default();
        let mode = source.default_mode.unwrap_or(0o644) as u32;
        let mut files: Vec<(String, Vec<u8>, u32)> = Vec::new();
        match &source.items {
            None => {
                for (k, val) in &data {
                    files.push((k.clone(), val.0.clone(), mode));
                }
            }
            Some(items) => {
                for item in items {
                    let Some(val) = data.get(&item.key) else {
                        return Err(format!(
                            "MountVolume.SetUp failed for volume {:?} : couldn't find key {} in Secret {ns}/{secret_name}",
                            v.name, item.key
                        ));
                    };
                    let m = item.mode.map(|m| m as u32).unwrap_or(mode);
                    files.push((item.path.clone(), val.0.clone(), m));
                }
            }
        }
        let tar = tar_files(&files).map_err(|e| format!("secret volume {:?}: {e}", v.name))?;
        let opts = bollard::query_parameters::UploadToContainerOptionsBuilder::new()
            .path(&format!("{SANDBOX_VOLUMES}/{}", v.name))
            .build();
        docker
            .upload_to_container(&names.sandbox(), Some(opts), bollard::body_full(tar.into()))
            .await
            .map_err(|e| format!("secret volume {:?}: {}", v.name, message(&e)))?;
    }
    Ok(())
}

fn tar_files(files: &[(String, Vec<u8>, u32)]) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(*mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, path, data.as_slice())?;
    }
    builder.into_inner()
}

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

/// What [`remove_labelled`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Removed {
    pub containers: usize,
    pub volumes: usize,
    pub errors: Vec<String>,
}

/// Force-removes every container, then every volume, labelled `key=value`. Keeps
/// going after a failure and reports it.
pub async fn remove_labelled(docker: &Docker, key: &str, value: &str) -> Removed {
    let filter = HashMap::from([("label".to_owned(), vec![format!("{key}={value}")])]);
    let mut removed = Removed::default();
    match docker
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filter)
                .build(),
        ))
        .await
    {
        Ok(list) => {
            for id in list.into_iter().filter_map(|c| c.id) {
                let opts = RemoveContainerOptionsBuilder::new().force(true).build();
                match docker.remove_container(&id, Some(opts)).await {
                    Ok(()) => removed.containers += 1,
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => removed
                        .errors
                        .push(format!("container {id}: {}", message(&e))),
                }
            }
        }
        Err(e) => removed
            .errors
            .push(format!("listing containers: {}", message(&e))),
    }
    match docker
        .list_volumes(Some(
            ListVolumesOptionsBuilder::new().filters(&filter).build(),
        ))
        .await
    {
        Ok(list) => {
            for v in list.volumes.unwrap_or_default() {
                // A container removal still finishing keeps the volume busy briefly:
                // bounded retries.
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let opts = RemoveVolumeOptionsBuilder::new().force(true).build();
                    match docker.remove_volume(&v.name, Some(opts)).await {
                        Ok(()) => {
                            removed.volumes += 1;
                            break;
                        }
                        Err(e) if is_not_found(&e) => break,
                        Err(DockerError::DockerResponseServerError {
                            status_code: 409, ..
                        }) if attempt < 20 => {
                            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                        }
                        Err(e) => {
                            removed
                                .errors
                                .push(format!("volume {}: {}", v.name, message(&e)));
                            break;
                        }
                    }
                }
            }
        }
        Err(e) => removed
            .errors
            .push(format!("listing volumes: {}", message(&e))),
    }
    removed
}
