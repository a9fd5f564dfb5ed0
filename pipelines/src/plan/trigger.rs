//! Whether the event triggers the pipeline (`on`), with manual parameters checked and
//! their defaults applied.

use super::planned::{PlanError, Result};
use crate::event::{Event, EventContext};
use crate::model::Pipeline;
use crate::when::{describe, filter_rejects, paths_match};

pub(super) fn check_trigger(p: &Pipeline, ev: &mut EventContext) -> Result<()> {
    let t = &p.triggers;
    let not = |reason: String| Err(PlanError::NotTriggered { reason });
    match ev.event {
        Event::Push => {
            let Some(push) = &t.push else {
                return not("the pipeline has no `on.push` trigger".into());
            };
            if let Some(f) = &push.branches {
                match &ev.branch {
                    None => return not("on.push.branches: the push has no branch".into()),
                    Some(b) => {
                        if let Some(r) = filter_rejects(f, b) {
                            return not(format!("on.push.branches: {r}"));
                        }
                    }
                }
            }
            if let Some(f) = &push.paths
                && !paths_match(f, ev.changed_paths.as_deref())
            {
                return not(format!(
                    "on.push.paths: no changed path matches {}",
                    describe(f)
                ));
            }
        }
        Event::PullRequest => {
            let Some(pr) = &t.pull_request else {
                return not("the pipeline has no `on.pull_request` trigger".into());
            };
            if let Some(f) = &pr.branches {
                match &ev.branch {
                    None => {
                        return not(
                            "on.pull_request.branches: the pull request has no target branch"
                                .into(),
                        );
                    }
                    Some(b) => {
                        if let Some(r) = filter_rejects(f, b) {
                            return not(format!("on.pull_request.branches: {r}"));
                        }
                    }
                }
            }
            if let Some(f) = &pr.paths
                && !paths_match(f, ev.changed_paths.as_deref())
            {
                return not(format!(
                    "on.pull_request.paths: no changed path matches {}",
                    describe(f)
                ));
            }
        }
        Event::Tag => {
            let Some(tag) = &ev.tag else {
                return not("tag event without a tag".into());
            };
            let via_tag = t.tag.as_ref().map(|tt| filter_rejects(&tt.patterns, tag));
            let via_push = t
                .push
                .as_ref()
                .and_then(|p| p.tags.as_ref())
                .map(|f| filter_rejects(f, tag));
            match (via_tag, via_push) {
                (Some(None), _) | (_, Some(None)) => {}
                (Some(Some(r)), _) => return not(format!("on.tag: {r}")),
                (None, Some(Some(r))) => return not(format!("on.push.tags: {r}")),
                (None, None) => return not("the pipeline has no `on.tag` trigger".into()),
            }
        }
        Event::Cron => {
            let Some(name) = &ev.cron else {
                return not("cron event without a schedule name".into());
            };
            if !t.cron.contains_key(name) {
                return not(format!("no schedule `{name}` in `on.cron`"));
            }
        }
        Event::Manual => {
            let Some(manual) = &t.manual else {
                return not("the pipeline has no `on.manual` trigger".into());
            };
            if let Some(name) = ev.params.keys().find(|k| !manual.params.contains_key(*k)) {
                return Err(PlanError::UnknownParam { name: name.clone() });
            }
            for (name, param) in &manual.params {
                match ev.params.get(name) {
                    Some(value) => {
                        if !param.options.is_empty() && !param.options.contains(value) {
                            return Err(PlanError::BadParam {
                                name: name.clone(),
                                value: value.clone(),
                                options: param.options.clone(),
                            });
                        }
                    }
                    None => match &param.default {
                        Some(d) => {
                            ev.params.insert(name.clone(), d.clone());
                        }
                        None if param.required => {
                            return Err(PlanError::MissingParam { name: name.clone() });
                        }
                        None => {}
                    },
                }
            }
        }
    }
    Ok(())
}
