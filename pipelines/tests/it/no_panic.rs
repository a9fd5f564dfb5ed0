//! `parse` and `plan` must never panic, whatever the input.

use proptest::prelude::*;

const KEYS: &[&str] = &[
    "name",
    "on",
    "env",
    "stages",
    "push",
    "pull_request",
    "tag",
    "cron",
    "manual",
    "params",
    "branches",
    "tags",
    "paths",
    "pattern",
    "patterns",
    "include",
    "exclude",
    "build",
    "test",
    "deploy",
    "kind",
    "image",
    "needs",
    "matrix",
    "when",
    "steps",
    "services",
    "artifacts",
    "cache",
    "retry",
    "timeout",
    "run",
    "sarif",
    "fail_on",
    "dockerfile",
    "context",
    "registry_secret",
    "build_args",
    "target",
    "environment",
    "approval",
    "canary",
    "role",
    "count",
    "traffic",
    "weight",
    "pause",
    "analysis",
    "http",
    "url",
    "interval",
    "max_failures",
    "deployment",
    "namespace",
    "container",
    "service",
    "strategy",
    "recreate",
    "rolling",
    "blue_green",
    "batches",
    "preview_service",
    "auto_promote",
    "pre_promotion_analysis",
    "scale_down_delay",
    "gateway",
    "nginx",
    "route",
    "ingress",
    "match",
    "header",
    "cookie",
    "mirror",
    "duration",
    "prometheus",
    "address",
    "query",
    "pass",
    "fail",
    "json",
    "path",
    "equals",
    "max_latency",
    "expect_status",
    "failure_limit",
    "inconclusive_limit",
    "branch",
    "event",
    "default",
    "required",
    "options",
    "command",
    "os",
    "A_VAR",
];

const SCALARS: &[&str] = &[
    "main",
    "release/*",
    "[",
    "{a",
    "v*",
    "0 3 * * *",
    "61 * * * *",
    "10m",
    "1h30m",
    "0",
    "9",
    "100",
    "150",
    "-1",
    "true",
    "null",
    "~",
    "",
    "run",
    "scan",
    "image",
    "deploy",
    "nginx",
    "gateway",
    "replicas",
    "blue_green",
    "50%",
    "500ms",
    "< 0.01",
    ">= 1e400",
    "$.a[",
    "$..x",
    "http://x",
    "http://",
    "${{ stages.image.outputs.digest }}",
    "high",
    "${{ git.sha }}",
    "${{ matrix.os }}",
    "${{ secrets.X }}",
    "${{",
    "${{ }}",
    "${{ stages.build.outputs.x }}",
    "${{ params.p }}",
    "echo hi",
    "build",
    "test",
    "$(rm -rf /)",
    "é",
    "\u{E000}",
];

#[derive(Debug, Clone)]
enum Doc {
    Scalar(String),
    List(Vec<Doc>),
    Map(Vec<(String, Doc)>),
}

fn doc() -> impl Strategy<Value = Doc> {
    let leaf = prop_oneof![
        proptest::sample::select(SCALARS).prop_map(|s| Doc::Scalar(s.to_string())),
        "[a-z0-9 */.-]{0,8}".prop_map(Doc::Scalar),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Doc::List),
            proptest::collection::vec(
                (
                    prop_oneof![
                        proptest::sample::select(KEYS).prop_map(str::to_string),
                        "[a-z_]{1,6}"
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(Doc::Map),
        ]
    })
}

/// Renders as flow-style YAML with every scalar double-quoted (escaped as JSON, which is
/// valid YAML), so documents are always well-formed and exercise the validator.
fn render(d: &Doc) -> String {
    match d {
        Doc::Scalar(s) => serde_json::to_string(s).unwrap_or_default(),
        Doc::List(items) => format!(
            "[{}]",
            items.iter().map(render).collect::<Vec<_>>().join(", ")
        ),
        Doc::Map(entries) => format!(
            "{{{}}}",
            entries
                .iter()
                .map(|(k, v)| format!(
                    "{}: {}",
                    serde_json::to_string(k).unwrap_or_default(),
                    render(v)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn contexts() -> Vec<pipelines::EventContext> {
    use pipelines::{Event, EventContext};
    let base = EventContext {
        sha: "abc".into(),
        branch: Some("main".into()),
        ..Default::default()
    };
    vec![
        base.clone(),
        EventContext {
            event: Event::PullRequest,
            changed_paths: Some(vec!["src/a.rs".into()]),
            ..base.clone()
        },
        EventContext {
            event: Event::Tag,
            tag: Some("v1".into()),
            branch: None,
            ..base.clone()
        },
        EventContext {
            event: Event::Cron,
            cron: Some("nightly".into()),
            ..base.clone()
        },
        EventContext {
            event: Event::Manual,
            params: [("p".to_string(), "x".to_string())].into(),
            ..base
        },
    ]
}

fn exercise(text: &str) {
    if let Ok(p) = pipelines::parse(".slipway.yml", text) {
        for ctx in contexts() {
            let _ = pipelines::plan(&p, &ctx);
        }
    }
    let _ = pipelines::load(&[(".slipway/x.yml".to_string(), text.to_string())]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text(text in "\\PC{0,200}") {
        exercise(&text);
    }

    #[test]
    fn yaml_ish_text(text in "([a-z_]{1,8}: ?|  |- |\\[|\\]|\\{|\\}|, |\n|\"|'|&a |\\*a|!!str |---\n|#|\\$\\{\\{ |\\}\\}|[a-z0-9.]{1,5}){0,40}") {
        exercise(&text);
    }

    #[test]
    fn structured_documents(d in doc()) {
        exercise(&render(&d));
    }

    #[test]
    fn stage_documents(stages in proptest::collection::vec(("[a-c]{1,2}", doc()), 0..5)) {
        let d = Doc::Map(vec![("stages".into(), Doc::Map(stages))]);
        exercise(&render(&d));
    }
}

#[test]
fn edge_cases() {
    for text in [
        "",
        "\n",
        "---",
        "---\n---\n",
        "~",
        "[]",
        "a",
        "stages:",
        "stages: []",
        "stages: {a: }",
        "stages: {a: {steps: [~]}}",
        "stages: {a: {steps: [{}]}}",
        "stages: {a: {kind: deploy, canary: {steps: [{}]}}}",
        "stages: {a: {kind: deploy, strategy: {canary: {steps: [{match: {}}, {mirror: ~}]}}}}",
        "stages: {a: {kind: deploy, strategy: {rolling: {batches: []}}, target: {}}}",
        "stages: {a: {kind: deploy, strategy: {blue_green: ~}, target: {deployment: a}}}",
        "stages: {a: {kind: deploy, strategy: [], target: x, image: ~}}",
        "stages: {a: {matrix: {include: [{}]}, steps: [x]}}",
        "stages: {a: {needs: a, steps: [x]}}",
        "\u{feff}stages: {}",
        "\"\": 1\n\"\": 2\n",
        "a: 1\na: 2\na: 3\n",
        "on: \nstages: {a: {steps: [x]}}",
        "stages: {a: {steps: [\"${{\"]}}",
        "stages:\n  a:\n    steps:\n      - |\n        ${{ matrix.x",
    ] {
        exercise(text);
    }
}
