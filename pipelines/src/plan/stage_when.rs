//! Whether a stage's `when` skips it for the event, and why.

use crate::event::EventContext;
use crate::model::When;
use crate::when::{describe, filter_rejects, paths_match};

pub(super) fn when_rejects(when: &When, ev: &EventContext) -> Option<String> {
    if let Some(events) = &when.event
        && !events.contains(&ev.event)
    {
        let names: Vec<&str> = events.iter().map(|e| e.as_str()).collect();
        return Some(format!(
            "when.event: `{}` is not one of {}",
            ev.event,
            names.join(", ")
        ));
    }
    if let Some(f) = &when.branch {
        match &ev.branch {
            None => return Some(format!("when.branch: a {} event has no branch", ev.event)),
            Some(b) => {
                if let Some(r) = filter_rejects(f, b) {
                    return Some(format!("when.branch: {r}"));
                }
            }
        }
    }
    if let Some(f) = &when.tag {
        match &ev.tag {
            None => return Some(format!("when.tag: a {} event has no tag", ev.event)),
            Some(t) => {
                if let Some(r) = filter_rejects(f, t) {
                    return Some(format!("when.tag: {r}"));
                }
            }
        }
    }
    if let Some(f) = &when.paths
        && !paths_match(f, ev.changed_paths.as_deref())
    {
        return Some(format!(
            "when.paths: no changed path matches {}",
            describe(f)
        ));
    }
    None
}
