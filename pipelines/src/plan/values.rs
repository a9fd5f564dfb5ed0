//! Plan-time values of expressions (git, event, matrix, parameters) and templates
//! rendered with them.

use std::collections::BTreeMap;

use crate::event::{Event, EventContext};
use crate::expr::{Expr, GitField, Template};
use crate::matrix::Combination;
use crate::model::Pipeline;

pub(super) struct Values<'a> {
    pub(super) ev: &'a EventContext,
    pub(super) pipeline: &'a Pipeline,
}

impl Values<'_> {
    /// The value of an expression known when planning; `None` for secrets and run-time values.
    pub(super) fn get(&self, e: &Expr, combo: &Combination) -> Option<String> {
        let ev = self.ev;
        let opt = |o: &Option<String>| o.clone().unwrap_or_default();
        Some(match e {
            Expr::Git(GitField::Sha) => ev.sha.clone(),
            Expr::Git(GitField::ShortSha) => short_sha(&ev.sha),
            Expr::Git(GitField::Branch) => opt(&ev.branch),
            Expr::Git(GitField::Tag) => opt(&ev.tag),
            Expr::Git(GitField::Ref) => git_ref(ev),
            Expr::Git(GitField::Message) => opt(&ev.message),
            Expr::Git(GitField::Author) => opt(&ev.author),
            Expr::Event => ev.event.as_str().to_string(),
            Expr::Repo => opt(&ev.repo),
            Expr::Matrix(k) => combo.get(k).cloned().unwrap_or_default(),
            Expr::Param(p) => ev
                .params
                .get(p)
                .cloned()
                .or_else(|| {
                    self.pipeline
                        .triggers
                        .manual
                        .as_ref()
                        .and_then(|m| m.params.get(p))
                        .and_then(|p| p.default.clone())
                })
                .unwrap_or_default(),
            Expr::Secret(_) | Expr::StageOutput { .. } | Expr::Run(_) => return None,
        })
    }

    pub(super) fn text(&self, t: &Template, combo: &Combination) -> String {
        t.render(|e| self.get(e, combo).unwrap_or_default())
    }

    /// Like [`Self::text`], but what only the run knows (stage outputs) stays a
    /// `${SLIPWAY_…}` reference for the server to fill in.
    pub(super) fn text_late(&self, t: &Template, combo: &Combination) -> String {
        t.render(|e| {
            self.get(e, combo)
                .unwrap_or_else(|| format!("${{{}}}", e.env_var()))
        })
    }

    /// Renders env values into `env`; a value that is a secret goes into `secrets` instead.
    pub(super) fn env_into(
        &self,
        src: &BTreeMap<String, Template>,
        combo: &Combination,
        env: &mut BTreeMap<String, String>,
        secrets: &mut BTreeMap<String, String>,
    ) {
        for (k, t) in src {
            if let Some(Expr::Secret(name)) = t.as_single_expr() {
                env.remove(k);
                secrets.insert(k.clone(), name.clone());
            } else {
                secrets.remove(k);
                env.insert(k.clone(), self.text(t, combo));
            }
        }
    }
}

pub(super) fn short_sha(sha: &str) -> String {
    sha.chars().take(7).collect()
}

fn git_ref(ev: &EventContext) -> String {
    match (&ev.tag, &ev.branch) {
        (Some(t), _) if ev.event == Event::Tag => format!("refs/tags/{t}"),
        _ if ev.event == Event::PullRequest => ev
            .source_branch
            .as_ref()
            .or(ev.branch.as_ref())
            .map(|b| format!("refs/heads/{b}"))
            .unwrap_or_default(),
        (_, Some(b)) => format!("refs/heads/{b}"),
        (Some(t), None) => format!("refs/tags/{t}"),
        (None, None) => String::new(),
    }
}
