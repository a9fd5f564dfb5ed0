//! Settings of the backend and of its builder pods.

use std::time::Duration;

use super::pod::RunAs;

/// Settings of a [`KubernetesBackend`].
#[derive(Debug, Clone)]
pub struct KubernetesOptions {
    /// Value of the runner label on everything this backend creates: stable for a
    /// runner across restarts (sweep and adoption select by it), distinct between
    /// runners sharing a namespace.
    pub runner_name: String,
    /// Where stage pods and Secrets go.
    pub namespace: String,
    /// Image of the `source` and `workspace` helper containers: needs `sh`, `tar`
    /// (`-h`), `sleep`, `head -c`, `find`, `xargs -0` and `readlink -f` (busybox is
    /// enough).
    pub helper_image: String,
    /// Names of `kubernetes.io/dockerconfigjson` Secrets in the namespace, for
    /// pulling images from private registries.
    pub image_pull_secrets: Vec<String>,
    /// Uid/gid of every container when the stage sets no `user`.
    pub run_as: RunAs,
    /// CPU (thousandths) and memory (bytes) of a step container when the stage
    /// sets no `resources`: requested and limited alike.
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// Disk of the workspace when the stage sets no `resources.disk`: the workspace
    /// emptyDir's `sizeLimit`, and requested as `ephemeral-storage`.
    pub disk_bytes: u64,
    /// Resources of each service container.
    pub service_cpu_millis: u64,
    pub service_memory_bytes: u64,
    /// Time between SIGTERM and SIGKILL when a pod is deleted.
    pub kill_grace: Duration,
    /// How long a pod may stay unschedulable before the stage fails.
    pub schedule_timeout: Duration,
    /// How long a container may fail to be created (a missing Secret key, a root
    /// image under `runAsNonRoot`) before the stage fails.
    pub config_error_grace: Duration,
    /// How long a failure that may pass (an image pull refused by a registry's rate
    /// limit or a 5xx, a runtime too busy to create a container) is retried before
    /// the stage fails; a missing or refused image fails at once.
    pub transient_error_limit: Duration,
    /// How long a service's `ready:` command may keep failing (its startup probe's
    /// `failureThreshold` × 1 s); then the kubelet restarts it and the stage fails.
    pub service_timeout: Duration,
    /// `activeDeadlineSeconds` for stages without a timeout.
    pub max_stage_duration: Duration,
    /// How often a stage pod refused for a used-up ResourceQuota is created again
    /// (the stage waits meanwhile, up to its timeout).
    pub quota_retry_interval: Duration,
    /// How long a stage pod tolerates its node being unreachable or not ready
    /// (`tolerationSeconds` of the `node.kubernetes.io/unreachable` and `not-ready`
    /// NoExecute taints): after the cluster declares a node lost
    /// (`--node-monitor-grace-period`, 40 s by default) and this long, it evicts the
    /// pod and the stage fails, retryably, instead of waiting for its deadline. See
    /// `node_loss`. Default 2 minutes.
    pub node_lost_timeout: Duration,
    /// How long after a graceful deletion (and `kill_grace`) a pod that is still
    /// there is deleted with `gracePeriodSeconds=0`: a pod on a lost node stays
    /// Terminating otherwise, as only its kubelet can confirm the stop. Default 30 s.
    pub force_delete_after: Duration,
    /// Where and with what `kind: image` stages build; `None`: they are refused.
    pub builder: Option<BuilderOptions>,
}

/// Settings of the builder pods that run `kind: image` stages ([`super::builder`]).
#[derive(Debug, Clone)]
pub struct BuilderOptions {
    /// An image with `sh` and a rootless `buildah` for uid/gid [`Self::run_as`]
    /// (`newuidmap`/`newgidmap` with file capabilities, subordinate ids), e.g.
    /// `quay.io/buildah/stable`.
    pub image: String,
    /// Namespace of the builder pods and their registry Secrets: Pod Security
    /// `privileged` (see [`super::builder`]), holding nothing else.
    pub namespace: String,
    /// Registries (`host[:port]`) reached over plain HTTP or without a trusted
    /// certificate.
    pub insecure_registries: Vec<String>,
    /// `kubernetes.io/dockerconfigjson` Secrets in the builder namespace, for pulling
    /// the builder image.
    pub image_pull_secrets: Vec<String>,
    pub run_as: RunAs,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// `activeDeadlineSeconds` of a builder pod.
    pub max_duration: Duration,
}

impl BuilderOptions {
    pub fn new(image: impl Into<String>, namespace: impl Into<String>) -> Self {
        BuilderOptions {
            image: image.into(),
            namespace: namespace.into(),
            insecure_registries: Vec::new(),
            image_pull_secrets: Vec::new(),
            run_as: RunAs {
                uid: 1000,
                gid: 1000,
            },
            cpu_millis: 2000,
            memory_bytes: 4 * 1024 * 1024 * 1024,
            max_duration: Duration::from_secs(2 * 3600),
        }
    }
}

impl KubernetesOptions {
    pub fn new(runner_name: impl Into<String>, namespace: impl Into<String>) -> Self {
        KubernetesOptions {
            runner_name: runner_name.into(),
            namespace: namespace.into(),
            helper_image: "docker.io/library/busybox:1.37".into(),
            image_pull_secrets: Vec::new(),
            run_as: RunAs {
                uid: 1000,
                gid: 1000,
            },
            cpu_millis: 1000,
            memory_bytes: 2 * 1024 * 1024 * 1024,
            disk_bytes: 10 * 1024 * 1024 * 1024,
            service_cpu_millis: 500,
            service_memory_bytes: 512 * 1024 * 1024,
            kill_grace: Duration::from_secs(2),
            schedule_timeout: Duration::from_secs(120),
            config_error_grace: Duration::from_secs(10),
            transient_error_limit: Duration::from_secs(300),
            service_timeout: Duration::from_secs(300),
            max_stage_duration: Duration::from_secs(6 * 3600),
            quota_retry_interval: Duration::from_secs(10),
            node_lost_timeout: Duration::from_secs(120),
            force_delete_after: Duration::from_secs(30),
            builder: None,
        }
    }
}
