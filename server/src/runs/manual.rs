//! Whether a manual run would plan anything, decided when it is asked for: a trigger
//! that names a parameter no pipeline declares, or a commit with no pipeline that takes
//! manual runs, is refused with the reason instead of becoming a run that does nothing.
//! The planner applies the same rules (`pipelines::plan` for `Event::Manual`) to the
//! same commit, so what passes here plans there.

use pipelines::{EventContext, Pipeline, PlanError};

/// `Ok` when at least one pipeline (only `only`, if given) is triggered by the manual
/// event `ctx` and none of them refuses its parameters; else why not, in words.
pub fn check(pipelines: &[Pipeline], only: Option<&str>, ctx: &EventContext) -> Result<(), String> {
    if let Some(o) = only
        && !pipelines.iter().any(|p| p.name == o)
    {
        let names: Vec<&str> = pipelines.iter().map(|p| p.name.as_str()).collect();
        return Err(format!(
            "no pipeline named `{o}` at {} (pipelines: {})",
            ctx.sha,
            names.join(", ")
        ));
    }
    let mut triggered = 0;
    let mut not_triggered = Vec::new();
    for p in pipelines
        .iter()
        .filter(|p| only.is_none_or(|o| o == p.name))
    {
        match pipelines::plan(p, ctx) {
            Ok(_) => triggered += 1,
            Err(PlanError::NotTriggered { reason }) => {
                not_triggered.push(format!("{}: {reason}", p.name));
            }
            Err(PlanError::UnknownParam { name }) => {
                let declared: Vec<&str> = p
                    .triggers
                    .manual
                    .as_ref()
                    .map(|m| m.params.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                let declared = if declared.is_empty() {
                    "it declares none".to_string()
                } else {
                    format!("declared: {}", declared.join(", "))
                };
                return Err(format!(
                    "unknown parameter `{name}`: pipeline `{}` has no `on.manual.params.{name}` ({declared})",
                    p.name
                ));
            }
            Err(e) => return Err(format!("pipeline `{}`: {e}", p.name)),
        }
    }
    if triggered == 0 {
        return Err(format!(
            "nothing to run: no pipeline at {} takes manual runs ({}); add `on: {{ manual: {{}} }}` to the pipeline",
            ctx.sha,
            not_triggered.join("; ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn pipeline(name: &str, yaml: &str) -> Pipeline {
        pipelines::parse(&format!(".slipway/{name}.yml"), yaml).unwrap()
    }

    fn manual(params: &[(&str, &str)]) -> EventContext {
        EventContext {
            event: pipelines::Event::Manual,
            branch: Some("main".into()),
            sha: "abc".into(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            ..EventContext::default()
        }
    }

    const DEPLOY: &str = "on:\n  manual:\n    params:\n      env: { options: [staging, prod], default: staging }\nstages:\n  d:\n    steps: [\"echo ${{ params.env }}\"]\n";
    const PUSH_ONLY: &str = "on: { push: {} }\nstages:\n  b:\n    steps: [make]\n";

    #[test]
    fn a_declared_parameter_passes_and_an_unknown_one_is_named() {
        let ps = [pipeline("deploy", DEPLOY)];
        assert_eq!(check(&ps, None, &manual(&[("env", "prod")])), Ok(()));
        let err = check(&ps, None, &manual(&[("enviroment", "prod")])).unwrap_err();
        assert!(err.contains("unknown parameter `enviroment`"), "{err}");
        assert!(err.contains("declared: env"), "{err}");
        let err = check(&ps, None, &manual(&[("env", "qa")])).unwrap_err();
        assert!(
            err.contains("invalid value `qa` for parameter `env`"),
            "{err}"
        );
    }

    #[test]
    fn without_on_manual_nothing_runs_and_says_why() {
        let ps = [pipeline("build", PUSH_ONLY)];
        let err = check(&ps, None, &manual(&[])).unwrap_err();
        assert!(
            err.contains("no pipeline at abc takes manual runs"),
            "{err}"
        );
        assert!(
            err.contains("build: the pipeline has no `on.manual` trigger"),
            "{err}"
        );
        // One pipeline that takes manual runs is enough; `only` picks among them.
        let ps = [pipeline("build", PUSH_ONLY), pipeline("deploy", DEPLOY)];
        assert_eq!(check(&ps, None, &manual(&[])), Ok(()));
        assert!(check(&ps, Some("build"), &manual(&[])).is_err());
        let err = check(&ps, Some("nope"), &manual(&[])).unwrap_err();
        assert!(err.contains("no pipeline named `nope`"), "{err}");
    }
}
