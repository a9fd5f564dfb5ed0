//! The OpenAPI v3 checks the API server runs on a custom resource with a
//! structural schema (k8s.io/apiextensions-apiserver validation), with its
//! messages: JSON types, `required`, `maxItems`/`minItems`, `minimum`/`maximum`,
//! `minLength`/`maxLength`, `pattern`, `enum`; and the shape of a CEL rule's
//! failure. `schema` walks an HTTPRoute with them.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Map, Value};

fn re(s: &str) -> Regex {
    Regex::new(s).expect("static patterns compile")
}

pub const HOSTNAME: &str =
    r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
pub const SUBDOMAIN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
pub const HEADER_NAME: &str = r"^[A-Za-z0-9!#$%&'*+\-.^_\x60|~]+$";
pub const GROUP: &str = r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
pub const KIND: &str = r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$";
pub const NAMESPACE: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
pub const PATH_CHARS: &str = r"^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$";

static PATTERNS: LazyLock<Vec<(&'static str, Regex)>> = LazyLock::new(|| {
    [
        HOSTNAME,
        SUBDOMAIN,
        HEADER_NAME,
        GROUP,
        KIND,
        NAMESPACE,
        PATH_CHARS,
    ]
    .into_iter()
    .map(|p| (p, re(p)))
    .collect()
});

pub fn matches(pattern: &str, s: &str) -> bool {
    PATTERNS
        .iter()
        .find(|(p, _)| *p == pattern)
        .is_some_and(|(_, r)| r.is_match(s))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Collects problems as `field: reason` lines.
#[derive(Default)]
pub struct Check(pub Vec<String>);

static EMPTY: LazyLock<Map<String, Value>> = LazyLock::new(Map::new);

impl Check {
    pub fn wrong_type(&mut self, at: &str, v: &Value, want: &str) {
        let got = type_name(v);
        self.0.push(format!(
            "{at}: Invalid value: \"{got}\": {at} in body must be of type {want}: \"{got}\""
        ));
    }

    pub fn cel(&mut self, at: &str, self_type: &str, message: &str) {
        self.0
            .push(format!("{at}: Invalid value: \"{self_type}\": {message}"));
    }

    pub fn object<'a>(&mut self, v: &'a Value, at: &str) -> &'a Map<String, Value> {
        match v {
            Value::Object(m) => m,
            other => {
                self.wrong_type(at, other, "object");
                &EMPTY
            }
        }
    }

    /// An optional list: its items, after `maxItems`.
    pub fn list<'a>(
        &mut self,
        obj: &'a Map<String, Value>,
        at: &str,
        key: &str,
        max: usize,
    ) -> &'a [Value] {
        let at = format!("{at}.{key}");
        match obj.get(key) {
            None | Some(Value::Null) => &[],
            Some(Value::Array(items)) => {
                if items.len() > max {
                    self.0.push(format!(
                        "{at}: Too many: {}: must have at most {max} items",
                        items.len()
                    ));
                }
                items
            }
            Some(other) => {
                self.wrong_type(&at, other, "array");
                &[]
            }
        }
    }

    pub fn string<'a>(
        &mut self,
        obj: &'a Map<String, Value>,
        at: &str,
        key: &str,
        required: bool,
        len: (usize, usize),
    ) -> Option<&'a str> {
        let at = format!("{at}.{key}");
        match obj.get(key) {
            None | Some(Value::Null) => {
                if required {
                    self.0.push(format!("{at}: Required value"));
                }
                None
            }
            Some(Value::String(s)) => {
                if s.len() < len.0 {
                    self.0.push(format!(
                        "{at}: Invalid value: {s:?}: {at} in body should be at least {} chars long",
                        len.0
                    ));
                }
                if s.len() > len.1 {
                    self.0.push(format!(
                        "{at}: Too long: may not be more than {} bytes",
                        len.1
                    ));
                }
                Some(s)
            }
            Some(other) => {
                self.wrong_type(&at, other, "string");
                None
            }
        }
    }

    pub fn pattern(&mut self, at: &str, s: Option<&str>, pattern: &str) {
        if let Some(s) = s
            && !matches(pattern, s)
        {
            self.0.push(format!(
                "{at}: Invalid value: {s:?}: {at} in body should match '{pattern}'"
            ));
        }
    }

    pub fn int(
        &mut self,
        obj: &Map<String, Value>,
        at: &str,
        key: &str,
        required: bool,
        range: (i64, i64),
    ) -> Option<i64> {
        let at = format!("{at}.{key}");
        match obj.get(key) {
            None | Some(Value::Null) => {
                if required {
                    self.0.push(format!("{at}: Required value"));
                }
                None
            }
            Some(v) => match v.as_i64() {
                Some(n) => {
                    if n < range.0 {
                        self.0.push(format!(
                            "{at}: Invalid value: {n}: {at} in body should be greater than or equal to {}",
                            range.0
                        ));
                    }
                    if n > range.1 {
                        self.0.push(format!(
                            "{at}: Invalid value: {n}: {at} in body should be less than or equal to {}",
                            range.1
                        ));
                    }
                    Some(n)
                }
                None => {
                    self.wrong_type(&at, v, "integer");
                    None
                }
            },
        }
    }

    pub fn one_of<'a>(
        &mut self,
        obj: &'a Map<String, Value>,
        at: &str,
        key: &str,
        required: bool,
        allowed: &[&str],
    ) -> Option<&'a str> {
        let s = self.string(obj, at, key, required, (0, usize::MAX))?;
        if !allowed.contains(&s) {
            let list: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
            self.0.push(format!(
                "{at}.{key}: Unsupported value: {s:?}: supported values: {}",
                list.join(", ")
            ));
            return None;
        }
        Some(s)
    }
}
