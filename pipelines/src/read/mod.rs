//! Spanned YAML tree → validated model. Every reader reports problems into [`Ctx`] and
//! carries on with what it can, so one pass finds every mistake in a file.

mod backend;
mod container;
mod deploy;
mod image;
pub(crate) mod keys;
mod kubernetes;
mod nul_bytes;
mod paths;
mod render;
mod runs_on;
mod stage;
mod triggers;

use std::collections::{BTreeMap, BTreeSet, HashSet};

use marked_yaml::Node;
use marked_yaml::types::MarkedMappingNode;

use crate::diagnostic::{Diagnostic, Pos, Severity, codes, did_you_mean};
use crate::duration::{DURATION_HINT, parse_duration};
use crate::expr::{Expr, Template, is_env_name, parse_template_lenient};
use crate::model::{Filter, Pipeline, Stage};
use crate::source::Source;
use crate::when::check_glob;
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

    pub fn entries<'n>(&self, map: &'n MarkedMappingNode) -> Vec<Field<'n>> {
        map.iter()
            .map(|(k, v)| Field {
                key: k.as_str(),
                pos: crate::yaml::key_pos(k),
                value: v,
            })
            .filter(|f| !self.ignored.contains(&f.pos))
            .collect()
    }

    /// A mapping (or an empty value, read as an empty mapping).
    pub fn mapping<'n>(&mut self, node: &'n Node, pos: Pos, what: &str) -> Option<Vec<Field<'n>>> {
        match node {
            Node::Mapping(m) => Some(self.entries(m)),
            _ if is_null(node) => Some(Vec::new()),
            _ => {
                self.wrong_type(pos, what, "a mapping", node);
                None
            }
        }
    }

    /// A mapping whose keys must be among `allowed`; unknown keys are reported.
    pub fn object<'n>(
        &mut self,
        field: Field<'n>,
        what: &str,
        allowed: &[&str],
    ) -> Option<Fields<'n>> {
        let list = self.mapping(
            field.value,
            field.value_pos(),
            &format!("`{}` in {what}", field.key),
        )?;
        Some(self.known(list, field.pos, what, allowed))
    }

    pub fn known<'n>(
        &mut self,
        list: Vec<Field<'n>>,
        owner: Pos,
        what: &str,
        allowed: &[&str],
    ) -> Fields<'n> {
        let mut kept = Vec::with_capacity(list.len());
        for f in list {
            if allowed.contains(&f.key) {
                kept.push(f);
            } else {
                let hint = did_you_mean(f.key, allowed.iter().copied())
                    .or_else(|| Some(format!("expected one of: {}", allowed.join(", "))));
                self.error(
                    codes::UNKNOWN_KEY,
                    f.pos,
                    format!("unknown key `{}` in {what}", f.key),
                    hint,
                );
            }
        }
        Fields { list: kept, owner }
    }

    /// A non-empty scalar, as text.
    pub fn string(&mut self, f: Field<'_>, what: &str) -> Option<String> {
        match f.value {
            Node::Scalar(s) if !is_null(f.value) => Some(s.as_str().to_string()),
            _ => {
                self.wrong_type(
                    f.value_pos(),
                    &format!("`{}` in {what}", f.key),
                    "a string",
                    f.value,
                );
                None
            }
        }
    }

    /// Any scalar as text (numbers and booleans included); empty → "".
    pub fn scalar_text(&mut self, node: &Node, pos: Pos, what: &str) -> Option<String> {
        match node {
            _ if is_null(node) => Some(String::new()),
            Node::Scalar(s) => Some(s.as_str().to_string()),
            _ => {
                self.wrong_type(pos, what, "a string, number or boolean", node);
                None
            }
        }
    }

    /// A string or a list of strings, each with its position.
    pub fn strings(&mut self, f: Field<'_>, what: &str) -> Option<Vec<(String, Pos)>> {
        let what = format!("`{}` in {what}", f.key);
        match f.value {
            _ if is_null(f.value) => Some(Vec::new()),
            Node::Scalar(s) => Some(vec![(s.as_str().to_string(), f.value_pos())]),
            Node::Sequence(items) => {
                let mut out = Vec::new();
                let mut ok = true;
                for item in items.iter() {
                    match item {
                        Node::Scalar(s) if !is_null(item) => {
                            out.push((s.as_str().to_string(), node_pos(item)))
                        }
                        _ => {
                            let pos = if is_null(item) { f.pos } else { node_pos(item) };
                            self.wrong_type(pos, &format!("each item of {what}"), "a string", item);
                            ok = false;
                        }
                    }
                }
                ok.then_some(out)
            }
            Node::Mapping(_) => {
                self.wrong_type(
                    f.value_pos(),
                    &what,
                    "a string or a list of strings",
                    f.value,
                );
                None
            }
        }
    }

    pub fn uint(&mut self, f: Field<'_>, what: &str) -> Option<u64> {
        let parsed = match f.value {
            Node::Scalar(s) if !is_null(f.value) => s.as_str().trim().parse::<u64>().ok(),
            _ => None,
        };
        if parsed.is_none() {
            self.wrong_type(
                f.value_pos(),
                &format!("`{}` in {what}", f.key),
                "a whole number",
                f.value,
            );
        }
        parsed
    }

    pub fn boolean(&mut self, f: Field<'_>, what: &str) -> Option<bool> {
        let parsed = match f.value {
            Node::Scalar(s) => match s.as_str() {
                "true" | "True" | "TRUE" => Some(true),
                "false" | "False" | "FALSE" => Some(false),
                _ => None,
            },
            _ => None,
        };
        if parsed.is_none() {
            self.wrong_type(
                f.value_pos(),
                &format!("`{}` in {what}", f.key),
                "`true` or `false`",
                f.value,
            );
        }
        parsed
    }

    pub fn duration(&mut self, f: Field<'_>, what: &str) -> Option<u64> {
        let text = match f.value {
            Node::Scalar(s) if !is_null(f.value) => s.as_str().to_string(),
            _ => {
                self.wrong_type(
                    f.value_pos(),
                    &format!("`{}` in {what}", f.key),
                    "a duration",
                    f.value,
                );
                return None;
            }
        };
        match parse_duration(&text) {
            Ok(secs) => Some(secs),
            Err(e) => {
                self.error(
                    codes::INVALID_DURATION,
                    f.value_pos(),
                    format!("invalid duration `{text}` for `{}` in {what}: {e}", f.key),
                    Some(DURATION_HINT.into()),
                );
                None
            }
        }
    }

    /// Include/exclude globs: a string, a list, or `{ include, exclude }`.
    pub fn filter(&mut self, f: Field<'_>, what: &str) -> Option<Filter> {
        let (include, exclude) = if let Node::Mapping(_) = f.value {
            let fields = self.object(f, &format!("`{}` in {what}", f.key), keys::FILTER)?;
            let mut side = |k: &str| -> Option<Vec<(String, Pos)>> {
                match fields.get(k) {
                    Some(field) => self.strings(field, &format!("`{}` in {what}", f.key)),
                    None => Some(Vec::new()),
                }
            };
            (side("include")?, side("exclude")?)
        } else {
            let include = self.strings(f, what)?;
            if include.is_empty() {
                self.error(
                    codes::INVALID_VALUE,
                    f.value_pos(),
                    format!("`{}` in {what} is empty", f.key),
                    Some(format!("remove `{}` to match everything", f.key)),
                );
                return None;
            }
            (include, Vec::new())
        };
        let mut ok = true;
        for (pattern, pos) in include.iter().chain(exclude.iter()) {
            if let Err(e) = check_glob(pattern) {
                self.error(
                    codes::INVALID_GLOB,
                    *pos,
                    format!("invalid glob `{pattern}` in `{}` of {what}: {e}", f.key),
                    Some(
                        "globs use `*` (within one path segment), `**`, `?`, `[abc]` and `{a,b}`"
                            .into(),
                    ),
                );
                ok = false;
            }
        }
        ok.then(|| Filter {
            include: include.into_iter().map(|(s, _)| s).collect(),
            exclude: exclude.into_iter().map(|(s, _)| s).collect(),
        })
    }

    /// Parses `${{ }}` in a scalar and checks each expression against where it is used.
    pub fn template(
        &mut self,
        node: &Node,
        pos: Pos,
        what: &str,
        scope: &Scope<'_>,
        allow: Allow,
    ) -> Option<Template> {
        let text = self.scalar_text(node, pos, what)?;
        let start = node.span().start().map(|m| m.character());
        let at = |ctx: &Ctx<'_>, occurrence: usize| -> Pos {
            start
                .and_then(|s| ctx.src.find_expr(s, occurrence))
                .unwrap_or(pos)
        };
        let (template, errors) = parse_template_lenient(&text);
        let mut ok = errors.is_empty();
        for e in errors {
            let p = at(self, e.occurrence);
            self.error(e.code, p, format!("{} in {what}", e.message), e.hint);
        }
        for (expr, occurrence) in template.exprs() {
            if let Err((code, message, hint)) = check_expr(expr, scope, allow, &template) {
                let p = at(self, occurrence);
                self.error(code, p, format!("{message} in {what}"), hint);
                ok = false;
            }
        }
        ok.then_some(template)
    }

    /// `{ NAME: value }` with shell-identifier names and template values.
    pub fn env_map(
        &mut self,
        f: Field<'_>,
        what: &str,
        scope: &Scope<'_>,
        allow: Allow,
    ) -> BTreeMap<String, Template> {
        let mut out = BTreeMap::new();
        let Some(list) = self.mapping(f.value, f.value_pos(), &format!("`{}` in {what}", f.key))
        else {
            return out;
        };
        for e in list {
            if !is_env_name(e.key) {
                self.error(
                    codes::INVALID_ENV_NAME,
                    e.pos,
                    format!("invalid environment variable name `{}` in {what}", e.key),
                    Some("names use letters, digits and `_`, and do not start with a digit".into()),
                );
                continue;
            }
            let item = format!("`{}.{}` in {what}", f.key, e.key);
            if let Some(t) = self.template(e.value, e.value_pos(), &item, scope, allow) {
                out.insert(e.key.to_string(), t);
            }
        }
        out
    }
}

fn check_expr(
    expr: &Expr,
    scope: &Scope<'_>,
    allow: Allow,
    template: &Template,
) -> Result<(), (&'static str, String, Option<String>)> {
    let not_allowed =
        |msg: String, hint: &str| Err((codes::EXPRESSION_NOT_ALLOWED, msg, Some(hint.to_string())));
    match expr {
        Expr::Matrix(_) if scope.any_matrix_key => {}
        Expr::Matrix(k) => match scope.matrix {
            None if scope.stage.is_none() => {
                return not_allowed(
                    format!("`{expr}` is not available at the pipeline level"),
                    "use it in a stage that has a `matrix`",
                );
            }
            None => {
                return Err((
                    codes::UNKNOWN_EXPRESSION,
                    format!(
                        "unknown matrix key `{k}`: stage `{}` has no matrix",
                        scope.stage.unwrap_or_default()
                    ),
                    Some("add a `matrix` to the stage".into()),
                ));
            }
            Some(keys) if !keys.contains(k) => {
                return Err((
                    codes::UNKNOWN_EXPRESSION,
                    format!("unknown matrix key `{k}`"),
                    did_you_mean(k, keys.iter().map(String::as_str)).or_else(|| {
                        Some(format!(
                            "the matrix has: {}",
                            keys.iter().cloned().collect::<Vec<_>>().join(", ")
                        ))
                    }),
                ));
            }
            Some(_) => {}
        },
        Expr::Param(p) if !scope.params.contains(p) => {
            return Err((
                codes::UNKNOWN_EXPRESSION,
                format!("unknown parameter `{p}`"),
                did_you_mean(p, scope.params.iter().map(String::as_str))
                    .or_else(|| Some("declare it under `on.manual.params`".into())),
            ));
        }
        Expr::StageOutput { stage, .. } => {
            if allow != Allow::Script {
                return not_allowed(
                    format!("`{expr}` is only known while the run executes"),
                    "use it in a step's `run` instead, where it becomes a shell variable",
                );
            }
            if !scope.needs.is_some_and(|n| n.contains(stage)) {
                return not_allowed(
                    format!("`{expr}` refers to stage `{stage}`, which is not in `needs`"),
                    &format!(
                        "add `{stage}` to `needs`: outputs exist only for stages that finished first"
                    ),
                );
            }
        }
        Expr::Run(_) if allow != Allow::Script => {
            return not_allowed(
                format!("`{expr}` is only known while the run executes"),
                "use it in a step's `run` instead, where it becomes a shell variable",
            );
        }
        Expr::Secret(_) => match allow {
            Allow::Script => {}
            Allow::Env if template.as_single_expr().is_some() => {}
            Allow::Env => {
                return not_allowed(
                    format!("`{expr}` must be the whole value"),
                    "secrets are injected by the runner as the entire variable value; write `NAME: ${{ secrets.X }}`",
                );
            }
            Allow::Text => {
                return not_allowed(
                    format!("secrets are not allowed here (`{expr}`)"),
                    "secrets can only be used as env values or in a step's `run`",
                );
            }
        },
        _ => {}
    }
    Ok(())
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
        Some(f) => read_stages(ctx, f, &params),
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
