//! Spanned YAML tree → validated model. Every reader reports problems into [`Ctx`] and
//! carries on with what it can, so one pass finds every mistake in a file.
//!
//! Here: [`Ctx`] and the reading of the top level. `values` reads a field as a typed
//! value, `templates` reads `${{ }}` templates and checks their expressions; the other
//! modules read one part of a pipeline each.

mod backend;
mod container;
mod deploy;
mod image;
pub(crate) mod keys;
mod kubernetes;
mod matrix;
mod nul_bytes;
mod paths;
mod render;
mod rollout;
mod runs_on;
mod services;
mod stage;
mod steps;
mod templates;
mod triggers;
mod values;

use std::collections::{BTreeMap, BTreeSet, HashSet};

use marked_yaml::Node;

use crate::diagnostic::{Diagnostic, Pos, Severity, codes};
use crate::model::{Pipeline, Stage};
use crate::source::Source;
use crate::yaml::node_pos;

pub(crate) use stage::read_stages;
pub(crate) use triggers::read_triggers;

pub(crate) struct Ctx<'a> {
    pub file: &'a str,
    pub src: Source,
    pub ignored: HashSet<Pos>,
    pub diags: Vec<Diagnostic>,
}

/// One `key: value` entry of a mapping.
#[derive(Clone, Copy)]
pub(crate) struct Field<'n> {
    pub key: &'n str,
    pub pos: Pos,
    pub value: &'n Node,
}

impl Field<'_> {
    /// Where to point at the value; an empty value has no useful position, so the key.
    pub fn value_pos(&self) -> Pos {
        if is_null(self.value) {
            self.pos
        } else {
            node_pos(self.value)
        }
    }
}

/// The known entries of a mapping, plus where the mapping's owner key is (for "missing
/// key" diagnostics).
pub(crate) struct Fields<'n> {
    pub list: Vec<Field<'n>>,
    pub owner: Pos,
}

impl<'n> Fields<'n> {
    pub fn get(&self, key: &str) -> Option<Field<'n>> {
        self.list.iter().find(|f| f.key == key).copied()
    }
}

/// A YAML null: an empty value, `~` or `null` (unquoted).
pub(crate) fn is_null(node: &Node) -> bool {
    matches!(node, Node::Scalar(s) if s.may_coerce() && matches!(s.as_str(), "" | "~" | "null" | "Null" | "NULL"))
}

fn describe(node: &Node) -> String {
    match node {
        _ if is_null(node) => "nothing".into(),
        Node::Scalar(s) => {
            let v: String = s.as_str().chars().take(40).collect();
            format!("`{v}`")
        }
        Node::Mapping(_) => "a mapping".into(),
        Node::Sequence(_) => "a list".into(),
    }
}

/// What an expression may refer to, where it appears.
pub(crate) struct Scope<'s> {
    pub matrix: Option<&'s BTreeSet<String>>,
    /// The stage's matrix is broken (and reported): do not check matrix keys.
    pub any_matrix_key: bool,
    pub params: &'s BTreeSet<String>,
    /// `None` outside a stage.
    pub needs: Option<&'s [String]>,
    pub stage: Option<&'s str>,
}

/// Where a template is used decides which expressions make sense there.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Allow {
    /// A step's `run`: everything (values become shell variables).
    Script,
    /// An env value: plan-time values, and a secret as the whole value.
    Env,
    /// Other text (image, push, build args, service env): plan-time values only.
    Text,
    /// A rollout's image: plan-time values, and outputs of stages in `needs` (the
    /// server fills them in when the rollout starts); no secrets.
    Rollout,
}

impl<'a> Ctx<'a> {
    pub fn new(file: &'a str, text: &str, ignored: HashSet<Pos>) -> Self {
        Ctx {
            file,
            src: Source::new(text),
            ignored,
            diags: Vec::new(),
        }
    }

    pub fn error(
        &mut self,
        code: &'static str,
        pos: Pos,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.push(Severity::Error, code, pos, message.into(), hint);
    }

    pub fn push(
        &mut self,
        severity: Severity,
        code: &'static str,
        pos: Pos,
        message: String,
        hint: Option<String>,
    ) {
        self.diags.push(Diagnostic {
            severity,
            code: code.to_string(),
            file: self.file.to_string(),
            line: pos.line,
            column: pos.column,
            message,
            hint,
        });
    }

    pub fn wrong_type(&mut self, pos: Pos, what: &str, expected: &str, node: &Node) {
        self.error(
            codes::WRONG_TYPE,
            pos,
            format!("{what} must be {expected}, found {}", describe(node)),
            None,
        );
    }

    pub fn missing(&mut self, pos: Pos, what: &str, key: &str, hint: Option<String>) {
        self.error(
            codes::MISSING_KEY,
            pos,
            format!("{what} is missing required key `{key}`"),
            hint,
        );
    }
}

/// Reads a whole file's tree into a pipeline (with every problem reported into `ctx`).
pub(crate) fn read_pipeline(
    ctx: &mut Ctx<'_>,
    root: &Node,
    default_name: String,
    yaml_sha256: String,
) -> Option<Pipeline> {
    let Node::Mapping(map) = root else {
        ctx.error(
            codes::NOT_A_MAPPING,
            Pos::START,
            "the top level of a pipeline file must be a mapping",
            None,
        );
        return None;
    };
    nul_bytes::report_nul_bytes(ctx, root);
    let list = ctx.entries(map);
    if list.is_empty() {
        ctx.error(
            codes::EMPTY_FILE,
            Pos::START,
            "the pipeline file is empty",
            Some("add at least `stages:` with one stage".into()),
        );
        return None;
    }
    let top = ctx.known(list, Pos::START, "the pipeline", keys::TOP);

    let name = match top.get("name") {
        Some(f) => {
            let n = ctx.string(f, "the pipeline");
            if let Some(n) = &n {
                check_name(ctx, n, f.value_pos(), "pipeline name", false);
            }
            n.unwrap_or(default_name)
        }
        None => default_name,
    };

    let triggers = read_triggers(ctx, top.get("on"));
    let params: BTreeSet<String> = triggers
        .manual
        .as_ref()
        .map(|m| m.params.keys().cloned().collect())
        .unwrap_or_default();
    let scope = Scope {
        matrix: None,
        any_matrix_key: false,
        params: &params,
        needs: None,
        stage: None,
    };
    let env = match top.get("env") {
        Some(f) => ctx.env_map(f, "the pipeline", &scope, Allow::Env),
        None => BTreeMap::new(),
    };
    let stages: Vec<Stage> = match top.get("stages") {
        Some(f) => {
            let stages = read_stages(ctx, f, &params);
            check_stage_count(ctx, &stages, f.pos);
            stages
        }
        None => {
            ctx.missing(
                Pos::START,
                "the pipeline",
                "stages",
                Some("add `stages:` with at least one stage".into()),
            );
            Vec::new()
        }
    };
    Some(Pipeline {
        name,
        file: ctx.file.to_string(),
        yaml_sha256,
        triggers,
        env,
        stages,
        warnings: Vec::new(),
    })
}

fn check_stage_count(ctx: &mut Ctx<'_>, stages: &[Stage], pos: Pos) {
    let count = crate::limits::planned_stage_count(stages);
    if count > crate::MAX_STAGES {
        ctx.error(
            codes::TOO_MANY_STAGES,
            pos,
            format!(
                "the pipeline plans {count} stages (matrix combinations counted); the limit is {}",
                crate::MAX_STAGES
            ),
            Some(
                "split it into several pipelines under `.slipway/`, or shrink the matrices".into(),
            ),
        );
    }
}

/// Names end up in ids, URLs, env var names and DNS labels, so keep them plain.
pub(crate) fn check_name(ctx: &mut Ctx<'_>, name: &str, pos: Pos, what: &str, dns: bool) -> bool {
    let valid = if dns {
        !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-')
    } else {
        name.len() <= 63
            && name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    if !valid {
        let rule = if dns {
            "use lowercase letters, digits and `-` (at most 63 characters; it becomes a host name)"
        } else {
            "use letters, digits, `-`, `_` and `.`, starting with a letter or digit (at most 63 characters)"
        };
        ctx.error(
            codes::INVALID_NAME,
            pos,
            format!("invalid {what} `{name}`"),
            Some(rule.into()),
        );
    }
    valid
}
