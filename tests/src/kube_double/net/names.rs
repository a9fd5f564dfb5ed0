//! Name and value formats the API server checks, with its messages
//! (k8s.io/apimachinery/pkg/util/validation: IsDNS1035Label, IsDNS1123Label,
//! IsValidPortName, IsValidPortNum, IsQualifiedName, IsValidLabelValue), as
//! `field: Invalid value: …: why` problems.

use std::collections::BTreeMap;

use crate::kube_double::validate::{is_dns_label, is_dns_subdomain};

const DNS1035: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_LABEL: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_VALUE: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const QUALIFIED: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

pub fn is_dns1035_label(s: &str) -> bool {
    is_dns_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

/// `metadata.name` (or `generateName`) of a new object: `dns1035` for Services,
/// a DNS-1123 subdomain otherwise.
pub fn object_name(
    name: Option<&str>,
    generate: Option<&str>,
    dns1035: bool,
    out: &mut Vec<String>,
) {
    match name.filter(|n| !n.is_empty()) {
        Some(n) if dns1035 && !is_dns1035_label(n) => {
            out.push(format!("metadata.name: Invalid value: {n:?}: {DNS1035}"))
        }
        Some(n) if !dns1035 && !is_dns_subdomain(n) => out.push(format!(
            "metadata.name: Invalid value: {n:?}: {DNS1123_SUBDOMAIN}"
        )),
        Some(_) => {}
        None if generate.is_some_and(|g| !g.is_empty()) => {}
        None => out.push("metadata.name: Required value: name or generateName is required".into()),
    }
}

pub fn dns1035_label(field: &str, s: &str, out: &mut Vec<String>) {
    if !is_dns1035_label(s) {
        out.push(format!("{field}: Invalid value: {s:?}: {DNS1035}"));
    }
}

pub fn dns1123_label(field: &str, s: &str, out: &mut Vec<String>) {
    if !is_dns_label(s) {
        out.push(format!("{field}: Invalid value: {s:?}: {DNS1123_LABEL}"));
    }
}

pub fn dns1123_subdomain(field: &str, s: &str, out: &mut Vec<String>) {
    if !is_dns_subdomain(s) {
        out.push(format!(
            "{field}: Invalid value: {s:?}: {DNS1123_SUBDOMAIN}"
        ));
    }
}

/// IANA_SVC_NAME: what a named (target) port must be.
pub fn port_name(field: &str, s: &str, out: &mut Vec<String>) {
    let mut why = Vec::new();
    if s.len() > 15 {
        why.push("must be no more than 15 characters");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        why.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
    }
    if s.contains("--") {
        why.push("must not contain consecutive hyphens");
    }
    if !s.bytes().any(|b| b.is_ascii_lowercase()) {
        why.push("must contain at least one letter (a-z)");
    }
    if s.starts_with('-') || s.ends_with('-') {
        why.push("must not begin or end with a hyphen");
    }
    for w in why {
        out.push(format!("{field}: Invalid value: {s:?}: {w}"));
    }
}

pub fn port_number(field: &str, n: i32, out: &mut Vec<String>) {
    if !(1..=65535).contains(&n) {
        out.push(format!(
            "{field}: Invalid value: {n}: must be between 1 and 65535, inclusive"
        ));
    }
}

fn is_label_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Label keys and values (ValidateLabels): `field` is the map's path.
pub fn labels(field: &str, map: &BTreeMap<String, String>, out: &mut Vec<String>) {
    for (k, v) in map {
        let (prefix, name) = match k.split_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, k.as_str()),
        };
        if let Some(p) = prefix
            && !is_dns_subdomain(p)
        {
            out.push(format!(
                "{field}: Invalid value: {k:?}: prefix part {DNS1123_SUBDOMAIN}"
            ));
        }
        if !is_label_name_part(name) {
            out.push(format!("{field}: Invalid value: {k:?}: {QUALIFIED}"));
        }
        if !(v.is_empty() || is_label_name_part(v)) {
            out.push(format!("{field}: Invalid value: {v:?}: {LABEL_VALUE}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert!(is_dns1035_label("web-1"));
        assert!(!is_dns1035_label("1web"));
        let mut out = Vec::new();
        port_name("p", "http", &mut out);
        assert!(out.is_empty());
        port_name("p", "8080", &mut out);
        port_name("p", "a--b", &mut out);
        port_name("p", "very-long-port-name", &mut out);
        assert_eq!(out.len(), 3, "{out:?}");
        out.clear();
        let m = [
            ("app".to_owned(), "web".to_owned()),
            ("x/y".into(), "".into()),
        ];
        labels("spec.selector", &m.into_iter().collect(), &mut out);
        assert!(out.is_empty(), "{out:?}");
        let m = [("app".to_owned(), "bad value".to_owned())];
        labels("spec.selector", &m.into_iter().collect(), &mut out);
        assert_eq!(out.len(), 1);
        assert!(out[0].starts_with("spec.selector: Invalid value: \"bad value\""));
    }
}
