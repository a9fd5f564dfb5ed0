//! Values a rollout's settings are made of: plain strings (no `${{ }}`: the
//! controller reads them as written), Kubernetes object names, shares in percent,
//! pauses, and exactly-one-key mappings.

use marked_yaml::Node;

use super::super::{Ctx, Field, Fields, is_null, keys};
use crate::diagnostic::{Pos, codes};
use crate::model::Pause;
use crate::read::kubernetes::check_dns_subdomain;

/// What a Kubernetes object's name must be.
#[derive(Clone, Copy)]
pub(super) enum NameKind {
    /// Deployments, HTTPRoutes, Ingresses.
    Subdomain,
    /// Namespaces, containers.
    Label,
    /// Services.
    Service,
}

impl NameKind {
    fn rule(self) -> &'static str {
        match self {
            NameKind::Subdomain => {
                "names of Deployments, HTTPRoutes and Ingresses are DNS-1123 subdomains: \
                 lowercase letters, digits, `-` and `.`, at most 253 characters"
            }
            NameKind::Label => {
                "namespace and container names are DNS-1123 labels: lowercase letters, \
                 digits and `-`, starting and ending with a letter or digit, at most 63 \
                 characters"
            }
            NameKind::Service => {
                "Service names are DNS-1035 labels: lowercase letters, digits and `-`, \
                 starting with a letter and ending with a letter or digit, at most 63 \
                 characters"
            }
        }
    }
}

/// Why `s` is not a name of `kind`, or `Ok`.
pub(super) fn check_k8s_name(s: &str, kind: NameKind) -> Result<(), String> {
    match kind {
        NameKind::Subdomain => check_dns_subdomain(s),
        NameKind::Label | NameKind::Service => {
            if s.len() > 63 {
                return Err("it is longer than 63 characters".into());
            }
            check_dns_subdomain(s)?;
            if s.contains('.') {
                return Err("it contains `.`".into());
            }
            if matches!(kind, NameKind::Service) && !s.starts_with(|c: char| c.is_ascii_lowercase())
            {
                return Err("it does not start with a letter".into());
            }
            Ok(())
        }
    }
}

impl Ctx<'_> {
    /// A non-empty string that is used as written: `${{ }}` is refused, not left in.
    pub(super) fn plain(&mut self, f: Field<'_>, what: &str) -> Option<String> {
        let s = self.string(f, what)?;
        self.no_template(&s, f.value_pos(), &format!("`{}` in {what}", f.key))
            .then_some(s)
    }

    /// Reports `${{ }}` in a rollout setting; `true` if there is none.
    pub(super) fn no_template(&mut self, s: &str, pos: Pos, what: &str) -> bool {
        if !s.contains("${{") {
            return true;
        }
        self.error(
            codes::EXPRESSION_NOT_ALLOWED,
            pos,
            format!("{what} cannot use `${{{{ }}}}`: rollout settings are read as written"),
            Some("only the stage's `image` may use expressions; write the value itself".into()),
        );
        false
    }

    /// A Kubernetes object name.
    pub(super) fn k8s_name(&mut self, f: Field<'_>, what: &str, kind: NameKind) -> Option<String> {
        let name = self.plain(f, what)?;
        match check_k8s_name(&name, kind) {
            Ok(()) => Some(name),
            Err(e) => {
                self.error(
                    codes::INVALID_NAME,
                    f.value_pos(),
                    format!("invalid `{}` `{name}` in {what}: {e}", f.key),
                    Some(kind.rule().into()),
                );
                None
            }
        }
    }

    /// A share from `min` to 100, written `20` or `20%`. `subject`: what it is, for
    /// the message (``"`weight` in canary step 2 of …"``).
    pub(super) fn percent(
        &mut self,
        f: Field<'_>,
        subject: &str,
        min: u8,
        code: &'static str,
    ) -> Option<u8> {
        let n = match f.value {
            Node::Scalar(s) => {
                let t = s.as_str().trim();
                let digits = t.strip_suffix('%').unwrap_or(t).trim_end();
                digits
                    .parse::<u8>()
                    .ok()
                    .filter(|n| (min..=100).contains(n))
            }
            _ => None,
        };
        if n.is_none() {
            self.error(
                code,
                f.value_pos(),
                format!("{subject} must be a whole number from {min} to 100 (`%` optional)"),
                None,
            );
        }
        n
    }

    /// `pause: 2m`, `pause: {}` (until promoted), `pause: { duration: 2m }`.
    pub(super) fn pause(&mut self, f: Field<'_>, what: &str) -> Option<Pause> {
        match f.value {
            Node::Mapping(_) => {
                let fields = self.object(f, what, keys::PAUSE)?;
                match fields.get("duration") {
                    Some(d) => self
                        .duration(d, &format!("`pause` of {what}"))
                        .map(|secs| Pause::Elapsed { secs }),
                    None => Some(Pause::Promoted),
                }
            }
            Node::Scalar(_) if !is_null(f.value) => {
                self.duration(f, what).map(|secs| Pause::Elapsed { secs })
            }
            _ => {
                self.wrong_type(
                    f.value_pos(),
                    &format!("`pause` in {what}"),
                    "a duration or `{}`",
                    f.value,
                );
                None
            }
        }
    }

    /// A mapping that must have exactly one of `allowed` (unknown keys reported);
    /// reports one that has none or several.
    pub(super) fn one_of<'n>(
        &mut self,
        f: Field<'n>,
        what: &str,
        allowed: &[&str],
    ) -> Option<Field<'n>> {
        let written = matches!(f.value, Node::Mapping(m) if !m.is_empty());
        let fields: Fields<'n> = self.object(f, what, allowed)?;
        let names = allowed
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ");
        match fields.list.as_slice() {
            [one] => Some(*one),
            // Only unknown keys: reported as such.
            [] if written => None,
            [] => {
                self.error(
                    codes::MISSING_KEY,
                    f.value_pos(),
                    format!("`{}` in {what} needs one of {names}", f.key),
                    None,
                );
                None
            }
            [_, second, ..] => {
                self.error(
                    codes::INVALID_VALUE,
                    second.pos,
                    format!("`{}` in {what} must have exactly one of {names}", f.key),
                    Some("keep one".into()),
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_k8s_name("web.v2", NameKind::Subdomain).is_ok());
        assert!(check_k8s_name("web.v2", NameKind::Label).is_err());
        assert!(check_k8s_name("2web", NameKind::Label).is_ok());
        assert!(check_k8s_name("2web", NameKind::Service).is_err());
        assert!(check_k8s_name("web-preview", NameKind::Service).is_ok());
        assert!(check_k8s_name(&"a".repeat(64), NameKind::Service).is_err());
        assert!(check_k8s_name(&"a".repeat(64), NameKind::Subdomain).is_ok());
        assert!(check_k8s_name("Web", NameKind::Subdomain).is_err());
    }
}
