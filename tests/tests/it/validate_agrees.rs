//! What `slipway validate` (the `pipelines` reader) refuses, the runner refuses, and
//! the other way round: the reader repeats the runner's checks so that an author sees
//! a problem before a run, and the runner keeps them (defence in depth). Each table
//! here goes through both.

use runner::kubernetes::builder::BuildPaths;
use runner::kubernetes::pod;
use runner::{ContainerSettings, ImageSpec, KubernetesOptions, StageSpec};

/// The codes of the errors `parse` reports for `yaml` (empty when it parses).
fn refusals(yaml: &str) -> Vec<String> {
    match pipelines::parse(".slipway.yml", yaml) {
        Ok(_) => Vec::new(),
        Err(diags) => diags
            .into_iter()
            .filter(|d| d.is_error())
            .map(|d| d.code)
            .collect(),
    }
}

/// A YAML scalar holding `s` exactly (JSON strings are YAML double-quoted strings).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

const GLOBS: &[&str] = &[
    "dist/",
    "./out/*.txt",
    "**/*.sarif",
    "target",
    "..a/b",
    "../x",
    "/etc/passwd",
    "out/../../x",
    "a/..",
    "",
    "  ",
    "out/{a,b",
    "src/[",
];

#[test]
fn artifact_cache_and_sarif_globs() {
    for glob in GLOBS {
        let runner_refuses = runner::artifacts::check_globs(&[glob.to_string()]).is_err();
        for key in ["artifacts", "cache", "sarif"] {
            let yaml = format!(
                "stages:\n  a:\n    kind: scan\n    steps: [make]\n    {key}: [{}]\n",
                quoted(glob)
            );
            let codes = refusals(&yaml);
            assert_eq!(
                !codes.is_empty(),
                runner_refuses,
                "{key}: {glob:?}: validate says {codes:?}"
            );
            assert!(
                codes
                    .iter()
                    .all(|c| c == pipelines::codes::INVALID_PATH
                        || c == pipelines::codes::INVALID_GLOB),
                "{key}: {glob:?}: {codes:?}"
            );
        }
    }
}

fn image_spec(dockerfile: &str, context: &str) -> ImageSpec {
    ImageSpec {
        dockerfile: dockerfile.into(),
        context: context.into(),
        target: None,
        build_args: Default::default(),
        labels: Default::default(),
        push: None,
        registry_auth: None,
    }
}

const IMAGE_PATHS: &[(&str, &str)] = &[
    ("Dockerfile", "."),
    ("Dockerfile", ""),
    ("./app/Dockerfile", "app"),
    ("app/docker/../build/Dockerfile", "app/"),
    ("docker/Dockerfile", "app"),
    ("application/Dockerfile", "app"),
    ("/etc/Dockerfile", "."),
    ("Dockerfile", "/"),
    ("../Dockerfile", "."),
    ("Dockerfile", "a/../../b"),
    ("app", "app"),
    (".", "."),
];

#[test]
fn image_context_and_dockerfile() {
    for (dockerfile, context) in IMAGE_PATHS {
        let spec = image_spec(dockerfile, context);
        for (backend, runner_refuses) in [
            (
                "docker",
                runner::image_build::locate_dockerfile(&spec).is_err(),
            ),
            ("kubernetes", BuildPaths::of(&spec).is_err()),
        ] {
            let yaml = format!(
                "stages:\n  a:\n    kind: image\n    image: docker:27\n    runs_on: backend:{backend}\n    dockerfile: {}\n    context: {}\n",
                quoted(dockerfile),
                quoted(context)
            );
            let codes = refusals(&yaml);
            assert_eq!(
                !codes.is_empty(),
                runner_refuses,
                "{backend}: dockerfile {dockerfile:?}, context {context:?}: validate says {codes:?}"
            );
            assert!(
                codes.iter().all(|c| c == pipelines::codes::INVALID_PATH),
                "{codes:?}"
            );
        }
    }
}

#[test]
fn kubernetes_users() {
    let options = KubernetesOptions::new("r", "builds");
    for user in [
        "1000",
        "1000:1000",
        "1:0",
        "0",
        "0:0",
        "0:1000",
        "root",
        "1000:staff",
        "-1",
        "1000:-1",
    ] {
        let mut spec = StageSpec::new("a");
        spec.container = ContainerSettings {
            user: Some(user.into()),
            ..Default::default()
        };
        let runner_refuses = pod::run_as(&spec, &options).is_err();
        let yaml = format!(
            "stages:\n  a:\n    image: alpine:3.20\n    runs_on: backend:kubernetes\n    user: {}\n    steps: [make]\n",
            quoted(user)
        );
        let codes = refusals(&yaml);
        assert_eq!(
            !codes.is_empty(),
            runner_refuses,
            "user {user:?}: validate says {codes:?}"
        );
    }
}
