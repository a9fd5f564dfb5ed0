//! Text → spanned YAML tree, turning every loader failure into a diagnostic.

use std::collections::HashSet;

use marked_yaml::types::MarkedScalarNode;
use marked_yaml::{LoadError, LoaderOptions, Node};

use crate::diagnostic::{Pos, codes};

pub(crate) struct Loaded {
    pub node: Node,
    /// Positions of keys renamed to get past duplicates; readers skip them.
    pub ignored_keys: HashSet<Pos>,
}

pub(crate) struct YamlError {
    pub code: &'static str,
    pub pos: Pos,
    pub message: String,
    pub hint: Option<String>,
}

fn marker_pos(m: &marked_yaml::Marker) -> Pos {
    Pos {
        line: m.line().max(1),
        column: m.column().max(1),
    }
}

pub(crate) fn key_pos(k: &MarkedScalarNode) -> Pos {
    k.span().start().map_or(Pos::START, marker_pos)
}

/// Start of a node; for a mapping, its first key (the mapping's own marker can point
/// past it).
pub(crate) fn node_pos(node: &Node) -> Pos {
    if let Node::Mapping(m) = node
        && let Some((k, _)) = m.iter().next()
    {
        return key_pos(k);
    }
    node.span().start().map_or(Pos::START, marker_pos)
}

/// Loads the first (only) document. Duplicate keys are all reported: each one found is
/// renamed in a private copy of the text and the load retried, because the loader stops
/// at the first.
pub(crate) fn load(text: &str) -> (Option<Loaded>, Vec<YamlError>) {
    let mut errors = Vec::new();
    if let Some(e) = second_document(text) {
        errors.push(e);
    }
    let mut chars: Vec<char> = text.chars().collect();
    let mut ignored_keys = HashSet::new();
    let options = || LoaderOptions::default().prevent_coercion(true);
    for round in 0..200u32 {
        let current: String = chars.iter().collect();
        match marked_yaml::parse_yaml_with_options(
            0,
            &current,
            options().error_on_duplicate_keys(true),
        ) {
            Ok(node) => return (Some(Loaded { node, ignored_keys }), errors),
            Err(LoadError::DuplicateKey(dup)) => {
                let pos = key_pos(&dup.key);
                let first = key_pos(&dup.prev_key);
                errors.push(YamlError {
                    code: codes::DUPLICATE_KEY,
                    pos,
                    message: format!("duplicate key `{}`", dup.key.as_str()),
                    hint: Some(format!(
                        "`{}` is already defined at line {}, column {}",
                        dup.key.as_str(),
                        first.line,
                        first.column
                    )),
                });
                ignored_keys.insert(pos);
                if !rename_key(&mut chars, &dup.key, round) {
                    // Could not locate the key text; fall back to "last one wins".
                    return match marked_yaml::parse_yaml_with_options(0, &current, options()) {
                        Ok(node) => (Some(Loaded { node, ignored_keys }), errors),
                        Err(e) => {
                            errors.push(load_error(e));
                            (None, errors)
                        }
                    };
                }
            }
            Err(e) => {
                errors.push(load_error(e));
                return (None, errors);
            }
        }
    }
    (None, errors)
}

/// Overwrites the key's characters with private-use characters (same count, so every
/// other position in the file stays the same).
fn rename_key(chars: &mut [char], key: &MarkedScalarNode, round: u32) -> bool {
    let Some(start) = key.span().start().map(|m| m.character()) else {
        return false;
    };
    let want: Vec<char> = key.as_str().chars().collect();
    if want.is_empty() {
        return false;
    }
    let filler = char::from_u32(0xE000 + round).unwrap_or('\u{E000}');
    for offset in [0usize, 1] {
        let from = start + offset;
        if let Some(slice) = chars.get_mut(from..from + want.len())
            && *slice == want[..]
        {
            slice.iter_mut().for_each(|c| *c = filler);
            return true;
        }
    }
    false
}

fn load_error(e: LoadError) -> YamlError {
    let (code, pos, message, hint) = match e {
        LoadError::ScanError(m, scan) if scan.info().contains("anchor") => (
            codes::YAML_UNSUPPORTED,
            marker_pos(&m),
            "YAML aliases (`*name`) are not supported".to_string(),
            Some(ANCHOR_HINT.to_string()),
        ),
        LoadError::ScanError(m, scan) => (
            codes::YAML_SYNTAX,
            marker_pos(&m),
            format!("YAML syntax error: {}", scan.info()),
            None,
        ),
        LoadError::UnexpectedAnchor(m) => (
            codes::YAML_UNSUPPORTED,
            marker_pos(&m),
            "YAML anchors and aliases (`&name`, `*name`) are not supported".to_string(),
            Some(ANCHOR_HINT.to_string()),
        ),
        LoadError::UnexpectedTag(m) => (
            codes::YAML_UNSUPPORTED,
            marker_pos(&m),
            "YAML tags (`!!str`, `!name`) are not supported".to_string(),
            Some("quote the value if you want a string".to_string()),
        ),
        LoadError::MappingKeyMustBeScalar(m) => (
            codes::YAML_UNSUPPORTED,
            marker_pos(&m),
            "mapping keys must be plain strings".to_string(),
            None,
        ),
        LoadError::TopLevelMustBeMapping(m) | LoadError::TopLevelMustBeSequence(m) => (
            codes::NOT_A_MAPPING,
            marker_pos(&m),
            "the top level of a pipeline file must be a mapping".to_string(),
            Some("start with keys such as `on:`, `env:` and `stages:`".to_string()),
        ),
        LoadError::DuplicateKey(dup) => (
            codes::DUPLICATE_KEY,
            key_pos(&dup.key),
            format!("duplicate key `{}`", dup.key.as_str()),
            None,
        ),
    };
    YamlError {
        code,
        pos,
        message,
        hint,
    }
}

const ANCHOR_HINT: &str =
    "repeat the value instead: every value should be readable where it is used";

/// The loader silently ignores documents after the first; a second one is a mistake.
fn second_document(text: &str) -> Option<YamlError> {
    let mut seen_content = false;
    for (i, line) in text.lines().enumerate() {
        let is_marker = |m: &str| {
            line.strip_prefix(m)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
        };
        if is_marker("---") {
            if seen_content {
                return Some(YamlError {
                    code: codes::YAML_UNSUPPORTED,
                    pos: Pos {
                        line: i + 1,
                        column: 1,
                    },
                    message: "a pipeline file holds one YAML document; found a second one".into(),
                    hint: Some("put each pipeline in its own file under `.slipway/`".into()),
                });
            }
            continue;
        }
        let t = line.trim();
        if !t.is_empty() && !t.starts_with('#') && !t.starts_with('%') {
            seen_content = true;
        }
    }
    None
}
