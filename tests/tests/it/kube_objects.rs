//! Golden tests of what the Kubernetes backend sends: the Pod and the Secret that
//! `runner::kubernetes::pod::stage_objects` builds for representative stages, as
//! pretty JSON under `tests/golden/kube/` (`<case>.pod.json`, `<case>.secret.json`).
//! Run with `UPDATE_GOLDEN=1` to rewrite them after checking the diff.
//!
//! Beyond the snapshots, every generated object must pass `kubernetes-validate
//! --strict` (unknown fields fail) and the pods the `restricted` Pod Security
//! profile, and the properties the backend promises are asserted one by one: no
//! secret value anywhere in a pod, secret env vars as `secretKeyRef`s into the
//! stage's Secret, no service-account token, `restartPolicy: Never`, requests =
//! limits on every container, an `activeDeadlineSeconds`.
//!
//! Pure: no API server or Docker is needed, only `python3 -m kubernetes_validate`
//! (`bash .ci/k8s-tools.sh`).
//!
//! Long on purpose: one test per rule or object checked, each written out in full.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use runner::kubernetes::{BuilderOptions, builder, names, pod};
use runner::{
    ContainerSettings, KubernetesOptions, PodSettings, ServiceSpec, StageSpec, StepSpec, Toleration,
};
use serde_json::Value;
use tests::k8s_tools::{KUBERNETES_VERSION, NEWEST_KUBERNETES, kubernetes_validate_strict};
use tests::pod_security::restricted_violations;

/// The owner uid the backend would read from the created pod.
const POD_UID: &str = "uid-1";
const RUNNER: &str = "runner-1";
const NAMESPACE: &str = "builds";

/// One representative stage: the spec and the backend options it is built with.
struct Case {
    name: &'static str,
    spec: StageSpec,
    options: KubernetesOptions,
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn step(name: &str, script: &str, vars: &[(&str, &str)]) -> StepSpec {
    StepSpec {
        env: env(vars),
        ..StepSpec::new(name, script)
    }
}

fn options() -> KubernetesOptions {
    KubernetesOptions::new(RUNNER, NAMESPACE)
}

/// Secret values of the `secrets` case. One holds characters JSON escapes, so the
/// search for it in a pod also looks for its escaped form.
const DB_PASSWORD: &str = "s3cr3t-pw";
const API_TOKEN: &str = "tok_live_0123456789abcdef";
const NPM_TOKEN: &str = "npm_AbCdEfGhIjKlMnOp";
const ODD_SECRET: &str = "q\"uo\\te\n$(x)";
const UNUSED_SECRET: &str = "not-used-by-this-stage";

fn cases() -> Vec<Case> {
    // (a) Two steps, stage and step env (a step's value wins), a workdir, the
    // backend's default resources, no timeout.
    let plain = StageSpec {
        image: Some("docker.io/library/rust:1.89".into()),
        env: env(&[("CARGO_TERM_COLOR", "always"), ("RUST_LOG", "info")]),
        steps: vec![
            step(
                "fetch",
                "cargo fetch --locked",
                &[("CARGO_NET_OFFLINE", "false")],
            ),
            step("test", "cargo test --workspace", &[("RUST_LOG", "debug")]),
        ],
        container: ContainerSettings {
            workdir: Some("crates/app/".into()),
            ..Default::default()
        },
        ..StageSpec::new("build")
    };

    // (b) Secrets in stage, step and service env; a postgres-like service with env
    // and command; a numeric user; memory and CPU; a timeout.
    let secrets = StageSpec {
        image: Some("docker.io/library/node:22-alpine".into()),
        env: env(&[
            (
                "DATABASE_URL",
                &format!("postgres://app:{DB_PASSWORD}@db:5432/app"),
            ),
            ("API_TOKEN", API_TOKEN),
            ("ODD", ODD_SECRET),
            ("NODE_ENV", "test"),
        ]),
        steps: vec![
            step("install", "npm ci", &[("NPM_TOKEN", NPM_TOKEN)]),
            step("integration", "npm run test:integration", &[]),
        ],
        timeout: Some(Duration::from_secs(30 * 60)),
        secrets: vec![
            DB_PASSWORD.into(),
            API_TOKEN.into(),
            NPM_TOKEN.into(),
            ODD_SECRET.into(),
            UNUSED_SECRET.into(),
        ],
        services: vec![ServiceSpec {
            name: "db".into(),
            image: "docker.io/library/postgres:16-alpine".into(),
            env: env(&[
                ("POSTGRES_USER", "app"),
                ("POSTGRES_PASSWORD", DB_PASSWORD),
                ("POSTGRES_DB", "app"),
            ]),
            command: Some(vec!["postgres".into(), "-c".into(), "fsync=off".into()]),
            ready: None,
        }],
        container: ContainerSettings {
            user: Some("1001:1001".into()),
            memory_bytes: Some(3 * 1024 * 1024 * 1024),
            cpu_millis: Some(1500),
            ..Default::default()
        },
        ..StageSpec::new("integration")
    };

    // (c) The pipeline's pod settings, and pull secrets from the runner's options.
    let pod_settings = StageSpec {
        image: Some("registry.example.com/team/builder:2025.1".into()),
        steps: vec![step("build", "make", &[])],
        pod: PodSettings {
            node_selector: env(&[("kubernetes.io/arch", "arm64"), ("pool", "ci")]),
            tolerations: vec![
                Toleration {
                    key: Some("dedicated".into()),
                    operator: Some("Equal".into()),
                    value: Some("ci".into()),
                    effect: Some("NoSchedule".into()),
                    toleration_seconds: None,
                },
                Toleration {
                    key: Some("node.kubernetes.io/unreachable".into()),
                    operator: Some("Exists".into()),
                    value: None,
                    effect: Some("NoExecute".into()),
                    toleration_seconds: Some(300),
                },
            ],
            service_account: Some("ci-builder".into()),
        },
        ..StageSpec::new("arm64")
    };
    let mut pull = options();
    pull.image_pull_secrets = vec!["regcred".into(), "ghcr-pull".into()];

    // (d) Labels from the spec and a stage id no label or name could hold as is.
    let weird_id = format!(
        "test (features=full, os=ünïcødé ✓) {}",
        "very-long-".repeat(30)
    );
    let labelled = StageSpec {
        image: Some("docker.io/library/busybox:1.37".into()),
        steps: vec![step("Say hi! 👋", "echo hi", &[])],
        labels: env(&[
            ("repo", "acme/web-app"),
            ("run", "1234"),
            ("Pull Request", "#42 (from fork)"),
        ]),
        ..StageSpec::new(weird_id)
    };

    vec![
        Case {
            name: "plain",
            spec: plain,
            options: options(),
        },
        Case {
            name: "secrets",
            spec: secrets,
            options: options(),
        },
        Case {
            name: "pod_settings",
            spec: pod_settings,
            options: pull,
        },
        Case {
            name: "labels_weird_id",
            spec: labelled,
            options: options(),
        },
    ]
}

/// What a case generates, serialized as the API server would receive it.
struct Generated {
    name: &'static str,
    spec: StageSpec,
    pod: Value,
    secret: Option<Value>,
}

/// The pod name the backend would choose, with its random suffix fixed so the
/// output is deterministic.
fn fixed_pod_name(stage_id: &str) -> String {
    let random = names::pod_name(stage_id);
    let (readable, suffix) = random.rsplit_once('-').expect("a suffix");
    format!("{readable}-{}", "0".repeat(suffix.len()))
}

fn generate(case: Case) -> Generated {
    let name = fixed_pod_name(&case.spec.id);
    let objects = pod::stage_objects(&case.spec, &name, &case.options)
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let secret = objects.secret.map(|mut s: Secret| {
        s.metadata.owner_references = Some(vec![pod::owned_by_pod(&name, POD_UID)]);
        serde_json::to_value(&s).expect("a Secret serializes")
    });
    let pod: Pod = objects.pod;
    Generated {
        name: case.name,
        spec: case.spec,
        pod: serde_json::to_value(&pod).expect("a Pod serializes"),
        secret,
    }
}

fn generated() -> Vec<Generated> {
    cases().into_iter().map(generate).collect()
}

const REGISTRY_PASSWORD: &str = "registry-pw-5b1c";

/// The builder pod and registry Secret of an image stage that pushes with
/// credentials, builds a target with args and labels, from a context whose
/// Dockerfile lies outside it ([`runner::kubernetes::builder`]).
fn builder_generated() -> (Value, Value) {
    let image = runner::ImageSpec {
        dockerfile: "docker/app.Dockerfile".into(),
        context: "./services/app".into(),
        target: Some("runtime".into()),
        build_args: env(&[("VERSION", "1.4.2")]),
        labels: env(&[("org.opencontainers.image.revision", "0123abcd")]),
        push: Some("registry.example.com:5000/team/app:1.4.2".into()),
        registry_auth: Some(runner::RegistryAuth {
            username: "ci".into(),
            password: REGISTRY_PASSWORD.into(),
        }),
    };
    let name = fixed_pod_name("image-build");
    let paths = builder::BuildPaths::of(&image).unwrap();
    let mut b = BuilderOptions::new("quay.io/buildah/stable:v1.38", "builders");
    b.insecure_registries = vec!["registry.example.com:5000".into()];
    let labels = names::labels(RUNNER, "run-7.image-build", &BTreeMap::new());
    let (pod, secret) =
        builder::builder_objects(&image, &name, &paths, labels, &options(), &b).unwrap();
    let mut secret = secret.expect("a push with credentials has a Secret");
    secret.metadata.owner_references = Some(vec![pod::owned_by_pod(&name, POD_UID)]);
    (
        serde_json::to_value(&pod).unwrap(),
        serde_json::to_value(&secret).unwrap(),
    )
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/kube")
}

fn updating() -> bool {
    std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1")
}

/// Compares (or with UPDATE_GOLDEN=1 writes) one golden file; `None` when `actual`
/// is `None` means the file must not exist. Returns a failure note.
fn check_golden(path: &Path, actual: Option<&Value>) -> Option<String> {
    let actual = actual.map(|v| serde_json::to_string_pretty(v).expect("serializes") + "\n");
    let expected = std::fs::read_to_string(path).ok();
    if expected == actual {
        return None;
    }
    if updating() {
        match &actual {
            Some(text) => std::fs::write(path, text).expect("writing a golden file"),
            None => std::fs::remove_file(path).expect("removing a stale golden file"),
        }
        return None;
    }
    let (expected, actual) = (
        expected.as_deref().unwrap_or("<no file>\n"),
        actual.as_deref().unwrap_or("<no file>\n"),
    );
    Some(format!(
        "--- {} ---\n{}\nactual:\n{actual}",
        path.display(),
        first_difference(expected, actual)
    ))
}

/// Where two texts first differ, by line (the whole actual text follows it).
fn first_difference(expected: &str, actual: &str) -> String {
    let mut lines = expected.lines().zip(actual.lines());
    let same = lines.by_ref().take_while(|(e, a)| e == a).count();
    let at = |text: &str| text.lines().nth(same).unwrap_or("<end>").to_owned();
    format!(
        "first difference at line {}:\n  expected: {}\n  actual:   {}",
        same + 1,
        at(expected),
        at(actual)
    )
}

#[test]
fn pods_and_secrets_match_the_golden_files() {
    let dir = golden_dir();
    if updating() {
        std::fs::create_dir_all(&dir).unwrap();
    }
    let mut failures = Vec::new();
    let mut expected_files = Vec::new();
    for g in generated() {
        for (kind, object) in [("pod", Some(&g.pod)), ("secret", g.secret.as_ref())] {
            let file = format!("{}.{kind}.json", g.name);
            failures.extend(check_golden(&dir.join(&file), object));
            if object.is_some() {
                expected_files.push(file);
            }
        }
    }
    let (builder_pod, builder_secret) = builder_generated();
    for (kind, object) in [("pod", &builder_pod), ("secret", &builder_secret)] {
        let file = format!("image_build.{kind}.json");
        failures.extend(check_golden(&dir.join(&file), Some(object)));
        expected_files.push(file);
    }
    // No golden file without a case (a renamed case leaves its old files behind).
    for entry in std::fs::read_dir(&dir).expect("tests/golden/kube exists") {
        let file = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !expected_files.contains(&file) {
            if updating() {
                std::fs::remove_file(dir.join(&file)).expect("removing a stale golden file");
            } else {
                failures.push(format!("{file}: no case generates it (remove it)"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} golden file(s) differ (UPDATE_GOLDEN=1 to bless):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn every_object_passes_kubernetes_validate_strict() {
    let mut yaml = String::new();
    let mut count = 0;
    for g in generated() {
        for object in std::iter::once(&g.pod).chain(&g.secret) {
            // Typed k8s-openapi objects carry their apiVersion and kind.
            assert_eq!(object["apiVersion"], "v1", "{}: {object}", g.name);
            assert!(object["kind"] == "Pod" || object["kind"] == "Secret");
            // JSON is YAML: one document per object.
            yaml.push_str("---\n");
            yaml.push_str(&serde_json::to_string_pretty(object).unwrap());
            yaml.push('\n');
            count += 1;
        }
    }
    let (builder_pod, builder_secret) = builder_generated();
    for object in [&builder_pod, &builder_secret] {
        yaml.push_str("---\n");
        yaml.push_str(&serde_json::to_string_pretty(object).unwrap());
        yaml.push('\n');
        count += 1;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stage-objects.yaml");
    std::fs::write(&file, &yaml).unwrap();
    for version in [KUBERNETES_VERSION, NEWEST_KUBERNETES] {
        if let Err(e) = kubernetes_validate_strict(&file, version, count) {
            panic!("{e}");
        }
    }
}

#[test]
fn every_pod_meets_the_restricted_pod_security_profile() {
    for g in generated() {
        let violations = restricted_violations(&g.pod);
        assert!(violations.is_empty(), "{}: {violations:#?}", g.name);
    }
}

/// A builder pod departs from `restricted` exactly where rootless buildah needs it
/// (so it belongs in a namespace of its own), and only in its `build` container;
/// the registry password is only in its Secret.
#[test]
fn the_builder_pod_lifts_only_what_rootless_buildah_needs() {
    let (pod, secret) = builder_generated();
    let mut violations = restricted_violations(&pod);
    violations.sort();
    assert_eq!(violations.len(), 5, "{violations:#?}");
    for v in &violations {
        assert!(v.contains("build"), "only the build container: {v}");
    }
    let joined = violations.join("\n");
    for needed in ["allowPrivilegeEscalation", "SETUID", "seccomp", "AppArmor"] {
        assert!(
            joined.to_lowercase().contains(&needed.to_lowercase()),
            "{needed}: {joined}"
        );
    }
    let build = container(&pod, builder::BUILD_CONTAINER);
    assert_eq!(build["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
    assert_eq!(pod["metadata"]["namespace"], "builders");

    let pod_text = serde_json::to_string(&pod).unwrap();
    assert!(!pod_text.contains(REGISTRY_PASSWORD));
    assert_eq!(secret["type"], "kubernetes.io/dockerconfigjson");
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let config = b64
        .decode(secret["data"][".dockerconfigjson"].as_str().unwrap())
        .unwrap();
    let config: Value = serde_json::from_slice(&config).unwrap();
    let auth = b64
        .decode(
            config["auths"]["registry.example.com:5000"]["auth"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    assert_eq!(auth, format!("ci:{REGISTRY_PASSWORD}").into_bytes());
    // Arguments reach buildah as argv, after the script: never through a shell parser.
    let command: Vec<&str> = build["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(&command[..2], ["sh", "-c"]);
    let args = &command[4..];
    assert!(args.contains(&"VERSION=1.4.2"), "{args:?}");
    assert!(args.contains(&"--tls-verify=false"), "{args:?}");
    assert_eq!(args.last(), Some(&"/slipway/workspace/services/app"));
}

/// Every container of a pod: init containers (helpers, services, steps) and the
/// main one.
fn containers(pod: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|list| pod["spec"][*list].as_array().into_iter().flatten())
        .collect()
}

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    containers(pod)
        .into_iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The env a container was meant to get (what the spec says), by container name.
fn intended_env(spec: &StageSpec) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (i, s) in spec.services.iter().enumerate() {
        out.insert(names::service_container(i, &s.name), s.env.clone());
    }
    for (i, s) in spec.steps.iter().enumerate() {
        let mut e = spec.env.clone();
        e.extend(s.env.clone());
        out.insert(names::step_container(i), e);
    }
    out
}

#[test]
fn no_secret_value_is_in_a_pod_and_secret_env_comes_from_the_stage_secret() {
    let mut secret_refs = 0;
    for g in generated() {
        let pod_name = g.pod["metadata"]["name"].as_str().unwrap();
        let pod_text = serde_json::to_string(&g.pod).unwrap();
        for value in &g.spec.secrets {
            let escaped = serde_json::to_string(value).unwrap();
            let escaped = escaped.trim_matches('"');
            assert!(
                !pod_text.contains(value.as_str()) && !pod_text.contains(escaped),
                "{}: a secret value is in the pod",
                g.name
            );
        }
        let data = g
            .secret
            .as_ref()
            .map(|s| s["stringData"].as_object().expect("stringData").clone())
            .unwrap_or_default();
        let mut used_keys = Vec::new();
        for (container_name, intended) in intended_env(&g.spec) {
            let c = container(&g.pod, &container_name);
            let vars = c["env"].as_array().cloned().unwrap_or_default();
            assert_eq!(vars.len(), intended.len(), "{}: {container_name}", g.name);
            for var in &vars {
                let name = var["name"].as_str().unwrap();
                let want = &intended[name];
                let holds_secret = g.spec.secrets.iter().any(|s| want.contains(s.as_str()));
                if holds_secret {
                    assert!(var.get("value").is_none(), "{}: {name}", g.name);
                    let r = &var["valueFrom"]["secretKeyRef"];
                    assert_eq!(r["name"], pod_name, "{}: {name} refers elsewhere", g.name);
                    assert_eq!(r["optional"], false, "{}: {name}", g.name);
                    let key = r["key"].as_str().unwrap();
                    assert_eq!(data.get(key), Some(&Value::from(want.as_str())), "{key}");
                    used_keys.push(key.to_owned());
                    secret_refs += 1;
                } else {
                    assert_eq!(var["value"], want.as_str(), "{}: {name}", g.name);
                }
            }
        }
        // The Secret holds exactly what the pod refers to; none without a use.
        used_keys.sort();
        let mut keys: Vec<String> = data.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, used_keys, "{}", g.name);
        assert_eq!(g.secret.is_some(), !keys.is_empty(), "{}", g.name);

        if let Some(secret) = &g.secret {
            let meta = &secret["metadata"];
            assert_eq!(meta["name"], pod_name, "{}", g.name);
            assert_eq!(meta["namespace"], g.pod["metadata"]["namespace"]);
            assert_eq!(meta["labels"], g.pod["metadata"]["labels"], "{}", g.name);
            assert_eq!(secret["type"], "Opaque");
            assert_eq!(secret["immutable"], true);
            assert!(
                secret.get("data").is_none(),
                "{}: values go as stringData",
                g.name
            );
            let owners = meta["ownerReferences"].as_array().unwrap();
            assert_eq!(owners.len(), 1);
            let owner = &owners[0];
            assert_eq!(
                (&owner["apiVersion"], &owner["kind"], &owner["name"]),
                (
                    &Value::from("v1"),
                    &Value::from("Pod"),
                    &Value::from(pod_name)
                )
            );
            assert_eq!(owner["uid"], POD_UID);
            assert_eq!(owner["controller"], true);
            assert!(owner.get("blockOwnerDeletion").is_none());
        }
    }
    // Stage, step and service env each had one (the case would otherwise be moot).
    assert!(secret_refs >= 6, "{secret_refs} secret env vars");
}

#[test]
fn pods_run_once_with_bounded_resources_a_deadline_and_no_token() {
    for g in generated() {
        let spec = &g.pod["spec"];
        assert_eq!(spec["restartPolicy"], "Never", "{}", g.name);
        assert_eq!(spec["automountServiceAccountToken"], false, "{}", g.name);
        assert_eq!(spec["enableServiceLinks"], false, "{}", g.name);
        let deadline = spec["activeDeadlineSeconds"]
            .as_u64()
            .unwrap_or_else(|| panic!("{}: no activeDeadlineSeconds", g.name));
        match g.spec.timeout {
            // The runner enforces the timeout; the deadline is a later backstop.
            Some(t) => assert!(deadline > t.as_secs(), "{}: {deadline}", g.name),
            None => assert_eq!(deadline, options().max_stage_duration.as_secs()),
        }
        for c in containers(&g.pod) {
            let name = c["name"].as_str().unwrap();
            let r = &c["resources"];
            assert!(
                r["requests"]["cpu"].is_string() && r["requests"]["memory"].is_string(),
                "{}: {name}: {r}",
                g.name
            );
            assert_eq!(r["requests"], r["limits"], "{}: {name}", g.name);
        }
    }
}

#[test]
fn the_stage_settings_reach_the_pod() {
    let all = generated();
    let by_name = |n: &str| all.iter().find(|g| g.name == n).unwrap();

    let plain = &by_name("plain").pod;
    let defaults = options();
    for i in 0..2 {
        let step = container(plain, &names::step_container(i));
        assert_eq!(step["workingDir"], "/workspace/crates/app");
        assert_eq!(step["image"], "docker.io/library/rust:1.89");
        assert_eq!(step["command"][2], pod::script_path(i));
        assert_eq!(
            step["resources"]["limits"]["memory"],
            format!("{}Mi", defaults.memory_bytes / (1024 * 1024))
        );
        assert_eq!(
            step["resources"]["limits"]["cpu"],
            format!("{}m", defaults.cpu_millis)
        );
    }
    // Steps run in order after `source`; `workspace` keeps the files afterwards.
    let init: Vec<&str> = plain["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(init, ["source", "step-0", "step-1"]);
    assert_eq!(plain["spec"]["containers"][0]["name"], "workspace");
    assert_eq!(plain["spec"]["securityContext"]["runAsUser"], 1000);

    let secrets = &by_name("secrets").pod;
    let sc = &secrets["spec"]["securityContext"];
    assert_eq!(
        (&sc["runAsUser"], &sc["runAsGroup"]),
        (&1001.into(), &1001.into())
    );
    assert_eq!(sc["fsGroup"], 1001);
    let db = container(secrets, "svc-0-db");
    assert_eq!(db["restartPolicy"], "Always", "a native sidecar");
    assert_eq!(
        db["args"],
        serde_json::json!(["postgres", "-c", "fsync=off"])
    );
    assert!(db.get("command").is_none(), "the image's entrypoint stays");
    assert_eq!(
        secrets["spec"]["hostAliases"],
        serde_json::json!([{"ip": "127.0.0.1", "hostnames": ["db"]}])
    );
    let step = container(secrets, "step-0");
    assert_eq!(step["resources"]["limits"]["memory"], "3072Mi");
    assert_eq!(step["resources"]["limits"]["cpu"], "1500m");
    assert_eq!(secrets["spec"]["activeDeadlineSeconds"], 30 * 60 + 300);

    let settings = &by_name("pod_settings").pod["spec"];
    assert_eq!(
        settings["nodeSelector"],
        serde_json::json!({"kubernetes.io/arch": "arm64", "pool": "ci"})
    );
    assert_eq!(settings["tolerations"][1]["tolerationSeconds"], 300);
    assert_eq!(settings["tolerations"][1]["operator"], "Exists");
    assert_eq!(settings["serviceAccountName"], "ci-builder");
    assert_eq!(settings["automountServiceAccountToken"], false);
    assert_eq!(
        settings["imagePullSecrets"],
        serde_json::json!([{"name": "regcred"}, {"name": "ghcr-pull"}])
    );
    // Every stage pod tolerates a lost node only for `node_lost_timeout` (#14 item 8).
    let node_lost = |key: &str| {
        serde_json::json!({"key": key, "operator": "Exists", "effect": "NoExecute",
            "tolerationSeconds": defaults.node_lost_timeout.as_secs()})
    };
    for g in &all {
        if g.name != "pod_settings" && g.name != "image_build" {
            assert_eq!(
                g.pod["spec"]["tolerations"],
                serde_json::json!([
                    node_lost("node.kubernetes.io/unreachable"),
                    node_lost("node.kubernetes.io/not-ready")
                ]),
                "{}",
                g.name
            );
        }
        if g.name != "pod_settings" {
            for field in ["nodeSelector", "serviceAccountName", "imagePullSecrets"] {
                assert!(g.pod["spec"].get(field).is_none(), "{}: {field}", g.name);
            }
        }
    }
}

/// `[prefix/]name` label keys and values as the API server checks them.
fn valid_label_key(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| p.len() <= 253 && p.split('.').all(dns_label));
    prefix_ok && !name.is_empty() && valid_label_value(name)
}

fn valid_label_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && v.chars().next().is_none_or(|c| c.is_ascii_alphanumeric())
        && v.chars().last().is_none_or(|c| c.is_ascii_alphanumeric())
}

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Names and labels are checked by the API server, not by the schema
/// kubernetes-validate uses: they are checked here.
#[test]
fn names_labels_and_keys_are_what_the_api_server_accepts() {
    for g in generated() {
        let meta = &g.pod["metadata"];
        let name = meta["name"].as_str().unwrap();
        assert!(dns_label(name), "{}: pod name {name}", g.name);
        for c in containers(&g.pod) {
            let c = c["name"].as_str().unwrap();
            assert!(dns_label(c), "{}: container {c}", g.name);
        }
        for (k, v) in meta["labels"].as_object().unwrap() {
            assert!(valid_label_key(k), "{}: label key {k}", g.name);
            assert!(
                valid_label_value(v.as_str().unwrap()),
                "{}: {k}={v}",
                g.name
            );
        }
        for key in g
            .secret
            .iter()
            .flat_map(|s| s["stringData"].as_object().unwrap().keys())
        {
            assert!(
                key.len() <= 253
                    && key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)),
                "{}: secret key {key}",
                g.name
            );
        }
        // The exact stage id and the step names survive in annotations.
        assert_eq!(
            meta["annotations"][names::STAGE_ANNOTATION],
            g.spec.id.as_str()
        );
        let steps: Vec<String> = serde_json::from_str(
            meta["annotations"][names::STEPS_ANNOTATION]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        let want: Vec<String> = g.spec.steps.iter().map(|s| s.name.clone()).collect();
        assert_eq!(steps, want, "{}", g.name);
        assert_eq!(meta["labels"][names::RUNNER_LABEL], RUNNER);
        assert_eq!(meta["labels"][names::MANAGED_BY_LABEL], names::MANAGED_BY);
        assert_eq!(meta["namespace"], NAMESPACE);
    }

    let all = generated();
    let weird = all.iter().find(|g| g.name == "labels_weird_id").unwrap();
    let labels = &weird.pod["metadata"]["labels"];
    assert_eq!(
        labels["slipway.io/repo"],
        names::label_value("acme/web-app")
    );
    assert_eq!(labels["slipway.io/run"], "1234");
    assert_eq!(
        labels["slipway.io/pull-request"],
        names::label_value("#42 (from fork)")
    );
    assert_eq!(
        labels[names::STAGE_LABEL],
        names::label_value(&weird.spec.id)
    );
    let name = weird.pod["metadata"]["name"].as_str().unwrap();
    assert!(
        name.starts_with("slipway-test-features-full-os-n-c-d-very-long-"),
        "{name}"
    );
}

/// What the runner agent sends for a Kubernetes stage that has secrets, a registry
/// login and an adoption record: no secret value and no lease token anywhere in any
/// object, except the stage Secret's keys that a container reads (`secretKeyRef`).
/// The adoption record a restarted runner resumes from holds neither (#14 item 4).
#[test]
fn no_secret_value_or_lease_token_is_anywhere_but_the_keys_the_steps_read() {
    use server::agent::stage_spec::{OnMissing, stage_spec};
    use server::protocol::{AdoptionRecord, LeaseResponse};

    const LEASE_TOKEN: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
    const REGISTRY_AUTH: &str =
        "{\"auths\":{\"registry.example\":{\"auth\":\"dXNlcjpyZWctcHc=\"}}}";
    let yaml = "stages:
  build:
    image: registry.example/team/builder:1
    env:
      DB_PASSWORD: ${{ secrets.DB_PASSWORD }}
    steps:
      - name: test
        run: ./test.sh
        env:
          API_TOKEN: ${{ secrets.API_TOKEN }}
";
    let pipeline = pipelines::parse(".slipway.yml", yaml).expect("valid yaml");
    let ctx = pipelines::EventContext {
        branch: Some("main".into()),
        sha: "0".repeat(40),
        ..Default::default()
    };
    let planned = pipelines::plan(&pipeline, &ctx)
        .expect("plan")
        .stages
        .remove(0);
    let secrets = BTreeMap::from([
        ("DB_PASSWORD".to_string(), DB_PASSWORD.to_string()),
        ("API_TOKEN".to_string(), API_TOKEN.to_string()),
        ("REGISTRY_AUTH".to_string(), REGISTRY_AUTH.to_string()),
    ]);
    let lease = LeaseResponse {
        stage_id: 7,
        run_id: 3,
        lease_token: LEASE_TOKEN.into(),
        attempt: 1,
        stage_key: "build".into(),
        spec: planned.clone(),
        steps: vec!["test".into()],
        log_offsets: vec![0],
        secrets: secrets.clone(),
        repo: "team/app".into(),
        sha: "0".repeat(40),
        git_ref: "refs/heads/main".into(),
        run_number: 3,
        run_url: "https://ci.example/repos/team/app/runs/3".into(),
        artifacts: Vec::new(),
        cache_writable: true,
    };
    let mut spec = stage_spec(
        &planned,
        "build",
        runner::Source::Empty,
        &secrets,
        OnMissing::Error,
    )
    .expect("a stage spec");
    // As the agent does (server/src/agent/stage.rs).
    spec.adoption = Some(serde_json::to_string(&AdoptionRecord::from(&lease)).unwrap());
    let g = generate(Case {
        name: "adoption",
        spec,
        options: options(),
    });

    // Every string in the pod, and in the Secret outside the keys containers read.
    let read_keys: Vec<String> = containers(&g.pod)
        .iter()
        .flat_map(|c| c["env"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| {
            v["valueFrom"]["secretKeyRef"]["key"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert!(
        !read_keys.is_empty(),
        "the steps read their secrets from the Secret"
    );
    let mut secret = g.secret.clone().expect("a stage Secret");
    let data = secret["stringData"].as_object_mut().unwrap();
    let record = data
        .get(pod::ADOPTION_KEY)
        .and_then(Value::as_str)
        .expect("an adoption record")
        .to_string();
    for key in &read_keys {
        data.remove(key);
    }
    let elsewhere = [
        serde_json::to_string(&g.pod).unwrap(),
        serde_json::to_string(&secret).unwrap(),
        record,
    ];
    let mut needles: Vec<&str> = secrets.values().map(String::as_str).collect();
    needles.push(LEASE_TOKEN);
    for needle in needles {
        let escaped = serde_json::to_string(needle).unwrap();
        let escaped = escaped.trim_matches('"').to_string();
        for text in &elsewhere {
            assert!(
                !text.contains(needle) && !text.contains(&escaped),
                "{needle:?} is in a generated object outside the keys the steps read"
            );
        }
    }
    // The record still has what resuming needs.
    let back: AdoptionRecord = serde_json::from_str(&elsewhere[2]).unwrap();
    assert_eq!((back.stage_id, back.attempt), (7, 1));
}
