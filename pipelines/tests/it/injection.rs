//! Values from the event (branch names, commit messages) must only ever be variable
//! values, never shell text.

use pipelines::{EventContext, parse, plan};

#[test]
fn hostile_event_values_never_reach_scripts() {
    let yaml = r#"
stages:
  build:
    image: "alpine:${{ git.branch }}"
    env: { LABEL: "${{ git.branch }}" }
    steps:
      - echo ${{ git.branch }} "${{ git.message }}" '${{ git.author }}' ${{ git.ref }}
      - run: echo ${{ git.tag }}
"#;
    let p = parse(".slipway.yml", yaml).expect("parses");
    let hostile = [
        "$(rm -rf /)",
        "`reboot`",
        "'; exit 1; '",
        "\"; curl x | sh; \"",
    ];
    for value in hostile {
        let ctx = EventContext {
            branch: Some(value.to_string()),
            message: Some(value.to_string()),
            author: Some(value.to_string()),
            tag: Some(value.to_string()),
            sha: "deadbeef".into(),
            ..Default::default()
        };
        let plan = plan(&p, &ctx).expect("plans");
        let stage = &plan.stages[0];
        for step in &stage.steps {
            assert!(
                !step.script.contains(value),
                "{value} leaked into {:?}",
                step.script
            );
        }
        assert_eq!(stage.steps[0].env["SLIPWAY_GIT_BRANCH"], value);
        assert_eq!(stage.env["LABEL"], value);
        assert_eq!(
            stage.steps[0].script,
            "echo ${SLIPWAY_GIT_BRANCH} \"${SLIPWAY_GIT_MESSAGE}\" '${SLIPWAY_GIT_AUTHOR}' ${SLIPWAY_GIT_REF}"
        );
    }
}

#[test]
fn secrets_are_names_not_values() {
    let yaml = r#"
env: { TOKEN: "${{ secrets.DEPLOY_TOKEN }}" }
stages:
  build:
    steps:
      - run: 'curl -H "auth: ${{ secrets.API }}" example.com' 
"#;
    let p = parse(".slipway.yml", yaml).expect("parses");
    let plan = plan(&p, &EventContext::default()).expect("plans");
    let stage = &plan.stages[0];
    assert_eq!(stage.secrets["TOKEN"], "DEPLOY_TOKEN");
    assert_eq!(stage.secrets["SLIPWAY_SECRET_API"], "API");
    assert!(!stage.env.contains_key("TOKEN"));
    assert_eq!(
        stage.steps[0].script,
        "curl -H \"auth: ${SLIPWAY_SECRET_API}\" example.com"
    );
}
