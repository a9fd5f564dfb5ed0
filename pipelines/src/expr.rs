//! `${{ expr }}` templates: parsing, and the names of the variables they become.
//!
//! The grammar is deliberately tiny (a dotted path, no operators): expressions only ever
//! name a value, so a plan can be computed without evaluating anything user-controlled.

use serde::{Serialize, Serializer};

use crate::diagnostic::{codes, did_you_mean};

/// A value an expression can name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case", tag = "context", content = "name")]
pub enum Expr {
    Git(GitField),
    Event,
    Repo,
    Matrix(String),
    Param(String),
    Secret(String),
    StageOutput { stage: String, key: String },
    Run(RunField),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GitField {
    Sha,
    ShortSha,
    Branch,
    Tag,
    Ref,
    Message,
    Author,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunField {
    Number,
    Id,
    Url,
}

const GIT_FIELDS: &[(&str, GitField)] = &[
    ("sha", GitField::Sha),
    ("short_sha", GitField::ShortSha),
    ("branch", GitField::Branch),
    ("tag", GitField::Tag),
    ("ref", GitField::Ref),
    ("message", GitField::Message),
    ("author", GitField::Author),
];
const RUN_FIELDS: &[(&str, RunField)] = &[
    ("number", RunField::Number),
    ("id", RunField::Id),
    ("url", RunField::Url),
];
const CONTEXTS: &[&str] = &[
    "git", "event", "repo", "matrix", "params", "secrets", "stages", "run",
];

impl Expr {
    /// The environment variable a step script reads instead of the expression text.
    pub fn env_var(&self) -> String {
        match self {
            Expr::Git(f) => format!("SLIPWAY_GIT_{}", env_segment(git_name(*f))),
            Expr::Event => "SLIPWAY_EVENT".into(),
            Expr::Repo => "SLIPWAY_REPO".into(),
            Expr::Matrix(k) => format!("SLIPWAY_MATRIX_{}", env_segment(k)),
            Expr::Param(p) => format!("SLIPWAY_PARAM_{}", env_segment(p)),
            Expr::Secret(s) => format!("SLIPWAY_SECRET_{}", env_segment(s)),
            Expr::StageOutput { stage, key } => {
                format!("SLIPWAY_STAGE_{}_{}", env_segment(stage), env_segment(key))
            }
            Expr::Run(f) => format!("SLIPWAY_RUN_{}", env_segment(run_name(*f))),
        }
    }

    /// Known only while the run executes (the runner provides them), not when planning.
    pub fn is_runtime(&self) -> bool {
        matches!(self, Expr::Run(_) | Expr::StageOutput { .. })
    }
}

impl std::fmt::Display for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expr::Git(g) => write!(f, "git.{}", git_name(*g)),
            Expr::Event => f.write_str("event"),
            Expr::Repo => f.write_str("repo"),
            Expr::Matrix(k) => write!(f, "matrix.{k}"),
            Expr::Param(p) => write!(f, "params.{p}"),
            Expr::Secret(s) => write!(f, "secrets.{s}"),
            Expr::StageOutput { stage, key } => write!(f, "stages.{stage}.outputs.{key}"),
            Expr::Run(r) => write!(f, "run.{}", run_name(*r)),
        }
    }
}

fn git_name(f: GitField) -> &'static str {
    GIT_FIELDS
        .iter()
        .find(|(_, g)| *g == f)
        .map_or("sha", |(n, _)| n)
}

fn run_name(f: RunField) -> &'static str {
    RUN_FIELDS
        .iter()
        .find(|(_, r)| *r == f)
        .map_or("id", |(n, _)| n)
}

/// Upper-cases and replaces anything that is not `[A-Z0-9_]`, so any name fits in a
/// shell variable name.
pub fn env_segment(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    /// `occurrence` is the index of this `${{` among all `${{` in the string (used to
    /// find its position in the file).
    Expr {
        expr: Expr,
        occurrence: usize,
    },
}

/// A string that may contain `${{ expr }}`. Serializes as its source text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Template {
    pub source: String,
    pub parts: Vec<Part>,
}

impl Serialize for Template {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl Template {
    pub fn literal(s: impl Into<String>) -> Self {
        let source = s.into();
        Template {
            parts: vec![Part::Text(source.clone())],
            source,
        }
    }

    pub fn exprs(&self) -> impl Iterator<Item = (&Expr, usize)> {
        self.parts.iter().filter_map(|p| match p {
            Part::Expr { expr, occurrence } => Some((expr, *occurrence)),
            Part::Text(_) => None,
        })
    }

    /// If the whole template is a single expression (e.g. `${{ secrets.X }}`), that one.
    pub fn as_single_expr(&self) -> Option<&Expr> {
        match self.parts.as_slice() {
            [Part::Expr { expr, .. }] => Some(expr),
            _ => None,
        }
    }

    /// Substitutes each expression with `value(expr)` as plain text.
    pub fn render(&self, mut value: impl FnMut(&Expr) -> String) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Expr { expr, .. } => out.push_str(&value(expr)),
            }
        }
        out
    }

    /// Shell text with every expression replaced by `${VAR}`: values never become code.
    pub fn render_shell(&self) -> String {
        self.render(|e| format!("${{{}}}", e.env_var()))
    }
}

/// A malformed or unknown expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    pub occurrence: usize,
    pub code: &'static str,
    pub message: String,
    pub hint: Option<String>,
}

/// Parses every `${{ … }}` in `s`, collecting every error.
pub fn parse_template(s: &str) -> Result<Template, Vec<ExprError>> {
    let (template, errors) = parse_template_lenient(s);
    if errors.is_empty() {
        Ok(template)
    } else {
        Err(errors)
    }
}

/// Like [`parse_template`], but also returns the well-formed expressions when others are
/// broken, so callers can check those too.
pub fn parse_template_lenient(s: &str) -> (Template, Vec<ExprError>) {
    let mut parts = Vec::new();
    let mut errors = Vec::new();
    let mut rest = s;
    let mut occurrence = 0;
    while let Some(start) = rest.find("${{") {
        if start > 0 {
            parts.push(Part::Text(rest[..start].to_string()));
        }
        let after = &rest[start + 3..];
        let Some(end) = after.find("}}") else {
            errors.push(ExprError {
                occurrence,
                code: codes::INVALID_EXPRESSION,
                message: "unclosed expression: `${{` without `}}`".into(),
                hint: Some("close it with `}}`".into()),
            });
            rest = "";
            break;
        };
        match parse_expr(after[..end].trim()) {
            Ok(expr) => parts.push(Part::Expr { expr, occurrence }),
            Err((code, message, hint)) => errors.push(ExprError {
                occurrence,
                code,
                message,
                hint,
            }),
        }
        rest = &after[end + 2..];
        occurrence += 1;
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_string()));
    }
    let template = Template {
        source: s.to_string(),
        parts,
    };
    (template, errors)
}

type ParseErr = (&'static str, String, Option<String>);

fn parse_expr(inner: &str) -> Result<Expr, ParseErr> {
    if inner.is_empty() {
        return Err((
            codes::INVALID_EXPRESSION,
            "empty expression `${{ }}`".into(),
            Some("write a value such as `${{ git.sha }}`".into()),
        ));
    }
    let allowed = |c: &char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    // Point at the operator in `a + b`, not at the space before it.
    let bad = inner
        .chars()
        .find(|c| !allowed(c) && !c.is_whitespace())
        .or_else(|| inner.chars().find(|c| !allowed(c)));
    if let Some(bad) = bad {
        return Err((
            codes::INVALID_EXPRESSION,
            format!("unexpected character `{bad}` in expression `{inner}`"),
            Some(
                "expressions are dotted names such as `matrix.os`; operators are not supported"
                    .into(),
            ),
        ));
    }
    let segs: Vec<&str> = inner.split('.').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return Err((
            codes::INVALID_EXPRESSION,
            format!("malformed expression `{inner}`"),
            Some("expressions are dotted names such as `matrix.os`".into()),
        ));
    }
    let unknown = |what: String, candidates: &[&str]| -> ParseErr {
        let word = what.rsplit('.').next().unwrap_or_default().to_string();
        (
            codes::UNKNOWN_EXPRESSION,
            format!("unknown expression `{inner}`"),
            did_you_mean(&word, candidates.iter().copied()),
        )
    };
    let git: Vec<&str> = GIT_FIELDS.iter().map(|(n, _)| *n).collect();
    let run: Vec<&str> = RUN_FIELDS.iter().map(|(n, _)| *n).collect();
    match segs.as_slice() {
        ["git", f] => GIT_FIELDS
            .iter()
            .find(|(n, _)| n == f)
            .map(|(_, g)| Expr::Git(*g))
            .ok_or_else(|| unknown(f.to_string(), &git)),
        ["run", f] => RUN_FIELDS
            .iter()
            .find(|(n, _)| n == f)
            .map(|(_, r)| Expr::Run(*r))
            .ok_or_else(|| unknown(f.to_string(), &run)),
        ["event"] => Ok(Expr::Event),
        ["repo"] => Ok(Expr::Repo),
        ["matrix", k] => Ok(Expr::Matrix(k.to_string())),
        ["params", p] => Ok(Expr::Param(p.to_string())),
        ["secrets", s] => {
            if is_secret_name(s) {
                Ok(Expr::Secret(s.to_string()))
            } else if is_env_name(s) {
                Err((
                    codes::INVALID_EXPRESSION,
                    format!("secret name `{s}` is longer than {MAX_SECRET_NAME_LEN} characters"),
                    Some("the server stores no longer secret names; shorten it".into()),
                ))
            } else {
                Err((
                    codes::INVALID_EXPRESSION,
                    format!("`{s}` is not a valid secret name"),
                    Some("secret names look like `DEPLOY_TOKEN` (letters, digits, `_`)".into()),
                ))
            }
        }
        ["stages", stage, "outputs", key] => Ok(Expr::StageOutput {
            stage: stage.to_string(),
            key: key.to_string(),
        }),
        [ctx, ..] if CONTEXTS.contains(ctx) => Err((
            codes::UNKNOWN_EXPRESSION,
            format!("unknown expression `{inner}`"),
            Some(
                match *ctx {
                    "git" => "use one of git.sha, git.short_sha, git.branch, git.tag, git.ref, git.message, git.author",
                    "run" => "use one of run.number, run.id, run.url",
                    "stages" => "write `stages.<stage>.outputs.<key>`",
                    "event" | "repo" => "write it without anything after it",
                    _ => "write `<context>.<name>`, e.g. `matrix.os`",
                }
                .to_string(),
            ),
        )),
        [ctx, ..] => Err((
            codes::UNKNOWN_EXPRESSION,
            format!("unknown context `{ctx}` in expression `{inner}`"),
            did_you_mean(ctx, CONTEXTS.iter().copied()).or_else(|| {
                Some("contexts are git, event, repo, matrix, params, secrets, stages, run".into())
            }),
        )),
        [] => Err(unknown(String::new(), CONTEXTS)),
    }
}

/// A valid shell variable name: `[A-Za-z_][A-Za-z0-9_]*`.
/// Longest secret name the server stores (`slipway secret set` refuses longer ones).
pub const MAX_SECRET_NAME_LEN: usize = 128;

/// A name a secret can have: an environment variable name of at most
/// [`MAX_SECRET_NAME_LEN`] characters.
pub fn is_secret_name(s: &str) -> bool {
    s.len() <= MAX_SECRET_NAME_LEN && is_env_name(s)
}

pub fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exprs(s: &str) -> Vec<Expr> {
        parse_template(s)
            .unwrap()
            .exprs()
            .map(|(e, _)| e.clone())
            .collect()
    }

    #[test]
    fn parses_all_contexts() {
        assert_eq!(
            exprs(
                "a ${{ git.sha }} b ${{matrix.os}} ${{ params.x }} ${{ secrets.TOKEN }} ${{ stages.build.outputs.digest }} ${{ run.url }} ${{ event }} ${{ repo }}"
            ),
            vec![
                Expr::Git(GitField::Sha),
                Expr::Matrix("os".into()),
                Expr::Param("x".into()),
                Expr::Secret("TOKEN".into()),
                Expr::StageOutput {
                    stage: "build".into(),
                    key: "digest".into()
                },
                Expr::Run(RunField::Url),
                Expr::Event,
                Expr::Repo,
            ]
        );
    }

    #[test]
    fn no_expressions_is_one_text_part() {
        let t = parse_template("echo $HOME").unwrap();
        assert_eq!(t.parts, vec![Part::Text("echo $HOME".into())]);
        assert_eq!(parse_template("").unwrap().parts, vec![]);
    }

    #[test]
    fn shell_rendering_uses_variables() {
        let t = parse_template("cargo test --features ${{ matrix.features }} # ${{ git.branch }}")
            .unwrap();
        assert_eq!(
            t.render_shell(),
            "cargo test --features ${SLIPWAY_MATRIX_FEATURES} # ${SLIPWAY_GIT_BRANCH}"
        );
    }

    #[test]
    fn errors_carry_occurrence_and_code() {
        let errs = parse_template(
            "${{ git.sha }} ${{ }} ${{ a + b }} ${{ foo.bar }} ${{ git.brnch }} ${{ git.sha",
        )
        .unwrap_err();
        let got: Vec<(usize, &str)> = errs.iter().map(|e| (e.occurrence, e.code)).collect();
        assert_eq!(
            got,
            vec![
                (1, codes::INVALID_EXPRESSION),
                (2, codes::INVALID_EXPRESSION),
                (3, codes::UNKNOWN_EXPRESSION),
                (4, codes::UNKNOWN_EXPRESSION),
                (5, codes::INVALID_EXPRESSION),
            ]
        );
        assert_eq!(errs[3].hint.as_deref(), Some("did you mean `branch`?"));
    }

    #[test]
    fn env_names() {
        assert!(is_env_name("CARGO_TERM_COLOR"));
        assert!(is_env_name("_x1"));
        assert!(!is_env_name("1X"));
        assert!(!is_env_name("A-B"));
        assert!(!is_env_name(""));
        assert!(is_secret_name(&"S".repeat(MAX_SECRET_NAME_LEN)));
        assert!(!is_secret_name(&"S".repeat(MAX_SECRET_NAME_LEN + 1)));
    }
}
