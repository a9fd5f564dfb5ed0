//! From a queued rollout stage to a [`NewRollout`]: the planned rollout with its image
//! rendered from the outputs of the stages it needs (a promotion carries those over
//! from the run it promotes, so the digest that was tested is the one that ships), and
//! its namespace from the YAML or the environment.

use std::collections::BTreeMap;

use pipelines::{PlannedKind, PlannedStage};

use crate::store::rollouts::NewRollout;
use crate::store::{Stage, Store};

/// `Ok(Err(why))`: the stage cannot roll out (it ends in `error` with that reason).
pub async fn new_rollout(
    store: &Store,
    stage: &Stage,
) -> crate::store::Result<Result<NewRollout, String>> {
    let planned: PlannedStage = match serde_json::from_value(stage.spec.clone()) {
        Ok(p) => p,
        Err(e) => return Ok(Err(format!("the stored stage cannot be read: {e}"))),
    };
    let PlannedKind::Deploy {
        environment,
        rollout: Some(spec),
        ..
    } = planned.kind
    else {
        return Ok(Err("the stage has no rollout".into()));
    };
    let mut outputs = BTreeMap::new();
    let found = store.run_outputs(stage.run_id).await?;
    crate::agent::stage_spec::add_stage_outputs(
        &mut outputs,
        found
            .iter()
            .filter(|o| stage.needs.contains(&o.stage_key))
            .filter_map(|o| Some((o.stage_name.as_deref()?, o.name.as_str(), o.value.as_str()))),
    );
    let Some(template) = spec.image.as_deref() else {
        return Ok(Err(
            "the rollout names no image: write `image:` with the new version by digest, e.g. \
             `${{ stages.image.outputs.image }}@${{ stages.image.outputs.digest }}`"
                .into(),
        ));
    };
    let image = match render(template, &outputs) {
        Ok(i) => i,
        Err(e) => return Ok(Err(e)),
    };
    if let Err(e) = by_digest(&image) {
        return Ok(Err(e));
    }
    let image = without_tag(&image);
    let env = store.find_environment(stage.repo_id, &environment).await?;
    let namespace = spec
        .target
        .namespace
        .clone()
        .or_else(|| env.as_ref().and_then(|e| e.namespace.clone()))
        .unwrap_or_else(|| "default".to_string());
    Ok(Ok(NewRollout {
        environment,
        namespace,
        image,
        spec: pipelines::Rollout {
            image: Some(template.to_string()),
            ..spec
        },
    }))
}

/// Fills `${SLIPWAY_…}` references; one without a value is an error naming it.
fn render(template: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find('}') else {
            return Err(format!(
                "the rollout image `{template}` has an unclosed `${{`"
            ));
        };
        let name = &rest[start + 2..start + len];
        match vars.get(name) {
            Some(v) => out.push_str(v),
            None => {
                return Err(format!(
                    "the rollout image `{template}` needs {name}, which no finished stage output"
                ));
            }
        }
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A rollout ships an image by digest only: what was tested is what runs.
pub fn by_digest(image: &str) -> Result<(), String> {
    match image.rsplit_once("@sha256:") {
        Some((repo, hex))
            if !repo.is_empty()
                && hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "the rollout image `{image}` is not a reference by digest (`repository@sha256:<64 hex>`): \
             a rollout ships exactly what was built and tested"
        )),
    }
}

/// `repo:tag@sha256:…` as `repo@sha256:…`: the digest decides what runs, and a
/// reference with both is not understood everywhere (the Docker engine, older
/// runtimes), while one by digest alone is.
pub fn without_tag(image: &str) -> String {
    let Some((name, digest)) = image.rsplit_once('@') else {
        return image.to_string();
    };
    let last = name.rfind('/').map_or(0, |i| i + 1);
    let name = match name[last..].find(':') {
        Some(colon) => &name[..last + colon],
        None => name,
    };
    format!("{name}@{digest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_outputs_and_requires_a_digest() {
        let vars: BTreeMap<String, String> = [
            (
                "SLIPWAY_STAGE_IMAGE_OUTPUT_IMAGE".to_string(),
                "reg/web:1".to_string(),
            ),
            (
                "SLIPWAY_STAGE_IMAGE_OUTPUT_DIGEST".to_string(),
                format!("sha256:{}", "a".repeat(64)),
            ),
        ]
        .into();
        let got = render(
            "${SLIPWAY_STAGE_IMAGE_OUTPUT_IMAGE}@${SLIPWAY_STAGE_IMAGE_OUTPUT_DIGEST}",
            &vars,
        )
        .unwrap();
        assert_eq!(got, format!("reg/web:1@sha256:{}", "a".repeat(64)));
        assert!(by_digest(&got).is_ok());
        assert_eq!(
            without_tag(&got),
            format!("reg/web@sha256:{}", "a".repeat(64))
        );
        let port = format!("127.0.0.1:5000/team/web:1@sha256:{}", "b".repeat(64));
        assert_eq!(
            without_tag(&port),
            format!("127.0.0.1:5000/team/web@sha256:{}", "b".repeat(64))
        );
        assert!(
            by_digest("reg/web:1")
                .unwrap_err()
                .contains("not a reference by digest")
        );
        let e = render("${SLIPWAY_STAGE_X_OUTPUT_Y}", &vars).unwrap_err();
        assert!(e.contains("SLIPWAY_STAGE_X_OUTPUT_Y"), "{e}");
    }
}
