//! A field read as a typed value: a mapping (with its known keys), a string or list of
//! strings, a whole number, a boolean, a duration, an include/exclude filter.

use marked_yaml::Node;
use marked_yaml::types::MarkedMappingNode;

use super::{Ctx, Field, Fields, is_null, keys};
use crate::diagnostic::{Pos, codes, did_you_mean};
use crate::duration::{DURATION_HINT, parse_duration};
use crate::model::Filter;
use crate::when::check_glob;
use crate::yaml::node_pos;

impl Ctx<'_> {
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
}
