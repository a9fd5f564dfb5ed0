//! Multi-document YAML (kubectl, docker-compose output) into JSON values, with the
//! workspace's YAML parser. Plain scalars become booleans, integers, floats or null as
//! YAML 1.2's core schema says; quoted ones stay strings, so `"2"` and `2` differ here
//! exactly as they do for the Kubernetes API.

use marked_yaml::{LoaderOptions, Node};
use serde_json::{Map, Value};

/// Splits on `---` document markers and parses each non-empty document.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut flush = |doc: &mut String| -> Result<(), String> {
        if doc
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        {
            docs.push(parse_document(doc)?);
        }
        doc.clear();
        Ok(())
    };
    for line in text.lines() {
        if line.trim_end() == "---" {
            flush(&mut current)?;
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    flush(&mut current)?;
    Ok(docs)
}

/// One YAML document with a mapping at the top (as every Kubernetes object and compose
/// file has).
pub fn parse_document(text: &str) -> Result<Value, String> {
    let options = LoaderOptions::default()
        .error_on_duplicate_keys(true)
        .prevent_coercion(true);
    marked_yaml::parse_yaml_with_options(0, text, options)
        .map(|node| to_json(&node))
        .map_err(|e| format!("{e}\n--- in this document:\n{text}"))
}

fn to_json(node: &Node) -> Value {
    match node {
        Node::Mapping(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.as_str().to_string(), to_json(v)))
                .collect::<Map<_, _>>(),
        ),
        Node::Sequence(seq) => Value::Array(seq.iter().map(to_json).collect()),
        Node::Scalar(s) => {
            if !s.may_coerce() {
                Value::String(s.as_str().to_string())
            } else if let Some(b) = s.as_bool() {
                Value::Bool(b)
            } else if let Some(i) = s.as_i64() {
                Value::from(i)
            } else if matches!(s.as_str(), "null" | "Null" | "NULL" | "~" | "") {
                Value::Null
            } else if let Some(f) = s.as_f64().filter(|f| f.is_finite()) {
                Value::from(f)
            } else {
                Value::String(s.as_str().to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn documents_and_scalar_types() {
        let docs = parse_documents(
            "# c\n---\na: 1\nb: \"1\"\nc: true\nd: 'true'\ne: [x, ~]\n---\nf: 2.5\n---\n",
        )
        .unwrap();
        assert_eq!(
            docs,
            vec![
                json!({"a": 1, "b": "1", "c": true, "d": "true", "e": ["x", null]}),
                json!({"f": 2.5})
            ]
        );
    }

    #[test]
    fn duplicate_keys_are_an_error() {
        assert!(parse_document("a: 1\na: 2\n").is_err());
    }
}
