//! The builder pod of a `kind: image` stage, as typed core/v1 objects. Pure, like
//! [`super::pod`], so golden tests pin what is sent.
//!
//! An image build runs the Dockerfile's `RUN` instructions, which needs a sandbox of
//! its own inside the pod. Rootless buildah makes one with a user namespace and
//! `chroot`: the process runs as a non-root uid with every capability dropped except
//! SETUID/SETGID (which `newuidmap`/`newgidmap` carry as file capabilities, so
//! privilege escalation must be allowed), and needs the `Unconfined` seccomp and
//! AppArmor profiles, because the runtime's default profiles refuse `unshare` of a
//! user namespace. That is below the `restricted` (and `baseline`) Pod Security
//! level of the build namespace, so builder pods go to a namespace of their own,
//! labelled `privileged`, where nothing but builder pods runs: no user script runs
//! there outside the build sandbox, and the pod never sees a forge credential.
//!
//! Layout (`restartPolicy: Never`): init container `source` (helper image,
//! restricted) waits while the runner copies the build context (and the Dockerfile)
//! from the stage's pod into `/slipway/workspace`; container `build` (the builder
//! image) runs `buildah bud` and, for a push, `buildah push` with the registry
//! credentials from a `kubernetes.io/dockerconfigjson` Secret owned by the pod. The
//! image id and the pushed manifest digest come back as the container's termination
//! message (`<id> <digest>`), as Tekton returns step results.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    AppArmorProfile, Capabilities, Container, EmptyDirVolumeSource, EnvVar, KeyToPath,
    LocalObjectReference, Pod, PodSecurityContext, PodSpec, SeccompProfile, Secret,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::pod::{self, RunAs};
use super::{BuilderOptions, KubernetesOptions, names};
use crate::error::{Error, Result};
use crate::image_build::Reference;
use crate::spec::ImageSpec;

/// Where the copied workspace subset (context and Dockerfile) is in the pod.
pub const WORKSPACE: &str = "/slipway/workspace";
/// The runner touches this once the context is in.
pub const READY_MARKER: &str = "/slipway/control/context-ready";
/// Exit codes of the build script: the build failed, the push failed.
pub const BUILD_FAILED: i32 = 70;
pub const PUSH_FAILED: i32 = 71;
/// The builder container.
pub const BUILD_CONTAINER: &str = "build";

const AUTH_KEY: &str = ".dockerconfigjson";
const AUTH_DIR: &str = "/slipway/auth";
const STORAGE: &str = "/slipway/storage";

/// Runs `buildah bud "$@"`, then pushes `$SLIPWAY_PUSH` when set, and leaves
/// `<image id> <digest>` as the termination message. Arguments come as argv, never
/// through the shell's parser.
const SCRIPT: &str = r#"set -u
export XDG_RUNTIME_DIR=/tmp/slipway-run
mkdir -p "$XDG_RUNTIME_DIR"
buildah --root /slipway/storage --runroot "$XDG_RUNTIME_DIR/storage" bud --iidfile /tmp/slipway-iid "$@" || exit 70
digest=
if [ -n "${SLIPWAY_PUSH:-}" ]; then
  buildah --root /slipway/storage --runroot "$XDG_RUNTIME_DIR/storage" push --tls-verify="$SLIPWAY_TLS_VERIFY" \
    --digestfile /tmp/slipway-digest "$SLIPWAY_PUSH" || exit 71
  digest=$(cat /tmp/slipway-digest)
fi
printf '%s %s' "$(cat /tmp/slipway-iid)" "$digest" > /dev/termination-log
"#;

/// The builder pod and, for a push with credentials, its registry Secret (its owner
/// reference is set once the pod exists). `paths` are the context and Dockerfile
/// relative to the workspace, as copied in; `labels` identify the stage.
pub fn builder_objects(
    image: &ImageSpec,
    name: &str,
    paths: &BuildPaths,
    labels: BTreeMap<String, String>,
    options: &KubernetesOptions,
    builder: &BuilderOptions,
) -> Result<(Pod, Option<Secret>)> {
    let reference = image.push.as_deref().map(Reference::parse).transpose()?;
    let insecure = reference
        .as_ref()
        .is_some_and(|r| builder.insecure_registries.contains(&r.registry));

    let mut args = vec![
        "--format".to_owned(),
        "docker".to_owned(),
        format!("--tls-verify={}", !insecure),
        "-f".to_owned(),
        format!("{WORKSPACE}/{}", paths.dockerfile),
    ];
    if let Some(target) = &image.target {
        args.extend(["--target".to_owned(), target.clone()]);
    }
    for (k, v) in &image.build_args {
        args.extend(["--build-arg".to_owned(), format!("{k}={v}")]);
    }
    for (k, v) in &image.labels {
        args.extend(["--label".to_owned(), format!("{k}={v}")]);
    }
    if let Some(r) = &reference {
        args.extend(["-t".to_owned(), r.full()]);
    }
    args.push(format!("{WORKSPACE}/{}", paths.context));

    let mut env = vec![
        env("BUILDAH_ISOLATION", "chroot"),
        env("STORAGE_DRIVER", "vfs"),
        env("HOME", "/tmp"),
        env(
            "SLIPWAY_TLS_VERIFY",
            if insecure { "false" } else { "true" },
        ),
    ];
    if let Some(r) = &reference {
        env.push(env_var("SLIPWAY_PUSH", r.full()));
    }
    let secret = match (&reference, &image.registry_auth) {
        (Some(r), Some(auth)) => {
            env.push(env_var(
                "REGISTRY_AUTH_FILE",
                format!("{AUTH_DIR}/config.json"),
            ));
            Some(auth_secret(name, r, auth, &labels, builder))
        }
        _ => None,
    };

    let workspace = |read_only| VolumeMount {
        name: "workspace".into(),
        mount_path: WORKSPACE.into(),
        read_only: Some(read_only),
        ..Default::default()
    };
    let mut build_mounts = vec![
        workspace(true),
        VolumeMount {
            name: "storage".into(),
            mount_path: STORAGE.into(),
            ..Default::default()
        },
    ];
    let mut volumes = vec![
        empty_dir("workspace"),
        empty_dir("control"),
        empty_dir("storage"),
    ];
    if secret.is_some() {
        build_mounts.push(VolumeMount {
            name: "auth".into(),
            mount_path: AUTH_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
        volumes.push(Volume {
            name: "auth".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(name.to_owned()),
                items: Some(vec![KeyToPath {
                    key: AUTH_KEY.into(),
                    path: "config.json".into(),
                    ..Default::default()
                }]),
                // Read by buildah inside its user namespace, where the pod's
                // fsGroup does not carry over; only the build user runs in the pod.
                default_mode: Some(0o444),
                ..Default::default()
            }),
            ..Default::default()
        });
    }

    let run_as = builder.run_as;
    let source = Container {
        name: names::SOURCE_CONTAINER.into(),
        image: Some(options.helper_image.clone()),
        command: Some(vec![
            "sh".into(),
            "-c".into(),
            format!("until [ -e {READY_MARKER} ]; do sleep 0.2; done"),
        ]),
        volume_mounts: Some(vec![
            workspace(false),
            VolumeMount {
                name: "control".into(),
                mount_path: "/slipway/control".into(),
                ..Default::default()
            },
        ]),
        resources: Some(pod::helper_resources()),
        security_context: Some(pod::restricted_container()),
        ..Default::default()
    };
    let mut command = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        SCRIPT.to_owned(),
        "sh".to_owned(),
    ];
    command.extend(args);
    let build = Container {
        name: BUILD_CONTAINER.into(),
        image: Some(builder.image.clone()),
        command: Some(command),
        env: Some(env),
        volume_mounts: Some(build_mounts),
        resources: Some(pod::resources_of(builder.cpu_millis, builder.memory_bytes)),
        security_context: Some(SecurityContext {
            // newuidmap/newgidmap gain their file capabilities on exec.
            allow_privilege_escalation: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: Some(vec!["SETUID".into(), "SETGID".into()]),
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "Unconfined".into(),
                ..Default::default()
            }),
            app_armor_profile: Some(AppArmorProfile {
                type_: "Unconfined".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };

    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(builder.namespace.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            active_deadline_seconds: Some(builder.max_duration.as_secs().max(1) as i64),
            termination_grace_period_seconds: Some(options.kill_grace.as_secs().max(1) as i64),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            image_pull_secrets: (!builder.image_pull_secrets.is_empty()).then(|| {
                builder
                    .image_pull_secrets
                    .iter()
                    .map(|s| LocalObjectReference { name: s.clone() })
                    .collect()
            }),
            security_context: Some(pod_security(run_as)),
            volumes: Some(volumes),
            init_containers: Some(vec![source]),
            containers: vec![build],
            ..Default::default()
        }),
        status: None,
    };
    Ok((pod, secret))
}

/// Context directory and Dockerfile, relative to the workspace (`.` for its root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildPaths {
    pub context: String,
    pub dockerfile: String,
}

impl BuildPaths {
    /// Normalised, checked paths for `image` (no absolute path, nothing outside the
    /// workspace): what to copy out of the stage's pod and build from.
    pub fn of(image: &ImageSpec) -> Result<BuildPaths> {
        crate::image_build::locate_dockerfile(image)?;
        let clean = |p: &str| -> String {
            let parts: Vec<&str> = p
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .collect();
            if parts.is_empty() {
                ".".into()
            } else {
                parts.join("/")
            }
        };
        let paths = BuildPaths {
            context: clean(&image.context),
            dockerfile: clean(&image.dockerfile),
        };
        // locate_dockerfile resolved `..`; copying by path needs none left.
        if [&paths.context, &paths.dockerfile]
            .iter()
            .any(|p| p.split('/').any(|c| c == ".."))
        {
            return Err(Error::InvalidSpec(format!(
                "image context `{}` and dockerfile `{}` must not use `..` on the kubernetes backend",
                image.context, image.dockerfile
            )));
        }
        Ok(paths)
    }

    /// The workspace paths to copy: the context, and the Dockerfile when it is not
    /// inside it.
    pub fn to_copy(&self) -> Vec<String> {
        let inside = self.context == "."
            || self
                .dockerfile
                .strip_prefix(&self.context)
                .is_some_and(|rest| rest.starts_with('/'));
        if inside {
            vec![self.context.clone()]
        } else {
            vec![self.context.clone(), self.dockerfile.clone()]
        }
    }
}

fn pod_security(run_as: RunAs) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(run_as.uid),
        run_as_group: Some(run_as.gid),
        fs_group: Some(run_as.gid),
        // The helper keeps the runtime's profile; only `build` lifts it.
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn auth_secret(
    name: &str,
    reference: &Reference,
    auth: &crate::spec::RegistryAuth,
    labels: &BTreeMap<String, String>,
    builder: &BuilderOptions,
) -> Secret {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", auth.username, auth.password));
    let config = serde_json::json!({
        "auths": { reference.registry.clone(): { "auth": token } }
    });
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(builder.namespace.clone()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/dockerconfigjson".into()),
        data: Some(BTreeMap::from([(
            AUTH_KEY.to_owned(),
            ByteString(config.to_string().into_bytes()),
        )])),
        immutable: Some(true),
        ..Default::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }
}

fn env(name: &str, value: &str) -> EnvVar {
    env_var(name, value.to_owned())
}

fn env_var(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value),
        ..Default::default()
    }
}

/// What the build container's termination message says: `(image id, digest)`.
pub fn parse_result(message: &str) -> Option<(String, Option<String>)> {
    let mut parts = message.split_whitespace();
    let id = parts.next()?;
    let id = if id.starts_with("sha256:") {
        id.to_owned()
    } else {
        format!("sha256:{id}")
    };
    let digest = parts.next().map(str::to_owned);
    Some((id, digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(context: &str, dockerfile: &str) -> ImageSpec {
        ImageSpec {
            dockerfile: dockerfile.into(),
            context: context.into(),
            target: None,
            build_args: BTreeMap::new(),
            labels: BTreeMap::new(),
            push: None,
            registry_auth: None,
        }
    }

    #[test]
    fn paths_copy_the_context_and_an_outside_dockerfile() {
        let p = BuildPaths::of(&image(".", "Dockerfile")).unwrap();
        assert_eq!(p.to_copy(), vec!["."]);
        let p = BuildPaths::of(&image("./app/", "app/Dockerfile")).unwrap();
        assert_eq!(
            (p.context.as_str(), p.dockerfile.as_str()),
            ("app", "app/Dockerfile")
        );
        assert_eq!(p.to_copy(), vec!["app"]);
        let p = BuildPaths::of(&image("app", "docker/app.Dockerfile")).unwrap();
        assert_eq!(p.to_copy(), vec!["app", "docker/app.Dockerfile"]);
        // `apple/…` is not inside `app`.
        let p = BuildPaths::of(&image("app", "apple/Dockerfile")).unwrap();
        assert_eq!(p.to_copy().len(), 2);
        assert!(BuildPaths::of(&image("../x", "Dockerfile")).is_err());
        assert!(BuildPaths::of(&image("a/../b", "b/Dockerfile")).is_err());
    }

    #[test]
    fn results_are_read_from_the_termination_message() {
        assert_eq!(
            parse_result("sha256:abc sha256:def"),
            Some(("sha256:abc".into(), Some("sha256:def".into())))
        );
        assert_eq!(parse_result("abc "), Some(("sha256:abc".into(), None)));
        assert_eq!(parse_result(""), None);
    }
}
