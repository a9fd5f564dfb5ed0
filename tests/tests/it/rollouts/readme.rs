//! The README's "Rolling out" section and `examples/release/`, as written: the YAML
//! stage validates (under an image stage it needs), every `slipway` command line in it
//! parses with the real command line, and the release example's manifests are valid
//! Kubernetes objects and a Gateway API HTTPRoute. (What the commands do is tested
//! against a running rollout in `canary`, `strategies` and `restart`.)

use std::path::Path;

use clap::Parser;
use tests::k8s_tools::{KUBERNETES_VERSION, NEWEST_KUBERNETES, kubernetes_validate_strict};

fn repo(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)).unwrap()
}

fn section() -> String {
    repo("README.md")
        .split("\n## Rolling out\n")
        .nth(1)
        .expect("a Rolling out section")
        .split("\n## ")
        .next()
        .unwrap()
        .to_string()
}

fn blocks(text: &str, lang: &str) -> Vec<String> {
    text.split(&format!("```{lang}\n"))
        .skip(1)
        .map(|b| b.split("```").next().unwrap().to_string())
        .collect()
}

#[test]
fn the_readme_rollout_stage_validates_and_its_commands_parse() {
    let yaml = blocks(&section(), "yaml").remove(0);
    let pipeline = format!(
        "stages:\n  image:\n    kind: image\n    dockerfile: Dockerfile\n    push: registry.example.com/web:${{{{ git.sha }}}}\n{yaml}"
    );
    if let Err(d) = pipelines::parse(".slipway.yml", &pipeline) {
        panic!("{pipeline}\n{d:#?}");
    }
    let sh = blocks(&section(), "sh");
    assert_eq!(sh.len(), 1, "{sh:#?}");
    let lines: Vec<&str> = sh[0]
        .lines()
        .filter(|l| l.starts_with("slipway "))
        .collect();
    assert_eq!(lines.len(), 5, "{lines:#?}");
    for line in lines {
        let words: Vec<&str> = line.split('#').next().unwrap().split_whitespace().collect();
        if let Err(e) = server::cli::Cli::try_parse_from(&words) {
            panic!("`{line}` does not parse:\n{e}");
        }
    }
}

#[test]
fn the_release_example_manifests_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/release/k8s");
    for (file, objects) in [("staging.yaml", 3), ("production.yaml", 3)] {
        for version in [KUBERNETES_VERSION, NEWEST_KUBERNETES] {
            if let Err(e) = kubernetes_validate_strict(&dir.join(file), version, objects) {
                panic!("{e}");
            }
        }
    }
    let route: gateway_api::httproutes::HttpRoute = serde_json::from_value(
        tests::yaml_docs::parse_document(&repo("examples/release/k8s/route.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        route.spec.rules.unwrap()[0].backend_refs.as_ref().unwrap()[0].name,
        "hello"
    );
}
