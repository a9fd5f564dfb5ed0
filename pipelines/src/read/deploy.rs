//! `kind: deploy` — environment, approval gate and canary rollout.

use marked_yaml::Node;

use super::{Ctx, Field, Fields, is_null, keys};
use crate::diagnostic::{Pos, codes, did_you_mean};
use crate::model::{
    Analysis, Approval, CanaryStep, CanaryStrategy, Check, HttpCheck, Pause, Rollout,
    RolloutTarget, StageKind, Strategy, Traffic,
};
use crate::yaml::node_pos;

/// The roles of the server's people, lowest first: who an `approval:` may ask for.
pub(crate) const APPROVAL_ROLES: &[&str] = &["viewer", "developer", "release-manager", "admin"];

pub(crate) fn read_deploy(ctx: &mut Ctx<'_>, fields: &Fields<'_>, what: &str) -> StageKind {
    let environment = match fields.get("environment") {
        Some(f) => ctx.string(f, what).unwrap_or_default(),
        None => {
            ctx.missing(
                fields.owner,
                what,
                "environment",
                Some(
                    "deploy stages name the environment they change, e.g. `environment: staging`"
                        .into(),
                ),
            );
            String::new()
        }
    };
    let approval = fields
        .get("approval")
        .and_then(|f| read_approval(ctx, f, what));
    let rollout = fields.get("canary").and_then(|f| read_canary(ctx, f, what));
    StageKind::Deploy {
        environment,
        approval,
        rollout,
    }
}

fn read_approval(ctx: &mut Ctx<'_>, f: Field<'_>, what: &str) -> Option<Approval> {
    let fields = ctx.object(f, what, keys::APPROVAL)?;
    let awhat = format!("`approval` of {what}");
    let role = match fields.get("role") {
        Some(r) => ctx.string(r, &awhat)?,
        None => {
            ctx.missing(
                f.pos,
                &awhat,
                "role",
                Some("name the role whose members may approve".into()),
            );
            return None;
        }
    };
    if !APPROVAL_ROLES.contains(&role.as_str()) {
        let at = fields.get("role").map_or(f.pos, |r| r.value_pos());
        ctx.error(
            codes::INVALID_VALUE,
            at,
            format!(
                "`role` in {awhat} must be one of {}, not `{role}`",
                APPROVAL_ROLES.join(", ")
            ),
            did_you_mean(&role, APPROVAL_ROLES.iter().copied()),
        );
        return None;
    }
    let count = match fields.get("count") {
        None => 1,
        Some(c) => match ctx.uint(c, &awhat) {
            Some(n @ 1..=100) => n as u32,
            Some(_) => {
                ctx.error(
                    codes::INVALID_VALUE,
                    c.value_pos(),
                    format!("`count` in {awhat} must be from 1 to 100"),
                    None,
                );
                return None;
            }
            None => return None,
        },
    };
    Some(Approval { role, count })
}

fn read_canary(ctx: &mut Ctx<'_>, f: Field<'_>, what: &str) -> Option<Rollout> {
    let fields = ctx.object(f, what, keys::CANARY)?;
    let cwhat = format!("`canary` of {what}");
    let target = match fields.get("target") {
        Some(t) => read_target(ctx, t, &cwhat),
        None => {
            ctx.missing(
                f.pos,
                &cwhat,
                "target",
                Some("write `target: { deployment: app, namespace: prod }`".into()),
            );
            None
        }
    };
    let traffic = match fields.get("traffic") {
        None => Some(Traffic::Replicas),
        Some(t) => {
            let s = ctx.string(t, &cwhat).unwrap_or_default();
            let traffic = match s.as_str() {
                "replicas" => Some(Traffic::Replicas),
                "nginx" => Some(Traffic::Nginx {
                    ingress: String::new(),
                }),
                "gateway" => Some(Traffic::Gateway {
                    route: String::new(),
                }),
                _ => None,
            };
            if traffic.is_none() && !s.is_empty() {
                ctx.error(
                    codes::INVALID_VALUE,
                    t.value_pos(),
                    format!("invalid `traffic` `{s}` in {cwhat}"),
                    did_you_mean(&s, keys::TRAFFIC.iter().copied())
                        .or_else(|| Some("use replicas, nginx or gateway".into())),
                );
            }
            traffic
        }
    };
    let steps = match fields.get("steps") {
        Some(s) => read_canary_steps(ctx, s, &cwhat),
        None => {
            ctx.missing(
                f.pos,
                &cwhat,
                "steps",
                Some(
                    "list the rollout, e.g. `steps: [ {weight: 20}, {pause: 2m}, {weight: 100} ]`"
                        .into(),
                ),
            );
            None
        }
    };
    Some(Rollout {
        target: target?,
        image: None,
        strategy: Strategy::Canary(CanaryStrategy {
            traffic: traffic?,
            steps: steps?,
            background: None,
        }),
    })
}

fn read_target(ctx: &mut Ctx<'_>, f: Field<'_>, what: &str) -> Option<RolloutTarget> {
    let fields = ctx.object(f, what, keys::CANARY_TARGET)?;
    let twhat = format!("`target` of {what}");
    let deployment = match fields.get("deployment") {
        Some(d) => ctx.string(d, &twhat),
        None => {
            ctx.missing(f.pos, &twhat, "deployment", None);
            None
        }
    };
    let namespace = fields.get("namespace").and_then(|n| ctx.string(n, &twhat));
    Some(RolloutTarget {
        deployment: deployment?,
        namespace,
        container: None,
        service: None,
    })
}

fn read_canary_steps(ctx: &mut Ctx<'_>, f: Field<'_>, what: &str) -> Option<Vec<CanaryStep>> {
    let items = match f.value {
        Node::Sequence(items) => items,
        _ => {
            ctx.wrong_type(
                f.value_pos(),
                &format!("`steps` in {what}"),
                "a list",
                f.value,
            );
            return None;
        }
    };
    let mut steps = Vec::new();
    let mut ok = true;
    let mut last_weight: Option<(u8, Pos)> = None;
    for (i, item) in items.iter().enumerate() {
        let swhat = format!("canary step {} of {what}", i + 1);
        let pos = if is_null(item) { f.pos } else { node_pos(item) };
        let Node::Mapping(m) = item else {
            ctx.wrong_type(
                pos,
                &swhat,
                "a mapping with `weight`, `pause` or `analysis`",
                item,
            );
            ok = false;
            continue;
        };
        let list = ctx.entries(m);
        let sf = ctx.known(list, pos, &swhat, keys::CANARY_STEP);
        if sf.list.len() != 1 {
            ctx.error(
                codes::INVALID_VALUE,
                pos,
                format!("{swhat} must have exactly one of `weight`, `pause` or `analysis`"),
                Some("write each as its own list item".into()),
            );
            ok = false;
            continue;
        }
        let Some(field) = sf.list.first().copied() else {
            continue;
        };
        let step = match field.key {
            "weight" => read_weight(ctx, field, &swhat, &mut last_weight),
            "pause" => ctx
                .duration(field, &swhat)
                .map(|secs| CanaryStep::Pause(Pause::Elapsed { secs })),
            _ => read_analysis(ctx, field, &swhat).map(CanaryStep::Analysis),
        };
        match step {
            Some(s) => steps.push(s),
            None => ok = false,
        }
    }
    match last_weight {
        None if ok => {
            ctx.error(
                codes::INVALID_WEIGHT,
                f.pos,
                format!("{what} has no `weight` step"),
                Some("end the rollout with `- weight: 100`".into()),
            );
            ok = false;
        }
        Some((w, pos)) if w != 100 => {
            ctx.error(
                codes::INVALID_WEIGHT,
                pos,
                format!("the last canary weight in {what} is {w}, not 100"),
                Some(
                    "end the rollout with `- weight: 100` so the new version is fully promoted"
                        .into(),
                ),
            );
            ok = false;
        }
        _ => {}
    }
    ok.then_some(steps)
}

fn read_weight(
    ctx: &mut Ctx<'_>,
    f: Field<'_>,
    what: &str,
    last: &mut Option<(u8, Pos)>,
) -> Option<CanaryStep> {
    let pos = f.value_pos();
    let w = match f.value {
        Node::Scalar(s) => s.as_str().trim().parse::<u8>().ok().filter(|w| *w <= 100),
        _ => None,
    };
    let Some(w) = w else {
        ctx.error(
            codes::INVALID_WEIGHT,
            pos,
            format!("`weight` in {what} must be a whole number from 0 to 100"),
            None,
        );
        return None;
    };
    if let Some((prev, _)) = *last
        && w < prev
    {
        ctx.error(
            codes::INVALID_WEIGHT,
            pos,
            format!("canary weight {w} in {what} is lower than the previous weight {prev}"),
            Some("weights must not decrease; a rollback is automatic when analysis fails".into()),
        );
        *last = Some((w, pos));
        return None;
    }
    *last = Some((w, pos));
    Some(CanaryStep::Weight { weight: w })
}

fn read_analysis(ctx: &mut Ctx<'_>, f: Field<'_>, what: &str) -> Option<Analysis> {
    let fields = ctx.object(f, what, keys::ANALYSIS)?;
    let awhat = format!("`analysis` of {what}");
    let http = match fields.get("http") {
        Some(h) => {
            let hf = ctx.object(h, &awhat, keys::HTTP)?;
            let hwhat = format!("`http` of {awhat}");
            let url = match hf.get("url") {
                Some(u) => ctx.string(u, &hwhat),
                None => {
                    ctx.missing(h.pos, &hwhat, "url", None);
                    None
                }
            };
            let expect_status = match hf.get("expect_status") {
                None => Some(200),
                Some(s) => match ctx.uint(s, &hwhat) {
                    Some(n @ 100..=599) => Some(n as u16),
                    Some(n) => {
                        ctx.error(
                            codes::INVALID_VALUE,
                            s.value_pos(),
                            format!("`expect_status` {n} in {hwhat} is not an HTTP status"),
                            None,
                        );
                        None
                    }
                    None => None,
                },
            };
            Some(HttpCheck {
                url: url?,
                expect_status: expect_status?,
                max_latency_ms: None,
                json: None,
            })
        }
        None => {
            ctx.missing(
                f.pos,
                &awhat,
                "http",
                Some("write `http: { url: \"http://app/healthz\" }`".into()),
            );
            None
        }
    };
    let interval_secs = match fields.get("interval") {
        Some(i) => ctx.duration(i, &awhat),
        None => Some(10),
    };
    let count = match fields.get("count") {
        Some(c) => match ctx.uint(c, &awhat) {
            Some(n @ 1..=1000) => Some(n as u32),
            Some(_) => {
                ctx.error(
                    codes::INVALID_VALUE,
                    c.value_pos(),
                    format!("`count` in {awhat} must be from 1 to 1000"),
                    None,
                );
                None
            }
            None => None,
        },
        None => Some(1),
    };
    let max_failures = match fields.get("max_failures") {
        Some(m) => ctx
            .uint(m, &awhat)
            .map(|n| n.min(u64::from(u32::MAX)) as u32),
        None => Some(0),
    };
    Some(Analysis {
        checks: vec![Check::Http(http?)],
        interval_secs: interval_secs?,
        count: Some(count?),
        failure_limit: max_failures?,
        inconclusive_limit: 0,
    })
}
