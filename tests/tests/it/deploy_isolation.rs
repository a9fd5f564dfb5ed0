//! deploy/'s isolation, checked by what it means rather than how it is written: the
//! rendered NetworkPolicies through a model of their semantics
//! (`tests::network_policy`), the builder pods' ValidatingAdmissionPolicy through a
//! real CEL interpreter (`tests::admission_policy`) on the builder pod Slipway itself
//! generates, and the images Slipway runs pinned where the manifests name them.

use std::collections::BTreeMap;

use runner::kubernetes::{BuilderOptions, builder, names};
use runner::{ImageSpec, KubernetesOptions, RegistryAuth};
use serde_json::{Value, json};
use tests::admission_policy::denials;
use tests::network_policy::{Endpoint, allows};

use super::deploy_manifests::{
    BUILD_NAMESPACE, BUILDER_NAMESPACE, OVERLAYS, SERVER_NAMESPACE, env_var, render,
    server_container, server_set, the_one,
};

// ---------------------------------------------------------------------------------------
// NetworkPolicies

/// The pods and addresses of a typical cluster (private pod, Service and node ranges).
struct World {
    build: Endpoint,
    builder: Endpoint,
    server: Endpoint,
    dns: Endpoint,
    ingress_controller: Endpoint,
    other_workload: Endpoint,
    api_server: Endpoint,
    metadata: Endpoint,
    metadata_v6: Endpoint,
    internet: Endpoint,
    internet_v6: Endpoint,
}

fn world(objects: &[Value], overlay: &str) -> World {
    let labels: Vec<(String, String)> =
        server_set(objects, overlay)["spec"]["template"]["metadata"]["labels"]
            .as_object()
            .expect("template labels")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
    let server_labels: Vec<(&str, &str)> = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    World {
        build: Endpoint::pod(
            BUILD_NAMESPACE,
            &[("app.kubernetes.io/managed-by", "slipway")],
            "10.244.1.5",
        ),
        builder: Endpoint::pod(
            BUILDER_NAMESPACE,
            &[("app.kubernetes.io/managed-by", "slipway")],
            "10.244.1.6",
        ),
        server: Endpoint::pod(SERVER_NAMESPACE, &server_labels, "10.244.2.7"),
        dns: Endpoint::pod("kube-system", &[("k8s-app", "kube-dns")], "10.244.0.10"),
        ingress_controller: Endpoint::pod(
            "ingress-nginx",
            &[("app.kubernetes.io/name", "ingress-nginx")],
            "10.244.3.3",
        ),
        other_workload: Endpoint::pod("shop", &[("app", "db")], "10.244.4.4"),
        // The API server behind `kubernetes.default` is a node address after DNAT.
        api_server: Endpoint::outside("192.168.10.2"),
        metadata: Endpoint::outside("169.254.169.254"),
        metadata_v6: Endpoint::outside("fd00:ec2::254"),
        internet: Endpoint::outside("140.82.112.3"),
        internet_v6: Endpoint::outside("2606:4700::1111"),
    }
}

#[test]
fn build_and_builder_pods_reach_dns_and_the_outside_world_and_nothing_inside() {
    for overlay in OVERLAYS {
        let (_, objects) = render(overlay);
        // `allows` reads the NetworkPolicies among them.
        let policies = &objects;
        let w = world(&objects, overlay);
        for (name, pod) in [("build", &w.build), ("builder", &w.builder)] {
            let may = |to: &Endpoint, port: u16, protocol: &str| {
                allows(policies, pod, to, port, protocol)
            };
            assert!(may(&w.dns, 53, "UDP"), "{overlay}: {name} pod → DNS/UDP");
            assert!(may(&w.dns, 53, "TCP"), "{overlay}: {name} pod → DNS/TCP");
            assert!(may(&w.internet, 443, "TCP"), "{overlay}: {name} → internet");
            assert!(
                may(&w.internet_v6, 443, "TCP"),
                "{overlay}: {name} → internet v6"
            );
            for (what, to, port) in [
                ("the cloud metadata address", &w.metadata, 80),
                ("the IPv6 metadata address", &w.metadata_v6, 80),
                ("the API server", &w.api_server, 6443),
                ("the Slipway server", &w.server, 8080),
                ("another workload", &w.other_workload, 5432),
                ("DNS on another port", &w.dns, 9153),
            ] {
                assert!(
                    !may(to, port, "TCP"),
                    "{overlay}: {name} pod reaches {what}"
                );
            }
            // Nothing may connect to a build or builder pod, from anywhere.
            for (what, from) in [
                ("the ingress controller", &w.ingress_controller),
                ("another workload", &w.other_workload),
                ("the Slipway server", &w.server),
                ("the outside", &w.internet),
            ] {
                assert!(
                    !allows(policies, from, pod, 8080, "TCP"),
                    "{overlay}: {what} reaches a {name} pod"
                );
            }
        }
    }
}

#[test]
fn the_server_accepts_its_port_only_from_the_ingress_controller() {
    for overlay in OVERLAYS {
        let (_, objects) = render(overlay);
        // `allows` reads the NetworkPolicies among them.
        let policies = &objects;
        let w = world(&objects, overlay);
        let port = server_container(server_set(&objects, overlay))["ports"][0]["containerPort"]
            .as_u64()
            .unwrap() as u16;
        assert!(
            allows(policies, &w.ingress_controller, &w.server, port, "TCP"),
            "{overlay}: the Ingress cannot reach the server"
        );
        assert!(
            !allows(policies, &w.ingress_controller, &w.server, 9090, "TCP"),
            "{overlay}: another port of the server is open"
        );
        for (what, from) in [
            ("a build pod", &w.build),
            ("a builder pod", &w.builder),
            ("another workload", &w.other_workload),
        ] {
            assert!(
                !allows(policies, from, &w.server, port, "TCP"),
                "{overlay}: {what} reaches the server"
            );
        }
        // The server itself talks to the API server, the database and the forges.
        for to in [&w.api_server, &w.other_workload, &w.internet] {
            assert!(
                allows(policies, &w.server, to, 443, "TCP"),
                "{overlay}: {to:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// The builder pods' admission policy

fn policy_and_binding(objects: &[Value], overlay: &str) -> (Value, Value) {
    (
        the_one(objects, "ValidatingAdmissionPolicy", overlay).clone(),
        the_one(objects, "ValidatingAdmissionPolicyBinding", overlay).clone(),
    )
}

/// The server's environment value `name`.
fn env_value(objects: &[Value], overlay: &str, name: &str) -> String {
    env_var(server_container(server_set(objects, overlay)), name)
        .unwrap_or_else(|| panic!("{overlay}: no {name}"))["value"]
        .as_str()
        .unwrap_or_else(|| panic!("{overlay}: {name} is not a value"))
        .to_string()
}

/// The builder pod Slipway's Kubernetes backend creates with the server's configuration
/// from `objects`, with or without a push (a push adds the registry Secret volume).
fn builder_pod(objects: &[Value], overlay: &str, push: bool) -> Value {
    let image = ImageSpec {
        dockerfile: "Dockerfile".into(),
        context: ".".into(),
        target: None,
        build_args: Default::default(),
        labels: Default::default(),
        push: push.then(|| "registry.example.com/team/app:1".into()),
        registry_auth: push.then(|| RegistryAuth {
            username: "ci".into(),
            password: "not-a-real-password".into(),
        }),
    };
    let mut options = KubernetesOptions::new(
        "in-process runner slipway-0:8080",
        env_value(objects, overlay, "SLIPWAY_KUBE_NAMESPACE"),
    );
    options.helper_image = env_value(objects, overlay, "SLIPWAY_KUBE_HELPER_IMAGE");
    let b = BuilderOptions::new(
        env_value(objects, overlay, "SLIPWAY_KUBE_BUILDER_IMAGE"),
        env_value(objects, overlay, "SLIPWAY_KUBE_BUILDER_NAMESPACE"),
    );
    let paths = builder::BuildPaths::of(&image).unwrap();
    let labels = names::labels(&options.runner_name, "run-1.image", &BTreeMap::new());
    let (pod, _) =
        builder::builder_objects(&image, "slipway-image-1", &paths, labels, &options, &b).unwrap();
    serde_json::to_value(&pod).unwrap()
}

#[test]
fn the_admission_policy_binds_to_the_builder_namespace_only_and_denies() {
    for overlay in OVERLAYS {
        let (_, objects) = render(overlay);
        let (policy, binding) = policy_and_binding(&objects, overlay);
        assert_eq!(binding["spec"]["policyName"], policy["metadata"]["name"]);
        assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
        assert_eq!(policy["spec"]["failurePolicy"], "Fail");
        assert_eq!(
            binding["spec"]["matchResources"]["namespaceSelector"],
            json!({"matchLabels": {"kubernetes.io/metadata.name": BUILDER_NAMESPACE}}),
            "{overlay}: the policy must hold in the builder namespace and nowhere else"
        );
        assert_eq!(
            env_value(&objects, overlay, "SLIPWAY_KUBE_BUILDER_NAMESPACE"),
            BUILDER_NAMESPACE
        );
        let rules = &policy["spec"]["matchConstraints"]["resourceRules"][0];
        assert_eq!(
            rules["resources"],
            json!(["pods", "pods/ephemeralcontainers"])
        );
        assert_eq!(rules["operations"], json!(["CREATE", "UPDATE"]));
    }
}

#[test]
fn the_admission_policy_admits_the_builder_pod_slipway_generates() {
    for overlay in OVERLAYS {
        let (_, objects) = render(overlay);
        let (policy, _) = policy_and_binding(&objects, overlay);
        for push in [false, true] {
            let pod = builder_pod(&objects, overlay, push);
            assert_eq!(
                denials(&policy, &pod, "CREATE"),
                Vec::<String>::new(),
                "{overlay} (push: {push}): Slipway's own builder pod is refused:\n{pod:#}"
            );
            // The kubelet and controllers update pods after creation (nodeName set).
            let mut scheduled = pod.clone();
            scheduled["spec"]["nodeName"] = json!("node-1");
            assert_eq!(denials(&policy, &scheduled, "UPDATE"), Vec::<String>::new());
        }
    }
}

#[test]
fn the_admission_policy_refuses_every_widening_of_the_builder_pod() {
    type Edit = fn(&mut Value);
    let cases: &[(&str, Edit, &str)] = &[
        (
            "privileged",
            |p| p["spec"]["containers"][0]["securityContext"]["privileged"] = json!(true),
            "not privileged",
        ),
        (
            "host network",
            |p| p["spec"]["hostNetwork"] = json!(true),
            "no host namespaces",
        ),
        (
            "host PID",
            |p| p["spec"]["hostPID"] = json!(true),
            "no host namespaces",
        ),
        (
            "hostPath volume",
            |p| {
                p["spec"]["volumes"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "root", "hostPath": {"path": "/"}}))
            },
            "only emptyDir and Secret volumes",
        ),
        (
            "SYS_ADMIN",
            |p| {
                p["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] =
                    json!(["SETUID", "SYS_ADMIN"])
            },
            "at most SETUID and SETGID",
        ),
        (
            "capabilities kept",
            |p| {
                p["spec"]["initContainers"][0]["securityContext"]["capabilities"]["drop"] =
                    json!([])
            },
            "drop ALL",
        ),
        (
            "root container",
            |p| p["spec"]["containers"][0]["securityContext"]["runAsUser"] = json!(0),
            "not root",
        ),
        (
            "root pod",
            |p| p["spec"]["securityContext"]["runAsNonRoot"] = json!(false),
            "non-root user",
        ),
        (
            "another image",
            |p| p["spec"]["containers"][0]["image"] = json!("evil.example.com/miner:latest"),
            "builder image",
        ),
        (
            "another helper image",
            |p| p["spec"]["initContainers"][0]["image"] = json!("docker.io/library/busybox:latest"),
            "helper image",
        ),
        (
            "a second container",
            |p| {
                let extra = p["spec"]["containers"][0].clone();
                p["spec"]["containers"].as_array_mut().unwrap().push(extra)
            },
            "one container",
        ),
        (
            "ephemeral container",
            |p| p["spec"]["ephemeralContainers"] = json!([{"name": "debug", "image": "busybox"}]),
            "no ephemeral containers",
        ),
        (
            "pinned to a node",
            |p| p["spec"]["nodeName"] = json!("node-1"),
            "scheduler places",
        ),
        (
            "host port",
            |p| {
                p["spec"]["containers"][0]["ports"] = json!([{"containerPort": 22, "hostPort": 22}])
            },
            "open no ports",
        ),
        (
            "subPath",
            |p| p["spec"]["containers"][0]["volumeMounts"][0]["subPath"] = json!("../.."),
            "no subPath",
        ),
        (
            "SELinux type",
            |p| {
                p["spec"]["containers"][0]["securityContext"]["seLinuxOptions"] =
                    json!({"type": "spc_t"})
            },
            "not privileged",
        ),
        (
            "unmasked /proc",
            |p| p["spec"]["containers"][0]["securityContext"]["procMount"] = json!("Unmasked"),
            "not privileged",
        ),
        (
            "service-account token",
            |p| p["spec"]["automountServiceAccountToken"] = json!(true),
            "no service-account token",
        ),
        (
            "runtime class",
            |p| p["spec"]["runtimeClassName"] = json!("unconfined"),
            "default runtime class",
        ),
        (
            "sysctls",
            |p| {
                p["spec"]["securityContext"]["sysctls"] =
                    json!([{"name": "kernel.msgmax", "value": "1"}])
            },
            "sysctls",
        ),
    ];
    for overlay in OVERLAYS {
        let (_, objects) = render(overlay);
        let (policy, _) = policy_and_binding(&objects, overlay);
        let pod = builder_pod(&objects, overlay, true);
        for (name, edit, expected) in cases {
            let mut wider = pod.clone();
            edit(&mut wider);
            let denied = denials(&policy, &wider, "CREATE");
            assert!(
                denied
                    .iter()
                    .any(|m| m.contains(expected) && !m.contains("error:")),
                "{overlay}: {name} should be refused with \"{expected}\", got {denied:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Images

/// `name@sha256:<64 hex>`.
fn pinned(reference: &str) -> bool {
    reference.split_once("@sha256:").is_some_and(|(name, hex)| {
        !name.is_empty() && hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

#[test]
fn the_helper_image_is_pinned_and_the_admission_policy_names_the_images_the_server_uses() {
    for overlay in OVERLAYS {
        let (_, objects) = render(overlay);
        let helper = env_value(&objects, overlay, "SLIPWAY_KUBE_HELPER_IMAGE");
        assert!(
            pinned(&helper),
            "{overlay}: helper image {helper} is not pinned by digest"
        );
        // The policy compares images literally: a changed image must be changed there too.
        let builder = env_value(&objects, overlay, "SLIPWAY_KUBE_BUILDER_IMAGE");
        let (policy, _) = policy_and_binding(&objects, overlay);
        let expressions = policy["spec"]["validations"].to_string();
        for image in [&helper, &builder] {
            assert!(
                expressions.contains(&format!("'{image}'")),
                "{overlay}: the admission policy does not name {image}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Stable runner names

/// A replaced server replica must come back under its predecessor's runner name, so
/// that it adopts the stage pods left running instead of waiting for their leases: the
/// in-process runner is named after the host name, and a StatefulSet's pod keeps its
/// name (`slipway-<ordinal>`) — which the kubelet makes the host name unless the pod
/// sets `hostname` or `setHostnameAsFQDN`.
#[test]
fn a_replaced_replica_keeps_its_runner_name() {
    let addr: std::net::SocketAddr = "0.0.0.0:8080".parse().unwrap();
    let name = server::workers::in_process_runner::in_process_name(addr);
    assert!(
        name.contains(&server::agent::hostname()),
        "the in-process runner's name {name} does not follow the host name"
    );
    for overlay in OVERLAYS {
        let (_, objects) = render(overlay);
        let set = server_set(&objects, overlay);
        let pod = &set["spec"]["template"]["spec"];
        assert!(
            pod["hostname"].is_null(),
            "{overlay}: a fixed hostname would be shared"
        );
        assert!(pod["setHostnameAsFQDN"].is_null(), "{overlay}");
    }
}
