//! A pod's sandbox: its volumes, and a container holding its network namespace and
//! /etc/hosts; secret volume files written through it.

use std::collections::HashMap;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType, VolumeCreateRequest};
use bollard::query_parameters::CreateContainerOptionsBuilder;
use k8s_openapi::api::core::v1::{Pod, PodSpec, Secret};

use super::{PodNames, message};
use crate::kube_double::store::Store;

/// Where the sandbox container mounts every pod volume (to set emptyDir permissions
/// and write secret volume files).
const SANDBOX_VOLUMES: &str = "/kube-double/volumes";

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
