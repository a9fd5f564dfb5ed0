//! `deploy/` is checked with the real tools that consume it and against Slipway's own
//! rules, since no cluster, image pull or systemd boot can happen here:
//!
//! - each kustomize overlay is rendered by `kubectl kustomize` and every object is
//!   validated by `kubernetes-validate --strict` against Kubernetes 1.30 (unknown fields
//!   fail), then checked here: least-privilege RBAC in the build namespace only, the
//!   Slipway pod under the `restricted` Pod Security profile, the configuration it mounts
//!   accepted by Slipway's own config loader; the real server, started on that
//!   configuration, answers the probes' paths, and ha-postgres's replicas start together
//!   on one PostgreSQL database and one data dir;
//! - the Dockerfile is checked structurally (no linter, and nothing can be pulled to
//!   build it);
//! - `docker-compose config` validates the compose file; `systemd-analyze verify` and
//!   `security` check the unit.
//!
//! A missing tool fails the test (never a skip): `bash .ci/k8s-tools.sh` installs them.
//!
//! Long on purpose: one test per rule or object checked, each written out in full.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use clap::CommandFactory;
use serde_json::Value;
use tests::k8s_tools::{
    KUBERNETES_VERSION, NEWEST_KUBERNETES, kubernetes_validate_strict, run, text,
};
use tests::pod_security::restricted_violations;
use tests::yaml_docs::{parse_document, parse_documents};

pub(crate) const OVERLAYS: &[&str] = &["single-sqlite", "ha-postgres"];
pub(crate) const SERVER_NAMESPACE: &str = "slipway";
pub(crate) const BUILD_NAMESPACE: &str = "slipway-builds";
/// Builder pods of `kind: image` stages: Pod Security `privileged`, nothing else there.
pub(crate) const BUILDER_NAMESPACE: &str = "slipway-builders";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn deploy(path: &str) -> PathBuf {
    repo().join("deploy").join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------
// Kubernetes

/// `kubectl kustomize` of one overlay: the YAML text and its objects.
pub(crate) fn render(overlay: &str) -> (String, Vec<Value>) {
    let dir = deploy(&format!("kubernetes/overlays/{overlay}"));
    let out = run(Command::new("kubectl").arg("kustomize").arg(&dir));
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        text(&out.stderr)
    );
    let yaml = text(&out.stdout);
    let objects = parse_documents(&yaml).unwrap_or_else(|e| panic!("{overlay}: {e}"));
    assert!(!objects.is_empty(), "{overlay} rendered no objects");
    (yaml, objects)
}

pub(crate) fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

pub(crate) fn the_one<'a>(objects: &'a [Value], kind: &str, overlay: &str) -> &'a Value {
    let found = of_kind(objects, kind);
    assert_eq!(
        found.len(),
        1,
        "{overlay}: expected one {kind}, got {found:#?}"
    );
    found[0]
}

/// The server's StatefulSet (stable pod names keep its in-process runner's name).
pub(crate) fn server_set<'a>(objects: &'a [Value], overlay: &str) -> &'a Value {
    assert!(
        of_kind(objects, "Deployment").is_empty(),
        "{overlay}: the server runs as a StatefulSet, not a Deployment"
    );
    the_one(objects, "StatefulSet", overlay)
}

pub(crate) fn server_container(deployment: &Value) -> &Value {
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    containers
        .iter()
        .find(|c| c["name"] == "slipway")
        .expect("a container named slipway")
}

pub(crate) fn env_var<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == name)
}

/// The mount path of the pod volume `volume` in `container`.
fn mount_path<'a>(container: &'a Value, volume: &str) -> &'a str {
    container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == volume)
        .and_then(|m| m["mountPath"].as_str())
        .unwrap_or_else(|| panic!("no mount of volume {volume}"))
}

fn pod_volume<'a>(deployment: &'a Value, name: &str) -> &'a Value {
    deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no pod volume {name}"))
}

#[test]
fn every_object_of_every_overlay_passes_kubernetes_validate_strict() {
    let dir = tempfile::tempdir().unwrap();
    for overlay in OVERLAYS {
        let (yaml, objects) = render(overlay);
        let file = dir.path().join(format!("{overlay}.yaml"));
        std::fs::write(&file, &yaml).unwrap();
        // The oldest Kubernetes Slipway supports, and the newest schema the tool ships:
        // a field removed or renamed since would show there.
        for version in [KUBERNETES_VERSION, NEWEST_KUBERNETES] {
            if let Err(e) = kubernetes_validate_strict(&file, version, objects.len()) {
                panic!("{overlay}: {e}");
            }
        }
    }
}

#[test]
fn slipway_may_only_manage_pods_logs_and_secrets_in_the_build_and_builder_namespaces() {
    let expected: BTreeSet<(String, String, String)> = [
        ("pods", &["create", "get", "list", "watch", "delete"][..]),
        ("pods/log", &["get"][..]),
        ("pods/exec", &["create", "get"][..]),
        ("secrets", &["create", "get", "delete", "list"][..]),
    ]
    .iter()
    .flat_map(|(resource, verbs)| {
        verbs
            .iter()
            .map(move |verb| (String::new(), resource.to_string(), verb.to_string()))
    })
    .collect();

    for overlay in OVERLAYS {
        let (_, objects) = render(overlay);
        for kind in ["ClusterRole", "ClusterRoleBinding"] {
            assert!(
                of_kind(&objects, kind).is_empty(),
                "{overlay}: nothing cluster-wide, yet there is a {kind}"
            );
        }

        let roles = of_kind(&objects, "Role");
        let bindings = of_kind(&objects, "RoleBinding");
        let role_namespaces: BTreeSet<&str> = roles
            .iter()
            .filter_map(|r| r["metadata"]["namespace"].as_str())
            .collect();
        assert_eq!(roles.len(), 2, "{overlay}: one Role per namespace");
        assert_eq!(
            bindings.len(),
            2,
            "{overlay}: one RoleBinding per namespace"
        );
        assert_eq!(
            role_namespaces,
            BTreeSet::from([BUILD_NAMESPACE, BUILDER_NAMESPACE]),
            "{overlay}"
        );
        for role in roles {
            let namespace = role["metadata"]["namespace"].as_str().unwrap();
            let mut granted = BTreeSet::new();
            for rule in role["rules"].as_array().expect("rules") {
                assert!(
                    rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none(),
                    "{overlay}: unexpected rule {rule}"
                );
                for group in rule["apiGroups"].as_array().expect("apiGroups") {
                    for resource in rule["resources"].as_array().expect("resources") {
                        for verb in rule["verbs"].as_array().expect("verbs") {
                            let s = |v: &Value| v.as_str().expect("a string").to_string();
                            granted.insert((s(group), s(resource), s(verb)));
                        }
                    }
                }
            }
            assert_eq!(
                granted, expected,
                "{overlay}: the Role grants other than this"
            );

            let binding = bindings
                .iter()
                .find(|b| b["metadata"]["namespace"] == namespace)
                .unwrap_or_else(|| panic!("{overlay}: no RoleBinding in {namespace}"));
            assert_eq!(binding["roleRef"]["kind"], "Role");
            assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
            let subjects = binding["subjects"].as_array().expect("subjects");
            assert_eq!(subjects.len(), 1, "{overlay}: {subjects:?}");
            assert_eq!(subjects[0]["kind"], "ServiceAccount");
            assert_eq!(subjects[0]["namespace"], SERVER_NAMESPACE);
            assert_eq!(subjects[0]["name"], "slipway");
        }

        // The bound account is the one the Slipway pod runs as, and only that pod gets
        // its token.
        let account = the_one(&objects, "ServiceAccount", overlay);
        assert_eq!(account["metadata"]["name"], "slipway");
        assert_eq!(account["metadata"]["namespace"], SERVER_NAMESPACE);
        assert_eq!(account["automountServiceAccountToken"], false);
        let pod = &server_set(&objects, overlay)["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], account["metadata"]["name"]);
        assert_eq!(
            pod["automountServiceAccountToken"], true,
            "{overlay}: Slipway needs its token to reach the API server"
        );
    }
}

#[test]
fn namespaces_enforce_restricted_and_every_object_names_its_own() {
    for overlay in OVERLAYS {
        let (_, objects) = render(overlay);
        let namespaces: Vec<&Value> = of_kind(&objects, "Namespace");
        let names: BTreeSet<&str> = namespaces
            .iter()
            .filter_map(|n| n["metadata"]["name"].as_str())
            .collect();
        assert_eq!(
            names,
            BTreeSet::from([SERVER_NAMESPACE, BUILD_NAMESPACE, BUILDER_NAMESPACE]),
            "{overlay}"
        );
        for ns in &namespaces {
            // Only the builder namespace may hold pods below `restricted` (see
            // namespaces.yaml: rootless buildah needs a user namespace).
            let want = if ns["metadata"]["name"] == BUILDER_NAMESPACE {
                "privileged"
            } else {
                "restricted"
            };
            assert_eq!(
                ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], want,
                "{overlay}: {ns}"
            );
        }
        // No object may fall into whatever namespace kubectl's context points at; only
        // the RBAC objects live in the build and builder namespaces.
        for o in &objects {
            let kind = o["kind"].as_str().unwrap_or("");
            if kind == "Namespace" {
                continue;
            }
            let namespace = o["metadata"]["namespace"].as_str().unwrap_or("<none>");
            let allowed: &[&str] = match kind {
                "Role" | "RoleBinding" => &[BUILD_NAMESPACE, BUILDER_NAMESPACE],
                "NetworkPolicy" => &[SERVER_NAMESPACE, BUILD_NAMESPACE, BUILDER_NAMESPACE],
                // Cluster-scoped by nature: the builder pods' admission policy.
                "ValidatingAdmissionPolicy" | "ValidatingAdmissionPolicyBinding" => &["<none>"],
                _ => &[SERVER_NAMESPACE],
            };
            assert!(
                allowed.contains(&namespace),
                "{overlay}: {kind} {} in {namespace}",
                o["metadata"]["name"]
            );
        }
    }
}

#[test]
fn the_slipway_pod_meets_the_restricted_pod_security_profile() {
    for overlay in OVERLAYS {
        let (_, objects) = render(overlay);
        let deployment = server_set(&objects, overlay);
        let template = &deployment["spec"]["template"];
        let violations = restricted_violations(template);
        assert!(violations.is_empty(), "{overlay}: {violations:#?}");

        // Beyond the profile: nothing writable but the volumes, bounded resources.
        let c = server_container(deployment);
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        for kind in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                assert!(
                    c["resources"][kind][resource].is_string(),
                    "{overlay}: resources.{kind}.{resource} is not set"
                );
            }
        }
        // The image's user is the one the pod runs as.
        let (uid, gid) = dockerfile_user();
        let sc = &template["spec"]["securityContext"];
        assert_eq!(sc["runAsUser"], uid, "{overlay}");
        assert_eq!(sc["runAsGroup"], gid, "{overlay}");
        assert_eq!(
            sc["fsGroup"], gid,
            "{overlay}: the data volume must be writable"
        );
    }
}

#[test]
fn probes_and_port_match_what_the_server_serves() {
    for overlay in OVERLAYS {
        let (_, objects) = render(overlay);
        let deployment = server_set(&objects, overlay);
        let c = server_container(deployment);
        assert_eq!(c["args"], serde_json::json!(["server"]), "{overlay}");
        let config = mounted_config(&objects, deployment);
        let port = c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "http")
            .expect("a port named http");
        assert_eq!(port["containerPort"], config.listen.port(), "{overlay}");
        for (probe, path) in [
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
            ("startupProbe", "/healthz"),
        ] {
            assert_eq!(c[probe]["httpGet"]["path"], path, "{overlay}: {probe}");
            assert_eq!(c[probe]["httpGet"]["port"], "http", "{overlay}: {probe}");
        }
        let service = the_one(&objects, "Service", overlay);
        assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
        for (key, value) in service["spec"]["selector"].as_object().expect("selector") {
            assert_eq!(
                &template_labels(deployment)[key],
                value,
                "{overlay}: the Service selects no Slipway pod"
            );
        }
    }
}

fn template_labels(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["metadata"]["labels"]
}

/// The TOML the StatefulSet mounts (through SLIPWAY_CONFIG), loaded by Slipway's own
/// config loader, as the server would at start.
fn mounted_config(objects: &[Value], deployment: &Value) -> server::daemon::config::Config {
    let c = server_container(deployment);
    let path = env_var(c, "SLIPWAY_CONFIG").expect("SLIPWAY_CONFIG")["value"]
        .as_str()
        .expect("SLIPWAY_CONFIG is a value")
        .to_string();
    let map_name = pod_volume(deployment, "config")["configMap"]["name"]
        .as_str()
        .expect("the config volume is a ConfigMap");
    let mount = mount_path(c, "config");
    let key = path
        .strip_prefix(&format!("{mount}/"))
        .unwrap_or_else(|| panic!("SLIPWAY_CONFIG {path} is not in the config mount {mount}"));
    let map = of_kind(objects, "ConfigMap")
        .into_iter()
        .find(|m| m["metadata"]["name"] == map_name)
        .unwrap_or_else(|| panic!("no ConfigMap {map_name}"));
    let toml = map["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("ConfigMap {map_name} has no {key}"));
    load_config(toml, server::daemon::config::Settings::default())
}

fn load_config(
    toml: &str,
    over: server::daemon::config::Settings,
) -> server::daemon::config::Config {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("slipway.toml");
    std::fs::write(&file, toml).unwrap();
    server::daemon::config::Config::resolve(over, Some(&file))
        .unwrap_or_else(|e| panic!("Slipway refuses this configuration: {e}\n{toml}"))
}

#[test]
fn the_mounted_configuration_is_one_slipway_accepts() {
    for overlay in OVERLAYS {
        let (_, objects) = render(overlay);
        let deployment = server_set(&objects, overlay);
        let config = mounted_config(&objects, deployment);
        let c = server_container(deployment);
        // The server chmods its data dir to 0700, which it can do to a directory it
        // created, not to the volume's root (owned by root, group fsGroup).
        let data_mount = Path::new(mount_path(c, "data"));
        assert!(
            config.data_dir.starts_with(data_mount) && config.data_dir != data_mount,
            "{overlay}: data_dir {} must be strictly inside the data volume {}",
            config.data_dir.display(),
            data_mount.display()
        );
        assert!(
            config.listen.ip().is_unspecified(),
            "{overlay}: listen {} is unreachable from the Service",
            config.listen
        );
        // Builds never run inside the server's pod, next to the key and the token:
        // the in-process runner, when on, uses the Kubernetes backend.
        assert!(
            !config.in_process_runner
                || config.runner_backend == server::agent::backends::BackendKind::Kubernetes,
            "{overlay}: the in-process runner would run builds in the server's pod"
        );
    }
}

/// The probes' paths answer on a real server started with the pod's configuration (its
/// data dir moved into a temp dir; on SQLite for both overlays, the database URL being
/// the one setting the ha-postgres pod adds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probes_answer_on_a_server_running_the_mounted_configuration() {
    for overlay in OVERLAYS {
        let (_, objects) = render(overlay);
        let deployment = server_set(&objects, overlay);
        let c = server_container(deployment);
        let probes: Vec<String> = ["startupProbe", "livenessProbe", "readinessProbe"]
            .iter()
            .map(|p| {
                c[*p]["httpGet"]["path"]
                    .as_str()
                    .expect("an HTTP probe")
                    .to_string()
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let mut config = mounted_config(&objects, deployment);
        let data_dir = dir.path().join("data");
        config.database_url = format!("sqlite://{}/slipway.db?mode=rwc", data_dir.display());
        config.secret_key_file = data_dir.join("secret.key");
        config.data_dir = data_dir;
        let state = server::daemon::serve::build_state(config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(server::daemon::serve::run(listener, state.clone()));
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .unwrap();
        for path in &probes {
            let response = client
                .get(format!("http://{addr}{path}"))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{overlay}: GET {path}: {e}"));
            assert_eq!(response.status(), 200, "{overlay}: GET {path}");
        }
        state.shutdown.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(30), server)
            .await
            .expect("the server stops within 30 s")
            .unwrap()
            .unwrap();
    }
}

#[test]
fn single_sqlite_runs_one_replica_that_stops_before_the_next_starts() {
    let overlay = "single-sqlite";
    let (_, objects) = render(overlay);
    let deployment = server_set(&objects, overlay);
    assert_eq!(deployment["spec"]["replicas"], 1);
    // A StatefulSet replaces slipway-0 by deleting it and waiting until it is gone
    // before creating the next slipway-0: never two writers.
    assert_eq!(
        deployment["spec"]["updateStrategy"]["type"],
        "RollingUpdate"
    );
    assert_eq!(deployment["spec"]["podManagementPolicy"], "OrderedReady");
    let c = server_container(deployment);
    assert!(env_var(c, "SLIPWAY_DATABASE_URL").is_none());
    let config = mounted_config(&objects, deployment);
    assert!(
        config.database_url.starts_with("sqlite://")
            && config
                .database_url
                .contains(&*config.data_dir.to_string_lossy()),
        "{}",
        config.database_url
    );
    let claim = pod_volume(deployment, "data")["persistentVolumeClaim"]["claimName"].clone();
    let pvc = the_one(&objects, "PersistentVolumeClaim", overlay);
    assert_eq!(pvc["metadata"]["name"], claim);
    assert_eq!(
        pvc["spec"]["accessModes"],
        serde_json::json!(["ReadWriteOnce"])
    );
}

#[test]
fn ha_postgres_runs_replicas_on_a_database_url_from_a_secret() {
    let overlay = "ha-postgres";
    let (_, objects) = render(overlay);
    let deployment = server_set(&objects, overlay);
    let replicas = deployment["spec"]["replicas"].as_i64().unwrap();
    assert!(replicas >= 2, "replicas: {replicas}");
    assert_eq!(
        deployment["spec"]["updateStrategy"]["type"],
        "RollingUpdate"
    );
    // Started together, as ha_postgres_replicas_start_together… checks they can.
    assert_eq!(deployment["spec"]["podManagementPolicy"], "Parallel");
    let url = env_var(server_container(deployment), "SLIPWAY_DATABASE_URL")
        .expect("SLIPWAY_DATABASE_URL");
    assert!(
        url.get("value").is_none(),
        "the URL holds a password: {url}"
    );
    assert!(
        url["valueFrom"]["secretKeyRef"]["name"].is_string(),
        "{url}"
    );
    // Logs and mirrors are on disk: every replica must see the same volume.
    let pvc = the_one(&objects, "PersistentVolumeClaim", overlay);
    assert_eq!(
        pvc["spec"]["accessModes"],
        serde_json::json!(["ReadWriteMany"])
    );
    let pdb = the_one(&objects, "PodDisruptionBudget", overlay);
    for (key, value) in pdb["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        assert_eq!(&template_labels(deployment)[key], value);
    }
}

/// What the ha-postgres overlay relies on, with the real server: several replicas start
/// at once on one PostgreSQL database (migrations serialised by the migrator's lock)
/// and one shared data dir (the ReadWriteMany volume), and each becomes ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_postgres_replicas_start_together_on_one_database_and_data_dir() {
    use sqlx::{Connection, Executor};

    let (_, objects) = render("ha-postgres");
    let deployment = server_set(&objects, "ha-postgres");
    let replicas = deployment["spec"]["replicas"].as_u64().unwrap() as usize;
    let admin_url = std::env::var("SLIPWAY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://slipway:slipway@127.0.0.1:5432/postgres".into());
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is unreachable at {admin_url} ({e}); start it with \
                 `bash .ci/postgres.sh`"
            )
        });
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let name = format!("slipway_deploy_{}_{nanos}", std::process::id());
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();

    let outcome = tokio::spawn(start_replicas(
        mounted_config(&objects, deployment),
        database_url(&admin_url, &name),
        replicas,
    ))
    .await;
    admin
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await
        .unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn start_replicas(
    config: server::daemon::config::Config,
    database_url: String,
    replicas: usize,
) {
    let shared = tempfile::tempdir().unwrap();
    let mut config = config;
    config.database_url = database_url;
    config.data_dir = shared.path().join("data");
    config.secret_key_file = config.data_dir.join("secret.key");
    // All at once, as a Deployment's pods start.
    let states = futures::future::join_all(
        (0..replicas).map(|_| server::daemon::serve::build_state(config.clone())),
    )
    .await;
    let mut servers = Vec::new();
    for state in states {
        let state = state.expect("a replica failed to start");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = tokio::spawn(server::daemon::serve::run(listener, state.clone()));
        servers.push((state, addr, handle));
    }
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap();
    for (_, addr, _) in &servers {
        let response = client
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "replica at {addr} is not ready");
    }
    for (state, _, handle) in servers {
        state.shutdown.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(30), handle)
            .await
            .expect("the replica stops within 30 s")
            .unwrap()
            .unwrap();
    }
}

/// `postgres://u:p@host:port/db?x` with the database replaced by `name`.
fn database_url(server: &str, name: &str) -> String {
    let (base, query) = server.split_once('?').unwrap_or((server, ""));
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_end..].find('/') {
        Some(i) => &base[..authority_end + i],
        None => base,
    };
    match query {
        "" => format!("{base}/{name}"),
        q => format!("{base}/{name}?{q}"),
    }
}

#[test]
fn no_secret_is_committed_only_referenced() {
    for overlay in OVERLAYS {
        let (_, objects) = render(overlay);
        assert!(of_kind(&objects, "Secret").is_empty(), "{overlay}");
        let c = server_container(server_set(&objects, overlay));
        for name in ["SLIPWAY_SECRET_KEY", "SLIPWAY_DATABASE_URL"] {
            if let Some(var) = env_var(c, name) {
                assert!(
                    var.get("value").is_none() && var["valueFrom"]["secretKeyRef"].is_object(),
                    "{overlay}: {name} must come from a Secret: {var}"
                );
            }
        }
        assert!(env_var(c, "SLIPWAY_SECRET_KEY").is_some(), "{overlay}");
    }
}

// ---------------------------------------------------------------------------------------
// Every SLIPWAY_* variable deploy/ sets is one Slipway reads

/// The variables `slipway server` reads: its flags' `env`, plus the secret key.
fn server_variables() -> BTreeSet<String> {
    let cli = server::cli::Cli::command();
    let server = cli
        .find_subcommand("server")
        .expect("a `server` subcommand");
    let mut vars: BTreeSet<String> = server
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    vars.insert(server::crypto::SECRET_KEY_ENV.to_string());
    assert!(vars.contains("SLIPWAY_DATABASE_URL"), "{vars:?}");
    vars
}

#[test]
fn every_slipway_variable_in_deploy_is_one_the_server_reads() {
    let known = server_variables();
    let mut used: Vec<(String, String)> = Vec::new();
    for overlay in OVERLAYS {
        let (_, objects) = render(overlay);
        for e in server_container(server_set(&objects, overlay))["env"]
            .as_array()
            .into_iter()
            .flatten()
        {
            used.push((overlay.to_string(), e["name"].as_str().unwrap().to_string()));
        }
    }
    let compose = parse_document(&read(&deploy("compose.yaml"))).unwrap();
    for name in compose["services"]["slipway"]["environment"]
        .as_object()
        .expect("environment as a mapping")
        .keys()
    {
        used.push(("compose.yaml".into(), name.clone()));
    }
    for line in read(&deploy("slipway.service")).lines() {
        if let Some(assignment) = line.strip_prefix("Environment=") {
            let name = assignment.split('=').next().unwrap();
            used.push(("slipway.service".into(), name.to_string()));
        }
    }
    for (instr, args) in dockerfile_instructions() {
        if instr == "ENV" {
            let name = args.split(['=', ' ']).next().unwrap();
            used.push(("Dockerfile".into(), name.to_string()));
        }
    }
    let unknown: Vec<_> = used
        .iter()
        .filter(|(_, name)| name.starts_with("SLIPWAY_") && !known.contains(name))
        .collect();
    assert!(
        unknown.is_empty(),
        "not read by `slipway server` (known: {known:?}): {unknown:?}"
    );
    assert!(used.len() >= 8, "{used:?}");
}

// ---------------------------------------------------------------------------------------
// Dockerfile

/// Instructions of deploy/Dockerfile: keyword and arguments, continuation lines joined
/// and comments dropped.
fn dockerfile_instructions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read(&deploy("Dockerfile")).lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(part) = trimmed.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (instr, args) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        assert!(
            instr.chars().all(|c| c.is_ascii_uppercase()),
            "not an instruction: {current}"
        );
        out.push((instr.to_string(), args.trim().to_string()));
        current.clear();
    }
    assert!(current.is_empty(), "the Dockerfile ends in a continuation");
    out
}

fn dockerfile_user() -> (u32, u32) {
    let users: Vec<String> = dockerfile_instructions()
        .into_iter()
        .filter(|(i, _)| i == "USER")
        .map(|(_, a)| a)
        .collect();
    let user = users.last().expect("a USER instruction");
    let (uid, gid) = user.split_once(':').expect("USER uid:gid");
    let parse = |s: &str| -> u32 {
        s.parse()
            .unwrap_or_else(|_| panic!("USER must be numeric (runAsNonRoot checks it): {user}"))
    };
    (parse(uid), parse(gid))
}

fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not exec form (JSON): {args}: {e}"))
}

#[test]
fn the_dockerfile_builds_slipway_and_runs_it_as_a_non_root_server() {
    let instrs = dockerfile_instructions();
    let known = [
        "FROM",
        "RUN",
        "COPY",
        "ENV",
        "WORKDIR",
        "VOLUME",
        "EXPOSE",
        "USER",
        "ENTRYPOINT",
        "CMD",
        "ARG",
        "LABEL",
    ];
    for (i, _) in &instrs {
        assert!(known.contains(&i.as_str()), "unexpected instruction {i}");
    }
    let froms: Vec<&String> = instrs
        .iter()
        .filter(|(i, _)| i == "FROM")
        .map(|(_, a)| a)
        .collect();
    assert_eq!(
        froms.len(),
        2,
        "a build stage and a runtime stage: {froms:?}"
    );

    // Builder: the workspace's rust-version, on the same Debian release as the runtime.
    let cargo: toml::Table = read(&repo().join("Cargo.toml")).parse().unwrap();
    let rust_version = cargo["workspace"]["package"]["rust-version"]
        .as_str()
        .unwrap();
    let (builder_image, alias) = froms[0].split_once(" AS ").expect("FROM … AS builder");
    assert_eq!(alias, "builder");
    let tag = builder_image
        .strip_prefix("rust:")
        .expect("a rust: builder image");
    let (version, debian) = tag
        .split_once("-slim-")
        .expect("rust:<version>-slim-<debian>");
    assert_eq!(
        version, rust_version,
        "builder Rust vs workspace rust-version"
    );
    assert_eq!(
        froms[1].as_str(),
        format!("debian:{debian}-slim"),
        "runtime on the builder's Debian release (same glibc and libssl)"
    );

    let runs: Vec<&String> = instrs
        .iter()
        .filter(|(i, _)| i == "RUN")
        .map(|(_, a)| a)
        .collect();
    assert!(
        runs.iter()
            .any(|r| r.contains("cargo build --release --locked -p server --bin slipway")),
        "{runs:?}"
    );
    let copies: Vec<&String> = instrs
        .iter()
        .filter(|(i, _)| i == "COPY")
        .map(|(_, a)| a)
        .collect();
    assert!(
        copies
            .iter()
            .any(|c| c.starts_with("--from=builder ") && c.ends_with(" /usr/local/bin/slipway")),
        "{copies:?}"
    );
    // Every file copied from the context exists in the repository.
    for copy in copies.iter().filter(|c| !c.starts_with("--from=")) {
        let parts: Vec<&str> = copy.split_whitespace().collect();
        for source in &parts[..parts.len() - 1] {
            assert!(
                repo().join(source).exists(),
                "COPY source {source} is missing"
            );
        }
    }

    let last = |name: &str| -> String {
        instrs
            .iter()
            .rev()
            .find(|(i, _)| i == name)
            .map(|(_, a)| a.clone())
            .unwrap_or_else(|| panic!("no {name}"))
    };
    assert_eq!(exec_form(&last("ENTRYPOINT")), ["/usr/local/bin/slipway"]);
    assert_eq!(exec_form(&last("CMD")), ["server"]);
    let (uid, gid) = dockerfile_user();
    assert!(uid != 0 && gid != 0, "the image must not run as root");

    // The baked-in configuration: copied where SLIPWAY_CONFIG points, accepted by
    // Slipway, its data dir inside the VOLUME and its port EXPOSEd.
    let config_path = instrs
        .iter()
        .filter(|(i, _)| i == "ENV")
        .find_map(|(_, a)| a.strip_prefix("SLIPWAY_CONFIG="))
        .expect("ENV SLIPWAY_CONFIG=…")
        .to_string();
    assert!(
        copies.contains(&&format!("deploy/slipway.toml {config_path}")),
        "{copies:?}"
    );
    let config = load_config(
        &read(&deploy("slipway.toml")),
        server::daemon::config::Settings::default(),
    );
    let volumes = exec_form(&last("VOLUME"));
    assert!(
        volumes
            .iter()
            .any(|v| config.data_dir.starts_with(v) && config.data_dir != Path::new(v)),
        "data_dir {} is not inside a VOLUME {volumes:?}",
        config.data_dir.display()
    );
    assert_eq!(last("EXPOSE"), config.listen.port().to_string());
    assert!(config.listen.ip().is_unspecified(), "{}", config.listen);

    let ignore = read(&deploy("Dockerfile.dockerignore"));
    assert!(ignore.lines().any(|l| l.trim() == "**/target"), "{ignore}");
}

// ---------------------------------------------------------------------------------------
// Compose

fn compose_config(docker_gid: Option<&str>) -> Output {
    let mut cmd = Command::new("docker-compose");
    cmd.arg("-f")
        .arg(deploy("compose.yaml"))
        .arg("config")
        .current_dir(repo());
    // The file's own defaults, not whatever this shell exports.
    for var in [
        "SLIPWAY_DATABASE_URL",
        "SLIPWAY_PUBLIC_URL",
        "SLIPWAY_SECRET_KEY",
        "POSTGRES_PASSWORD",
        "DOCKER_GID",
        "COMPOSE_FILE",
        "COMPOSE_PROFILES",
    ] {
        cmd.env_remove(var);
    }
    if let Some(gid) = docker_gid {
        cmd.env("DOCKER_GID", gid);
    }
    run(&mut cmd)
}

#[test]
fn the_compose_file_validates_and_confines_the_server() {
    let out = compose_config(Some("4242"));
    assert!(
        out.status.success(),
        "docker-compose config: {}",
        text(&out.stderr)
    );
    let config = parse_document(&text(&out.stdout)).unwrap();
    let slipway = &config["services"]["slipway"];
    assert_eq!(slipway["command"], serde_json::json!(["server"]));
    assert_eq!(slipway["read_only"], true);
    assert_eq!(slipway["cap_drop"], serde_json::json!(["ALL"]));
    assert_eq!(
        slipway["security_opt"],
        serde_json::json!(["no-new-privileges:true"])
    );
    assert_eq!(slipway["group_add"], serde_json::json!(["4242"]));
    let volumes: Vec<&str> = slipway["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        volumes
            .iter()
            .any(|v| v.starts_with("/var/run/docker.sock:/var/run/docker.sock")),
        "{volumes:?}"
    );
    // Published on loopback only: a reverse proxy decides what reaches it.
    let ports = slipway["ports"].as_array().unwrap();
    assert!(
        ports
            .iter()
            .all(|p| p.as_str().is_some_and(|p| p.starts_with("127.0.0.1:"))),
        "{ports:?}"
    );
    // PostgreSQL only with its profile.
    assert_eq!(
        config["services"]["postgres"]["profiles"],
        serde_json::json!(["postgres"])
    );

    // The environment it gives the server is a configuration Slipway accepts.
    let env = &slipway["environment"];
    let settings = server::daemon::config::Settings {
        database_url: env["SLIPWAY_DATABASE_URL"].as_str().map(String::from),
        public_url: env["SLIPWAY_PUBLIC_URL"].as_str().map(String::from),
        ..Default::default()
    };
    let resolved = load_config(&read(&deploy("slipway.toml")), settings);
    assert!(
        resolved.database_url.starts_with("sqlite://")
            && resolved
                .database_url
                .contains(&*resolved.data_dir.to_string_lossy()),
        "the default database is not in the data dir: {}",
        resolved.database_url
    );
    // An empty SLIPWAY_SECRET_KEY means "use the key file", not an error.
    let empty = env["SLIPWAY_SECRET_KEY"].as_str().unwrap_or("");
    assert!(
        server::crypto::SecretKey::from_env_value(Some(std::ffi::OsStr::new(empty)))
            .unwrap()
            .is_none()
    );
}

#[test]
fn compose_refuses_to_start_without_the_docker_socket_group() {
    let out = compose_config(None);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("DOCKER_GID"), "{stderr}");
}

// ---------------------------------------------------------------------------------------
// systemd

/// The unit with ExecStart pointed at an existing executable: `verify` checks that the
/// binary exists, and /usr/local/bin/slipway is not installed on a test machine.
fn unit_for_verification(dir: &Path) -> PathBuf {
    let unit = read(&deploy("slipway.service"));
    assert!(unit.contains("ExecStart=/usr/local/bin/slipway server\n"));
    let exe = std::env::current_exe().unwrap();
    let unit = unit.replace(
        "ExecStart=/usr/local/bin/slipway ",
        &format!("ExecStart={} ", exe.display()),
    );
    let path = dir.join("slipway.service");
    std::fs::write(&path, unit).unwrap();
    path
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_verification(dir.path());
    let out = run(Command::new("systemd-analyze").arg("verify").arg(&unit));
    let stderr = text(&out.stderr);
    // verify exits 0 on unknown keys, but says so: any message is a failure here.
    assert!(
        out.status.success() && stderr.trim().is_empty() && out.stdout.is_empty(),
        "systemd-analyze verify: {}{stderr}",
        text(&out.stdout)
    );

    // systemd's own exposure score (0 = fully sandboxed, 10 = not at all): ≤ 2.0.
    let out = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager", "--threshold=20"])
        .arg(&unit));
    let report = text(&out.stdout);
    assert!(
        out.status.success(),
        "exposure above 2.0:\n{report}{}",
        text(&out.stderr)
    );
    assert!(report.contains("Overall exposure level"), "{report}");

    let text = read(&deploy("slipway.service"));
    for directive in [
        "DynamicUser=yes",
        "StateDirectory=slipway",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
    ] {
        assert!(text.contains(directive), "missing {directive:?}");
    }
}
