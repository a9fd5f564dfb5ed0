//! What the runner is asked to run. The server maps a planned stage from `pipelines`
//! onto these types; the runner deliberately does not depend on `pipelines` so that
//! a remote runner host only needs this small, stable shape.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One stage: a workspace prepared from `source`, then `steps` run in order in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageSpec {
    /// Unique within a run, e.g. `test (features=full)`. Backends derive resource
    /// names from it, so it may contain any characters.
    pub id: String,
    /// Container image; ignored by the local backend.
    pub image: Option<String>,
    pub source: Source,
    /// Stage-level environment, already resolved (no `${{ }}` left).
    pub env: BTreeMap<String, String>,
    pub steps: Vec<StepSpec>,
    /// Limit for the whole stage, set-up included.
    pub timeout: Option<Duration>,
    /// Globs relative to the workspace, collected after all steps succeeded.
    pub artifacts: Vec<String>,
    /// Secret *values*, masked in all output. Injecting them into the environment is
    /// the caller's job (via `env`); the runner only needs to know what to hide.
    pub secrets: Vec<String>,
    /// What the stage does after its steps succeeded (build an image, scan).
    #[serde(default)]
    pub kind: StageKind,
    /// Containers reachable by name from the steps; ignored by the local backend.
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
    /// Settings for the step containers; ignored by the local backend.
    #[serde(default)]
    pub container: ContainerSettings,
    /// Pod settings from the YAML's allow-list; only the Kubernetes backend reads them.
    #[serde(default)]
    pub pod: PodSettings,
    /// What the stage belongs to (`repo`, `run`, `stage`, …), for backends that tag
    /// what they create (Kubernetes labels). Not secret, not used for behaviour.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Opaque data a backend that can hand a stage to a restarted runner keeps with
    /// the stage, and gives back with it (Kubernetes: in the stage's Secret, see
    /// `KubernetesBackend::adoptable`). The runner agent keeps its lease there. May
    /// hold secrets: never logged.
    #[serde(default, skip_serializing)]
    pub adoption: Option<String>,
}

/// What a stage does besides running its steps. The steps always run first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StageKind {
    #[default]
    Run,
    /// After the steps: build an image from the workspace and push it
    /// ([`crate::Backend::build_image`]).
    Image(ImageSpec),
    /// After the steps: the built-in secret scan of the workspace and the SARIF
    /// reports the steps produced.
    Scan(ScanSpec),
}

impl StageKind {
    /// The name of the step this kind adds after the stage's steps (`None`: none).
    /// The server lists it among the stage's steps so that its log has a place.
    pub fn step_name(&self) -> Option<&'static str> {
        match self {
            StageKind::Run => None,
            StageKind::Image(_) => Some(IMAGE_STEP),
            StageKind::Scan(_) => Some(SCAN_STEP),
        }
    }
}

/// Step names of the kinds' extra steps.
pub const IMAGE_STEP: &str = "build image";
pub const SCAN_STEP: &str = "scan";

/// A container image to build from the workspace and push.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSpec {
    /// Relative to the workspace.
    pub dockerfile: String,
    /// Build context directory, relative to the workspace.
    pub context: String,
    /// Multi-stage build target.
    pub target: Option<String>,
    pub build_args: BTreeMap<String, String>,
    /// Labels put on the image (commit sha, run URL, …).
    pub labels: BTreeMap<String, String>,
    /// Full reference to tag and push (`registry/team/app:tag`); `None`: build only.
    pub push: Option<String>,
    /// Credentials for the push; never logged.
    pub registry_auth: Option<RegistryAuth>,
}

impl fmt::Debug for ImageSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageSpec")
            .field("dockerfile", &self.dockerfile)
            .field("context", &self.context)
            .field("target", &self.target)
            .field("build_args", &self.build_args.keys().collect::<Vec<_>>())
            .field("labels", &self.labels)
            .field("push", &self.push)
            .field("registry_auth", &self.registry_auth.is_some())
            .finish()
    }
}

/// Registry credentials. The secret named by `registry_secret` holds either
/// `user:password` or a Docker `config.json` (`{"auths": {...}}`); see
/// [`RegistryAuth::parse`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
}

impl RegistryAuth {
    /// Reads a registry secret: `user:password`, or a Docker `config.json` whose
    /// `auths` has an entry for `registry` (the host of the image reference) with
    /// `auth` (base64 of `user:password`) or `username` + `password`.
    pub fn parse(secret: &str, registry: &str) -> Result<RegistryAuth> {
        let secret = secret.trim();
        let bad = |why: &str| Error::InvalidSpec(format!("registry secret: {why}"));
        if !secret.starts_with('{') {
            let (user, password) = secret
                .split_once(':')
                .ok_or_else(|| bad("expected `user:password` or a Docker config.json"))?;
            return Ok(RegistryAuth {
                username: user.to_owned(),
                password: password.to_owned(),
            });
        }
        #[derive(Deserialize)]
        struct Config {
            auths: BTreeMap<String, Entry>,
        }
        #[derive(Deserialize)]
        struct Entry {
            auth: Option<String>,
            username: Option<String>,
            password: Option<String>,
        }
        // Never include serde's message: it may quote the secret.
        let config: Config = serde_json::from_str(secret)
            .map_err(|_| bad("not valid Docker config.json (expected {\"auths\": {…}})"))?;
        let entry = config
            .auths
            .iter()
            .find(|(host, _)| {
                let host = host
                    .trim_start_matches("https://")
                    .trim_start_matches("http://");
                host.split('/').next() == Some(registry)
            })
            .map(|(_, e)| e)
            .ok_or_else(|| {
                bad(&format!(
                    "config.json has no entry for registry `{registry}`"
                ))
            })?;
        if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
            return Ok(RegistryAuth {
                username: u.clone(),
                password: p.clone(),
            });
        }
        use base64::Engine as _;
        let decoded = entry
            .auth
            .as_deref()
            .and_then(|a| base64::engine::general_purpose::STANDARD.decode(a).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| bad(&format!("entry for `{registry}` has no usable `auth`")))?;
        RegistryAuth::parse(&decoded, registry)
    }
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The built-in scan's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanSpec {
    /// Globs (relative to the workspace) of SARIF reports written by the steps.
    pub sarif: Vec<String>,
    /// The lowest severity that fails the stage; `None` never fails.
    pub fail_on: Option<Severity>,
}

/// Finding severities, lowest first (SARIF `note` < … < `critical`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Note,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Note => "note",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// A service container (database, cache) started before the steps, reachable from
/// them by `name` on the stage's network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    pub image: String,
    pub env: BTreeMap<String, String>,
    /// Replaces the image's command.
    pub command: Option<Vec<String>>,
    /// `ready:`: a shell command run in the service's container (`sh -c`); the steps
    /// start once it exits 0 (Docker: the container's health check; Kubernetes: the
    /// sidecar's startup probe). Absent from leases of older servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
}

/// Settings for step containers, from pipeline YAML.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSettings {
    /// `uid`, `uid:gid` or a user name known to the image.
    pub user: Option<String>,
    /// Working directory inside the workspace, relative to it.
    pub workdir: Option<String>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU limit in thousandths of a CPU.
    pub cpu_millis: Option<u64>,
    /// Disk for the workspace and the containers' files (Kubernetes backend only).
    #[serde(default)]
    pub disk_bytes: Option<u64>,
}

/// The pod settings a pipeline may choose (`kubernetes:` in a stage). This is the
/// whole allow-list: everything else about a stage's pod (security context, volumes,
/// host namespaces) is fixed by the backend. Other backends ignore it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSettings {
    /// `spec.nodeSelector`.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// `spec.tolerations`.
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    /// `spec.serviceAccountName`; the server only lets trusted repositories set it.
    /// Its API token is never mounted (`automountServiceAccountToken: false` on the
    /// pod); cloud workload identity bound to the account still applies.
    #[serde(default)]
    pub service_account: Option<String>,
}

/// A Kubernetes toleration (`core/v1 Toleration`), field for field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Toleration {
    pub key: Option<String>,
    /// `Exists` or `Equal` (the API's default).
    pub operator: Option<String>,
    pub value: Option<String>,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`; `None`: all effects.
    pub effect: Option<String>,
    /// Only with `NoExecute`.
    pub toleration_seconds: Option<i64>,
}

/// Where the workspace content comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// An empty workspace.
    Empty,
    /// A copy of a local directory (e.g. a working tree for `slipway exec`).
    /// `.git` is copied too so that tools like `git describe` keep working; symlinks
    /// are copied as symlinks and never followed.
    Directory(PathBuf),
    /// A clone of `url` (local path or URL) with `commit` (a sha or any revision such
    /// as `HEAD`) checked out detached.
    Git { url: String, commit: String },
}

/// One step: a shell script run with `sh -e`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSpec {
    pub name: String,
    pub script: String,
    /// Step-level environment; wins over the stage's.
    pub env: BTreeMap<String, String>,
    /// Limit for the step's commands, counted from when the backend has started it
    /// (image pulls and container start-up count against the stage's timeout only).
    pub timeout: Option<Duration>,
}

impl StageSpec {
    /// A stage with an empty workspace and no steps; handy for tests and builders.
    pub fn new(id: impl Into<String>) -> Self {
        StageSpec {
            id: id.into(),
            image: None,
            source: Source::Empty,
            env: BTreeMap::new(),
            steps: Vec::new(),
            timeout: None,
            artifacts: Vec::new(),
            secrets: Vec::new(),
            kind: StageKind::Run,
            services: Vec::new(),
            container: ContainerSettings::default(),
            pod: PodSettings::default(),
            labels: BTreeMap::new(),
            adoption: None,
        }
    }

    /// Checks what every backend would otherwise trip over at spawn time, so the
    /// failure is a clear, non-retryable [`Error::InvalidSpec`] instead.
    pub fn validate(&self) -> Result<()> {
        if self.id.is_empty() {
            return Err(Error::InvalidSpec("stage id is empty".into()));
        }
        validate_env(&self.env, &format!("stage `{}`", self.id))?;
        for (i, step) in self.steps.iter().enumerate() {
            let what = format!("step {i} (`{}`)", step.name);
            validate_env(&step.env, &what)?;
            if step.script.contains('\0') {
                return Err(Error::InvalidSpec(format!(
                    "{what}: script contains a NUL byte"
                )));
            }
        }
        for glob in &self.artifacts {
            crate::artifacts::check_glob(glob)?;
        }
        Ok(())
    }
}

impl StepSpec {
    pub fn new(name: impl Into<String>, script: impl Into<String>) -> Self {
        StepSpec {
            name: name.into(),
            script: script.into(),
            env: BTreeMap::new(),
            timeout: None,
        }
    }
}

/// Env names must be usable by `execve` and by a shell: no `=`, no NUL, not empty.
/// Values only need to be free of NUL (the C environment block is NUL-terminated).
fn validate_env(env: &BTreeMap<String, String>, what: &str) -> Result<()> {
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(Error::InvalidSpec(format!(
                "{what}: invalid environment variable name {k:?}"
            )));
        }
        if v.contains('\0') {
            return Err(Error::InvalidSpec(format!(
                "{what}: environment variable {k} contains a NUL byte"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_rejects_bad_env() {
        let mut s = StageSpec::new("a");
        s.env.insert("A=B".into(), "x".into());
        assert!(matches!(s.validate(), Err(Error::InvalidSpec(_))));

        let mut s = StageSpec::new("a");
        let mut step = StepSpec::new("s", "true");
        step.env.insert("OK".into(), "nul\0".into());
        s.steps.push(step);
        assert!(matches!(s.validate(), Err(Error::InvalidSpec(_))));

        assert!(StageSpec::new("").validate().is_err());
        assert!(StageSpec::new("ok").validate().is_ok());
    }

    #[test]
    fn registry_auth_forms() {
        let plain = RegistryAuth::parse("bob:pa:ss", "reg.local:5000").unwrap();
        assert_eq!(
            (plain.username.as_str(), plain.password.as_str()),
            ("bob", "pa:ss")
        );
        let json = r#"{"auths":{"reg.local:5000":{"auth":"Ym9iOnNlY3JldA=="}}}"#;
        let auth = RegistryAuth::parse(json, "reg.local:5000").unwrap();
        assert_eq!(
            (auth.username.as_str(), auth.password.as_str()),
            ("bob", "secret")
        );
        let err = RegistryAuth::parse(json, "other").unwrap_err().to_string();
        assert!(err.contains("no entry for registry `other`"), "{err}");
        let err = RegistryAuth::parse("{nope s3cr3t", "x")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cr3t"), "{err}");
        assert!(format!("{auth:?}").find("secret").is_none());
    }

    #[test]
    fn validate_rejects_escaping_artifact_globs() {
        let mut s = StageSpec::new("a");
        s.artifacts.push("../secret".into());
        assert!(s.validate().is_err());
    }
}
