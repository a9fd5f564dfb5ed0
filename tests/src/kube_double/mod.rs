//! A Kubernetes API-server test double that runs pods on the Docker engine.
//!
//! No cluster can run on the development machines, so the Kubernetes backend (and
//! the server's rollouts) are tested against this: a plain-HTTP server on 127.0.0.1
//! speaking the real core/v1 and apps/v1 JSON API (k8s-openapi objects,
//! `metav1.Status` errors) to a real `kube::Client`, running each pod's containers
//! as Docker containers and the deployment, ReplicaSet and garbage-collection
//! controllers of a cluster. The watch logic, log streaming, rollouts and error
//! paths of a client are thereby exercised for real.
//!
//! ```no_run
//! # async fn demo() {
//! let double = tests::kube_double::start(Default::default()).await.unwrap();
//! let client = double.client();
//! let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client.clone(), "ci");
//! let web: kube::Api<k8s_openapi::api::apps::v1::Deployment> = kube::Api::namespaced(client, "ci");
//! # double.shutdown().await;
//! # }
//! ```
//!
//! # Implemented
//! - Pods (`/api/v1/namespaces/{ns}/pods[/{name}]`, and `/api/v1/pods`): create
//!   (201; `generateName`; 409 AlreadyExists; 422 Invalid with field paths;
//!   unknown fields per `fieldValidation`: Strict → 400, default → `Warning`
//!   header; fields newer than [`KubeDoubleOptions::version`], e.g.
//!   `appArmorProfile` before 1.30, are unknown fields too), get (404 NotFound), list with `labelSelector` (`=`, `==`, `!=`, `in`,
//!   `notin`, exists, `!`) and `fieldSelector` (metadata.name, metadata.namespace,
//!   status.phase, …), watch, delete (graceful: 200 with `deletionTimestamp`, then
//!   DELETED once the containers are stopped with `gracePeriodSeconds` and removed;
//!   `propagationPolicy` Background/Foreground/Orphan), `delete_collection` with
//!   selectors, GET of the `status` subresource.
//! - Scheduling onto the one node (the engine, named [`NODE_NAME`]): `spec.nodeName`
//!   is set; a pod whose `nodeSelector` does not match [`KubeDoubleOptions::node_labels`]
//!   or whose requests exceed the engine's CPUs/memory stays Pending with
//!   `PodScheduled=False`, reason `Unschedulable` (see `scheduling`). A pod's
//!   requests are upstream's `PodRequests`: regular containers plus native
//!   sidecars, but at least each init container plus the sidecars started before
//!   it; pod-level `resources` and `overhead` counted; a limit alone is the request.
//! - Admission of pod creates (also the ReplicaSet controller's), after validation
//!   (see `admission`): Pod Security `restricted` in the namespaces of
//!   [`KubeDoubleOptions::restricted_namespaces`] (403 `pods "x" is forbidden:
//!   violates PodSecurity "restricted:latest": …`, the findings of
//!   [`crate::pod_security`]); then ResourceQuota (403 `exceeded quota: <name>,
//!   requested: …, used: …, limited: …` and `failed quota: <name>: must specify …`,
//!   as the quota admission words them; usage is every non-terminal pod of the
//!   namespace, charged with `PodRequests`/`PodLimits`). ResourceQuota objects
//!   (`/api/v1/namespaces/{ns}/resourcequotas[/{name}]`, `/api/v1/resourcequotas`):
//!   create (validated: standard resource names, non-negative quantities), get, list,
//!   delete (the object back); `status.hard`/`used` always current (computed when
//!   read, so no "status unknown" window as after a real quota's creation).
//! - Watch: `watch=true`, `resourceVersion` (unset/"0": current objects as ADDED
//!   first; N: every change after N), `labelSelector`, `fieldSelector`,
//!   `timeoutSeconds`, `sendInitialEvents` (ADDED… then a BOOKMARK with
//!   `k8s.io/initial-events-end`). Events are ADDED/MODIFIED/DELETED, with objects
//!   entering/leaving a selection turned into ADDED/DELETED. One global
//!   `resourceVersion` counter, bumped per change (a no-op update is no change). A
//!   version older than the bounded history gets an ERROR event with a 410 Expired
//!   `Status`, as the API server's watch cache sends.
//! - Pod logs (`…/pods/{name}/log`): `container` (required when several),
//!   `follow`, `timestamps`, `tailLines`, `sinceSeconds`, `sinceTime` (to the
//!   second, as the engine takes them), `limitBytes`; a container that has not
//!   started is a 400 "is waiting to start: `<reason>`". [`KubeDouble::cut_log_streams`]
//!   ends every open stream mid-body — cleanly or by a reset connection — as an API
//!   server or kubelet restart or an idle load balancer does; a new request serves
//!   the log from its start again, as the kubelet serves the current log file.
//! - Node loss ([`KubeDouble::lose_node`], see `node_loss`): the kubelet stops
//!   reporting — pod status freezes (containers stay "running"), logs and exec are
//!   500s with the proxied dial error, open log streams break, graceful deletions
//!   stay Terminating —; after [`KubeDoubleOptions::node_monitor_grace`] pods'
//!   `Ready` condition turns False (`MarkPodsNotReady`), and once a pod's toleration
//!   of `node.kubernetes.io/unreachable:NoExecute` runs out (300 s without one, as
//!   `DefaultTolerationSeconds` gives) it gets `DisruptionTarget=True`
//!   (`DeletionByTaintManager`) and a graceful deletion. `gracePeriodSeconds=0`
//!   deletes any pod from the API at once (then its containers go).
//! - Pod exec (`…/pods/{name}/exec`, WebSocket `v5`/`v4.channel.k8s.io`, what
//!   `kube::Api::exec` speaks): `command`, `container`, stdin, stdout, stderr,
//!   `tty`; the final `Status` on channel 3 with `NonZeroExitCode` and an
//!   `ExitCode` cause — a Docker exec in the container, enough for `tar` copies in
//!   and out of a pod as `kubectl cp` does. v5 (stdin closed alone by `[255, 0]`)
//!   is offered from 1.30 unless [`KubeDoubleOptions::exec_v5_protocol`] is off;
//!   on v4 that frame is ignored, and a client closing the socket ends the exec
//!   with no `Status`, as upstream's `wsstream.Conn`. The bytes that crossed are
//!   counted ([`KubeDouble::exec_traffic`]).
//! - Secrets: create (`stringData` merged into `data`, type defaults to Opaque),
//!   get, list, watch, delete (200 Success `Status`), `delete_collection`; typed
//!   secrets checked (`kubernetes.io/dockerconfigjson` needs valid JSON under
//!   `.dockerconfigjson`). Garbage collection: when a
//!   pod is gone, secrets whose `ownerReferences` name its uid are deleted (or, for
//!   Orphan, lose that reference); a secret created for an owner pod that does
//!   not exist is deleted at once.
//! - Pod execution (see `pod_runtime`): emptyDir volumes (world-writable, as the
//!   kubelet makes them) and secret volumes (`items`, `defaultMode`, read-only) as
//!   Docker volumes; a sandbox container holding the pod's network namespace (all
//!   containers reach each other on localhost); init containers in order, a
//!   non-zero exit failing the pod; native sidecars (init containers with
//!   `restartPolicy: Always`) started, holding the next init container back until
//!   they run and their startup probe passed (`started`, as the kubelet's
//!   `computeInitContainerActions`, KEP-753), and stopped after the regular containers;
//!   regular containers started together. Per container: `command`/`args`
//!   (ENTRYPOINT/CMD semantics), `workingDir`, `env` (`value`,
//!   `valueFrom.secretKeyRef`), `envFrom.secretRef`, `volumeMounts` (`readOnly`),
//!   `securityContext` (runAsUser/runAsGroup → Docker user, runAsNonRoot checked
//!   against the image user, capabilities add/drop, allowPrivilegeEscalation
//!   false → no-new-privileges, `Unconfined` seccomp/AppArmor profiles → the
//!   engine's `seccomp=unconfined`/`apparmor=unconfined`, readOnlyRootFilesystem,
//!   the termination message file at `terminationMessagePath` (a bind-mounted file,
//!   read into `terminated.message`, 4096 bytes at most); pod-level `hostAliases`
//!   (entries in the pod's shared /etc/hosts), fsGroup and
//!   supplementalGroups → extra groups), `resources.limits` memory/cpu (no swap on
//!   top of the memory limit, so over the limit is OOMKilled).
//! - Status as the kubelet reports it: phase Pending → Running → Succeeded/Failed;
//!   conditions PodScheduled, Initialized, ContainersReady, Ready (with
//!   lastTransitionTime kept while a status holds); `startTime`, `podIP`;
//!   init/container statuses waiting (PodInitializing, ContainerCreating,
//!   ErrImagePull ⇄ ImagePullBackOff for an image not on the engine — the double
//!   never pulls; the message is containerd's `…: not found` —, the same for the
//!   first pulls of an image in [`KubeDoubleOptions::flaky_pulls`] with a registry's
//!   429 or 5xx in containerd's words (see `pulls`), CreateContainerConfigError for a missing secret or key or a
//!   runAsNonRoot violation, retried until it resolves), running (startedAt) and
//!   terminated (exitCode; reason Completed, Error, OOMKilled or StartError;
//!   startedAt, finishedAt; containerID). `activeDeadlineSeconds` (counted from
//!   `startTime`) stops the pod: phase Failed, reason DeadlineExceeded.
//! - Restarts as the kubelet does them (see `pod_runtime::restart`): `restartPolicy`
//!   Always (the API default) restarts a regular container whatever its exit,
//!   OnFailure after a non-zero exit (regular init containers of such pods until
//!   they succeed), native sidecars always; the first restart at once, then the
//!   crash-loop back-off from [`KubeDoubleOptions::restart_backoff`] doubling to
//!   `restart_backoff_max` (10 s and 5 min by default, as the kubelet), waiting as
//!   `CrashLoopBackOff` with the ended run in `lastState`, `restartCount` counting.
//!   The phase of such a pod stays Running.
//! - Probes (see `pod_runtime::probes`): `startupProbe`, `readinessProbe`,
//!   `livenessProbe` with `httpGet` (path, port by number or container-port name,
//!   HTTP/HTTPS, headers; 200–399), `tcpSocket` and `exec`; `initialDelaySeconds`,
//!   `periodSeconds`, `timeoutSeconds`, `successThreshold`, `failureThreshold` (API
//!   defaults); run from the host against the pod IP (the sandbox's Docker bridge
//!   address, reachable from the host; 127.0.0.1 on the host network). Readiness
//!   sets the container's `ready` and the pod's ContainersReady/Ready (a container
//!   without one is ready once running, and started); a startup probe holds the
//!   others back (`started`); a failed liveness or startup probe kills the
//!   container (the probe's `terminationGracePeriodSeconds`, else the pod's) and
//!   the restart policy decides what follows.
//! - apps/v1 Deployments and ReplicaSets (see `deployments`):
//!   `/apis/apps/v1/namespaces/{ns}/{deployments,replicasets}[/{name}[/status|/scale]]`
//!   and `/apis/apps/v1/{deployments,replicasets}`: create (201; API defaults
//!   applied: replicas 1, RollingUpdate 25 %/25 %, revisionHistoryLimit 10,
//!   progressDeadlineSeconds 600, the pod template's restartPolicy Always, probe
//!   and container defaults; 409 AlreadyExists; 422 Invalid for a missing or empty
//!   selector, one not matching the template's labels, bad strategies, a template
//!   restartPolicy other than Always, anything a pod may not have), get (404),
//!   list and watch (selectors as for pods), replace (PUT; a stale
//!   `metadata.resourceVersion` is 409 Conflict "the object has been modified…";
//!   the selector is immutable), patch (merge, JSON and strategic merge patches;
//!   server-side apply is 415), the `status` subresource (GET/PUT/PATCH, no new
//!   generation) and `scale` (autoscaling/v1, GET/PUT/PATCH), delete and
//!   delete-collection (Background by default: a Success `Status`; Foreground and
//!   Orphan: the object with its finalizer until the dependents are gone or
//!   released). `metadata.generation` starts at 1 and counts spec changes (and, for
//!   a Deployment, annotation changes, as upstream), never status or label writes.
//! - The deployment controller: a ReplicaSet per pod template
//!   (`<name>-<pod-template-hash>`, the hash on its labels, selector and pods, owned
//!   by the Deployment), revisions (`deployment.kubernetes.io/revision`, rollback
//!   to an earlier template reuses its ReplicaSet), RollingUpdate within maxSurge
//!   (rounded up) and maxUnavailable (rounded down) of ints or percentages,
//!   Recreate (old pods all gone before a new one is created), proportional scaling,
//!   `paused`, `minReadySeconds`, `revisionHistoryLimit`, and the status a cluster
//!   writes: `observedGeneration`, `replicas`, `updatedReplicas`, `readyReplicas`,
//!   `availableReplicas`, `unavailableReplicas`, conditions Available
//!   (MinimumReplicasAvailable/Unavailable) and Progressing (NewReplicaSetCreated,
//!   ReplicaSetUpdated, NewReplicaSetAvailable, ProgressDeadlineExceeded,
//!   DeploymentPaused/Resumed). The ReplicaSet controller creates pods from the
//!   template (owner reference with `controller: true`) and deletes surplus ones as
//!   upstream ranks them (unscheduled, pending, not ready, newest ready first);
//!   both adopt matching objects without a controller and release those whose
//!   labels stop matching; the garbage collector deletes what Deployments and
//!   ReplicaSets owned once they are gone.
//! - Everything created on Docker carries the instance label; [`KubeDouble::shutdown`]
//!   (or dropping the double) removes it all.
//!
//! ## Networking (`net`; upstream sources named in each of its modules)
//! - Services (core/v1, ClusterIP on TCP): create (defaults: type, protocol TCP,
//!   `targetPort` = port, sessionAffinity, families; `spec.clusterIP`/`clusterIPs`
//!   allocated from 10.96.0.0/12 or the one asked for — 422 when taken or out of
//!   range; `None` = headless), get, list/watch with selectors, PUT (a stale
//!   `resourceVersion` → 409 Conflict; the cluster IP kept when left out, 422 when
//!   changed), merge PATCH, DELETE; 422 Invalid with field paths for missing or bad
//!   ports, duplicate port names or (protocol, port) pairs, bad target ports, bad
//!   selectors. Routing: each Service port listens on `127.0.0.1:<ephemeral>`
//!   ([`KubeDouble::service_addr`]) and splices each TCP connection to one ready
//!   endpoint — a pod matched by the selector, Ready condition True, not
//!   terminating; numeric or named `targetPort` —, round robin; no endpoint: the
//!   connection is reset. A port's address is stable across updates; deleting the
//!   Service closes it before the DELETE returns.
//! - Ingresses (networking.k8s.io/v1): create/get/list/watch/PUT/merge PATCH/DELETE,
//!   validated as upstream (pathType required, absolute paths, backend service name
//!   and port name xor number, hosts); stored only — nothing routes by them, so
//!   ingress-nginx canary annotations are kept and do nothing.
//! - HTTPRoutes (gateway.networking.k8s.io/v1, Gateway API v1.5.1 as the
//!   `gateway-api` 0.22 crate binds it): create/get/list/watch/PUT/merge
//!   PATCH/DELETE as for a CRD — schema defaults (weight 1, kind Service, path
//!   PathPrefix `/`, …), OpenAPI and CEL validation (422 naming the field: weights
//!   0..=1000000, at most 16 rules/backendRefs/filters and 64 matches per rule,
//!   backendRef name and Service port required, match and filter types, mirror
//!   percent/fraction, …), unknown fields pruned, `generation` counting spec
//!   changes, PUT needing the current `resourceVersion` (409 stale, 422 missing);
//!   status: per parentRef Accepted and ResolvedRefs (whether the Services existed
//!   when the route was written).
//! - The gateway ([`KubeDouble::gateway_addr`]): one HTTP/1.1 listener routing every
//!   request by every HTTPRoute (parentRefs are not consulted): hostnames against
//!   Host, path Exact/PathPrefix/RegularExpression, headers and query params
//!   Exact/RegularExpression (RE2, whole value: a cookie test is `.*group=beta.*`),
//!   method, with the spec's precedence; backendRefs by weight (smooth weighted
//!   round robin: exact shares, weight 0 gets nothing, all 0 → 500), each a Service
//!   port in the route's namespace → one ready pod; RequestMirror (percent/fraction,
//!   answers dropped), Request/ResponseHeaderModifier. No matching rule → 404; an
//!   invalid backend (unknown Service or port, other kind or namespace) → 500; no
//!   ready pod → 503; other filters → 500 "not implemented".
//! - Owner garbage collection of Services, Ingresses and HTTPRoutes (asynchronous,
//!   after any deletion): deleted when every owner is gone (by kind and uid), a
//!   dangling reference dropped while another owner lives, references stripped for
//!   `propagationPolicy: Orphan`; an owner of a kind the double does not store
//!   counts as alive (`Store::owner_exists`).
//!
//! # Deliberately not implemented
//! Other resources and API groups (no Events: failures are read from pod status;
//! no Endpoints or EndpointSlices; no Gateway, GatewayClass or ReferenceGrant
//! objects); discovery (`/api`, `/apis`: kubectl cannot talk to the double, a typed
//! `kube::Api` can); PUT/PATCH of pods and secrets (405); strategic merge, JSON and
//! server-side apply patches (415); `delete_collection` of the network kinds (405);
//! Service types other than ClusterIP, UDP/SCTP ports, ClientIP affinity (422);
//! Ingress routing; the gateway's RequestRedirect, URLRewrite, CORS and ExtensionRef
//! filters (500), cross-namespace backends, timeouts and retries; finalizers (stored,
//! never waited for); `attach`, `portforward`, SPDY upgrades, exec resize; `dryRun`,
//! delete preconditions (400); pagination (`limit` gets the whole list and no
//! `continue`); `resourceVersionMatch`; bookmarks other than the initial-events one;
//! namespaces as objects (any namespace exists: Pod Security levels come from
//! [`KubeDoubleOptions::restricted_namespaces`], not labels; no `baseline`, `warn` or
//! `audit` modes, no exemptions); other admission (LimitRanges, webhooks,
//! ValidatingAdmissionPolicies); quota scopes and `scopeSelector` (422), quota on
//! objects other than pods, watching, PUT and PATCH of quotas (405); image pulls, `imagePullPolicy`,
//! `imagePullSecrets` (accepted, ignored; an image by digest, `repo@sha256:…`,
//! runs when the engine has it, as after a push to the local registry); API
//! defaults for pods created directly (a Deployment's template gets them); gRPC
//! probes and `tcpSocket.host` (422); a sidecar's readiness in the pod's; the upstream `pod-template-hash` values (the double's hash the template's JSON:
//! same template, same hash, but not the cluster's value); `terminatingReplicas`;
//! `$(VAR)` expansion in command/args/env; `valueFrom` other
//! than secretKeyRef, configMap volumes and every volume type but emptyDir and
//! secret, `subPath`, `hostNetwork`/`hostPID`/`hostIPC` and `privileged` (422, so a
//! backend generating them fails loudly); scheduling beyond nodeSelector and
//! requests (affinity and tolerations are stored and ignored, other pods' requests
//! are not counted against the node); service accounts (no token is ever mounted);
//! `previous` logs; emptyDir `medium`/`sizeLimit`; `Localhost` seccomp/AppArmor
//! profiles (422); `terminationMessagePolicy: FallbackToLogsOnError` (the file only);
//! Node objects (a lost node shows only on its pods), a node coming back, and the
//! scheduler avoiding a lost node (pods created after [`KubeDouble::lose_node`] are
//! still bound to it and never report).
//!
//! Reaching the host from a pod: with [`PodNetwork::Bridge`] (default) pods get
//! `host.docker.internal` → the bridge gateway, so a server must listen there or on
//! 0.0.0.0; with [`PodNetwork::Host`] pods share the host's network and reach its
//! 127.0.0.1 (but pods then share ports).

mod admission;
mod capture;
mod deployments;
mod docker;
mod exec;
mod logs;
mod net;
mod node_loss;
mod pod_runtime;
mod pod_status;
mod probe;
mod pulls;
mod quantity;
mod routes;
mod scheduling;
mod selector;
mod status;
mod store;
mod validate;
mod versions;
mod watch;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use docker::{INSTANCE_LABEL, POD_LABEL, POD_UID_LABEL, PodNetwork};
pub use exec::ExecTraffic;
pub use logs::LogCut;
pub use pulls::FlakyPull;

use pod_runtime::Ctx;
use routes::RequestCounts;
use store::Store;

/// The name of the double's one node (`spec.nodeName` of every scheduled pod).
pub const NODE_NAME: &str = "kube-double";

/// The test image the double's sandboxes use by default (built by `.ci/images.sh`).
pub const DEFAULT_SANDBOX_IMAGE: &str = "slipway-test/busybox:latest";

#[derive(Debug, Clone)]
pub struct KubeDoubleOptions {
    /// Image of each pod's sandbox container; it must provide `sleep`, `chmod`.
    pub sandbox_image: String,
    pub pod_network: PodNetwork,
    /// Change events kept for watches from an older resourceVersion; a watch from
    /// before them gets 410 Expired.
    pub watch_history: usize,
    /// How often a waiting container (missing image, missing secret) is retried.
    pub retry_interval: Duration,
    /// Labels of the one node (for `nodeSelector`); its allocatable CPU and memory
    /// are the engine's.
    pub node_labels: BTreeMap<String, String>,
    /// The kubelet's crash-loop back-off: a container that ends and is restarted
    /// (`restartPolicy` Always or OnFailure) restarts at once the first time, then
    /// after this, doubling up to [`KubeDoubleOptions::restart_backoff_max`]
    /// (the kubelet's 10 s and 5 min; tests shorten them).
    pub restart_backoff: Duration,
    pub restart_backoff_max: Duration,
    /// The Kubernetes `(major, minor)` served at `/version`; pod fields that came
    /// later are unknown fields (see `versions`). Default 1.33.
    pub version: (u32, u32),
    /// Offer `v5.channel.k8s.io` on `pods/exec` (the only version that can close
    /// stdin alone), as API servers do by default from 1.30: it is never offered
    /// when [`KubeDoubleOptions::version`] is older. `false`: only
    /// `v4.channel.k8s.io`, as before 1.30 or behind a proxy that strips v5.
    /// Default true.
    pub exec_v5_protocol: bool,
    /// Namespaces that enforce the Pod Security `restricted` profile, as one labelled
    /// `pod-security.kubernetes.io/enforce: restricted` does: a pod create that breaks
    /// it is refused with 403 (see `admission::pod_security`). Default: none.
    pub restricted_namespaces: BTreeSet<String>,
    /// Images behind a registry that refuses their first pulls (a rate limit, a
    /// 5xx): in each container, `failures` times `ErrImagePull` with containerd's
    /// message and `ImagePullBackOff`, then the engine's copy runs (see `pulls`).
    pub flaky_pulls: BTreeMap<String, FlakyPull>,
    /// After [`KubeDouble::lose_node`], how long until the node lifecycle controller
    /// declares the node lost and taints it (`--node-monitor-grace-period`: 40 s as
    /// upstream; tests shorten it). See `node_loss`.
    pub node_monitor_grace: Duration,
}

impl Default for KubeDoubleOptions {
    fn default() -> Self {
        KubeDoubleOptions {
            sandbox_image: DEFAULT_SANDBOX_IMAGE.to_owned(),
            pod_network: PodNetwork::Bridge,
            watch_history: 10_000,
            retry_interval: Duration::from_millis(500),
            node_labels: [
                ("kubernetes.io/hostname", NODE_NAME),
                ("kubernetes.io/os", "linux"),
                ("kubernetes.io/arch", "amd64"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            restart_backoff: Duration::from_secs(10),
            restart_backoff_max: Duration::from_secs(300),
            version: (1, 33),
            exec_v5_protocol: true,
            restricted_namespaces: BTreeSet::new(),
            flaky_pulls: BTreeMap::new(),
            node_monitor_grace: Duration::from_secs(40),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubeDoubleError {
    #[error("cannot reach the Docker engine: {0}")]
    Docker(String),
    #[error(
        "the sandbox image {0} is not on the Docker engine (run `bash .ci/images.sh` to build the test images)"
    )]
    MissingSandboxImage(String),
    #[error("cannot listen on 127.0.0.1: {0}")]
    Listen(std::io::Error),
}

/// A running double. Dropping it stops the server and removes its Docker objects.
pub struct KubeDouble {
    /// `http://127.0.0.1:<port>`: the cluster URL for a `kube::Config`.
    pub base_url: String,
    /// The value of [`INSTANCE_LABEL`] on everything this double creates on Docker.
    pub instance: String,
    ctx: Arc<Ctx>,
    counts: Arc<RequestCounts>,
    server: Option<JoinHandle<()>>,
    cleaned: bool,
}

/// Starts a double on 127.0.0.1 with a free port.
pub async fn start(options: KubeDoubleOptions) -> Result<KubeDouble, KubeDoubleError> {
    let docker = Docker::connect_with_local_defaults()
        .map_err(|e| KubeDoubleError::Docker(e.to_string()))?
        .negotiate_version()
        .await
        .map_err(|e| KubeDoubleError::Docker(e.to_string()))?;
    if let Err(e) = docker.inspect_image(&options.sandbox_image).await {
        return Err(if docker::is_not_found(&e) {
            KubeDoubleError::MissingSandboxImage(options.sandbox_image.clone())
        } else {
            KubeDoubleError::Docker(docker::message(&e))
        });
    }
    let info = docker
        .info()
        .await
        .map_err(|e| KubeDoubleError::Docker(docker::message(&e)))?;
    let node = scheduling::Node {
        name: NODE_NAME.to_owned(),
        labels: options.node_labels.clone(),
        cpu_millis: info.ncpu.unwrap_or(1) * 1000,
        memory_bytes: info.mem_total.unwrap_or(i64::MAX),
    };
    let instance = format!("{:08x}", rand::random::<u32>());
    let ctx = Arc::new(Ctx {
        store: Store::new(options.watch_history),
        docker,
        instance: instance.clone(),
        options,
        node,
        runtimes: Mutex::new(HashMap::new()),
        shutdown: CancellationToken::new(),
        captures: capture::Captures::new()
            .map_err(|e| KubeDoubleError::Docker(format!("a temp dir for container logs: {e}")))?,
        net: net::Network::new().map_err(KubeDoubleError::Listen)?,
        exec_traffic: exec::Traffic::default(),
        admission_lock: Mutex::new(()),
        log_cut: tokio::sync::watch::Sender::new(LogCut::End),
        node_health: Default::default(),
    });
    net::spawn(&ctx);
    let counts = Arc::new(RequestCounts::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(KubeDoubleError::Listen)?;
    let addr = listener.local_addr().map_err(KubeDoubleError::Listen)?;
    let more = net::routes().merge(admission::routes::routes());
    let app = routes::router(ctx.clone(), counts.clone(), more)
        .merge(deployments::router(ctx.clone(), counts.clone()));
    deployments::spawn_controllers(ctx.clone());
    let server = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("kube double server: {e}");
        }
    });
    Ok(KubeDouble {
        base_url: format!("http://{addr}"),
        instance,
        ctx,
        counts,
        server: Some(server),
        cleaned: false,
    })
}

impl KubeDouble {
    /// A client for this double: no TLS, no auth, default namespace `default`.
    pub fn client(&self) -> kube::Client {
        let url = self.base_url.parse().expect("base_url is a valid URI");
        let config = kube::Config::new(url);
        kube::Client::try_from(config).expect("a plain-HTTP config always builds a client")
    }

    /// A kubeconfig (YAML) for this double: cluster `kube-double` at
    /// [`KubeDouble::base_url`], no credentials, default namespace `namespace`; what
    /// an environment's cluster connection holds, for `kube::config::Kubeconfig::from_yaml`.
    pub fn kubeconfig(&self, namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kube-double\n  cluster:\n    server: {}\n\
             contexts:\n- name: kube-double\n  context:\n    cluster: kube-double\n    user: kube-double\n    namespace: {namespace}\n\
             current-context: kube-double\nusers:\n- name: kube-double\n  user: {{}}\n",
            self.base_url
        )
    }

    /// The Docker engine the pods run on (same connection as the double's).
    pub fn docker(&self) -> &Docker {
        &self.ctx.docker
    }

    /// Requests served so far, by `METHOD route` (`WATCH` for watches).
    pub fn requests(&self) -> BTreeMap<String, u64> {
        self.counts.snapshot()
    }

    /// Payload bytes that crossed `pods/exec` streams so far (stdin in, stdout and
    /// stderr out), all execs together: what a copy into or out of a pod cost on
    /// the wire.
    pub fn exec_traffic(&self) -> ExecTraffic {
        self.ctx.exec_traffic.snapshot()
    }

    /// Ends every log stream open now, mid-body (`how`: cleanly or by a reset
    /// connection): what a client sees when the API server or the kubelet restarts,
    /// or a load balancer closes a connection it thinks idle. The containers go on;
    /// a new log request reads their log again from the start.
    pub fn cut_log_streams(&self, how: LogCut) {
        self.ctx.log_cut.send_replace(how);
    }

    /// The node stops reporting from now on, as when its machine crashes or is cut
    /// off: pod status freezes, logs and exec fail, deletions stay Terminating, and
    /// the control plane declares the node lost and evicts its pods after
    /// [`KubeDoubleOptions::node_monitor_grace`] and their tolerations (see
    /// `node_loss`). For good: the node does not come back.
    pub fn lose_node(&self) {
        node_loss::lose(&self.ctx);
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.ctx.store.resource_version()
    }

    /// Stops serving, ends every watch and log stream, kills the pods and removes
    /// every container and volume this double created. Returns what could not be
    /// removed (empty when all went).
    pub async fn shutdown(mut self) -> Vec<String> {
        self.cleaned = true;
        let in_flight = stop(&self.ctx, self.server.take());
        Ctx::wait_engine_calls(in_flight).await;
        let removed =
            docker::remove_labelled(&self.ctx.docker, INSTANCE_LABEL, &self.instance).await;
        removed.errors
    }
}

fn stop(ctx: &Ctx, server: Option<JoinHandle<()>>) -> Vec<tokio_util::task::TaskTracker> {
    ctx.shutdown.cancel();
    if let Some(s) = server {
        s.abort();
    }
    ctx.stop_all()
}

impl Drop for KubeDouble {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        let in_flight = stop(&self.ctx, self.server.take());
        // Drop cannot await: clean up on a thread with its own runtime, and wait for
        // it so a test's Docker objects are gone when the test ends. Engine calls in
        // flight run on the caller's runtime (which cannot progress while a
        // single-threaded one is blocked here): a bounded wait for them, then a
        // second pass after a pause catches a create the engine finished late.
        let instance = self.instance.clone();
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let wait = Ctx::wait_engine_calls(in_flight);
                let _ = tokio::time::timeout(Duration::from_secs(2), wait).await;
                let docker = Docker::connect_with_local_defaults().ok()?;
                docker::remove_labelled(&docker, INSTANCE_LABEL, &instance).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                Some(docker::remove_labelled(&docker, INSTANCE_LABEL, &instance).await)
            })
        });
        let _ = cleanup.join();
    }
}
