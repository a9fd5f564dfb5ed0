//! `kubernetes:` — the pod settings a pipeline may choose, and a clear refusal of the
//! ones it may not.
//!
//! Slipway's pods run under the `restricted` Pod Security Standard: the backend sets the
//! security context itself (non-root, no privilege escalation, every capability
//! dropped, no host namespaces, paths or extra volumes). A pipeline chooses only where
//! its pods run (`node_selector`, `tolerations`), as whom (`service_account`, trusted
//! repositories only: checked by the server when it plans a run) and their `resources`
//! (a stage key). Keys that would weaken the pod are refused with a message that says
//! why wherever they are written — under `kubernetes:`, on a stage or on a service —
//! rather than as a mere unknown key, so nobody goes looking for the right spelling.

use marked_yaml::Node;

use super::{Ctx, Field, is_null, keys};
use crate::diagnostic::{Pos, codes, did_you_mean};
use crate::model::{
    KubernetesSettings, ServiceAccount, TaintEffect, Toleration, TolerationOperator,
};
use crate::yaml::node_pos;

/// What a pipeline may set, as the refusal lists it.
const ALLOWED: &str = "`kubernetes.node_selector`, `kubernetes.tolerations`, \
     `kubernetes.service_account` (trusted repositories only) and the stage's `resources`";

const SECURITY_HINT: &str = "Slipway sets every pod's security context itself (non-root, no \
     privilege escalation, all capabilities dropped); to build a container image use a \
     `kind: image` stage, which needs no privileges in your steps";
const VOLUME_HINT: &str = "steps share files through the workspace; use `artifacts` to pass \
     files to later stages and `cache` to keep them between runs";
const HOST_HINT: &str = "each stage's pod has its own network, process and IPC namespaces; \
     reach side containers through `services`";

/// Keys that would take a pod out of the `restricted` profile, in the spellings people
/// write them (Kubernetes' camelCase and Slipway's snake_case), with what to do instead.
const RESTRICTED: &[(&str, &str)] = &[
    ("privileged", SECURITY_HINT),
    ("securityContext", SECURITY_HINT),
    ("security_context", SECURITY_HINT),
    ("capabilities", SECURITY_HINT),
    ("allowPrivilegeEscalation", SECURITY_HINT),
    ("allow_privilege_escalation", SECURITY_HINT),
    ("hostPath", VOLUME_HINT),
    ("host_path", VOLUME_HINT),
    ("volumes", VOLUME_HINT),
    ("volumeMounts", VOLUME_HINT),
    ("volume_mounts", VOLUME_HINT),
    ("hostNetwork", HOST_HINT),
    ("host_network", HOST_HINT),
    ("hostPID", HOST_HINT),
    ("host_pid", HOST_HINT),
    ("hostIPC", HOST_HINT),
    ("host_ipc", HOST_HINT),
    ("hostPort", HOST_HINT),
    ("host_port", HOST_HINT),
];

/// Kubernetes' spelling of an allowed key → Slipway's.
const CAMEL_CASE: &[(&str, &str)] = &[
    ("nodeSelector", "node_selector"),
    ("serviceAccountName", "service_account"),
    ("serviceAccount", "service_account"),
    ("tolerationSeconds", "toleration_seconds"),
];

/// Reports `f` if it is a restricted pod setting (`where_` says where it was written,
/// e.g. "stage `build`"); `true` if it was.
pub(crate) fn refuse_restricted(ctx: &mut Ctx<'_>, f: &Field<'_>, where_: &str) -> bool {
    let Some((_, hint)) = RESTRICTED.iter().find(|(k, _)| *k == f.key) else {
        return false;
    };
    ctx.error(
        codes::POD_SETTING_NOT_ALLOWED,
        f.pos,
        format!(
            "`{}` is not allowed in {where_}: Slipway pods run under the `restricted` Pod \
             Security Standard, and a pipeline may only set {ALLOWED}",
            f.key
        ),
        Some(format!("remove `{}`: {hint}", f.key)),
    );
    true
}

/// Keeps the entries of a mapping that are not restricted pod settings (reporting
/// those).
pub(crate) fn without_restricted<'n>(
    ctx: &mut Ctx<'_>,
    list: Vec<Field<'n>>,
    where_: &str,
) -> Vec<Field<'n>> {
    list.into_iter()
        .filter(|f| !refuse_restricted(ctx, f, where_))
        .collect()
}

/// Unknown keys under `kubernetes:` and in a toleration: restricted ones and
/// `resources` get their own message, camelCase spellings a pointer to snake_case.
fn known_keys<'n>(
    ctx: &mut Ctx<'_>,
    list: Vec<Field<'n>>,
    owner: Pos,
    what: &str,
    allowed: &[&str],
) -> super::Fields<'n> {
    let mut kept = Vec::new();
    for f in without_restricted(ctx, list, what) {
        if let Some((_, snake)) = CAMEL_CASE
            .iter()
            .find(|(camel, snake)| *camel == f.key && allowed.contains(snake))
        {
            ctx.error(
                codes::UNKNOWN_KEY,
                f.pos,
                format!("unknown key `{}` in {what}", f.key),
                Some(format!(
                    "write `{snake}`: Slipway's keys are snake_case, also where Kubernetes says `{}`",
                    f.key
                )),
            );
        } else if f.key == "resources" && !allowed.contains(&"resources") {
            ctx.error(
                codes::UNKNOWN_KEY,
                f.pos,
                format!("`resources` is a stage key, not part of {what}"),
                Some(
                    "move `resources: { memory: …, cpu: … }` up to the stage; it applies to every backend"
                        .into(),
                ),
            );
        } else {
            kept.push(f);
        }
    }
    ctx.known(kept, owner, what, allowed)
}

/// `kubernetes:` of a stage.
pub(crate) fn read_kubernetes(ctx: &mut Ctx<'_>, f: Field<'_>, what: &str) -> KubernetesSettings {
    let mut out = KubernetesSettings::default();
    let kwhat = format!("`kubernetes` of {what}");
    let Some(list) = ctx.mapping(f.value, f.value_pos(), &format!("`kubernetes` in {what}")) else {
        return out;
    };
    let fields = known_keys(ctx, list, f.pos, &kwhat, keys::KUBERNETES);
    if let Some(nf) = fields.get("node_selector") {
        read_node_selector(ctx, nf, &kwhat, &mut out);
    }
    if let Some(tf) = fields.get("tolerations") {
        out.tolerations = read_tolerations(ctx, tf, &kwhat);
    }
    if let Some(sf) = fields.get("service_account")
        && let Some(name) = ctx.string(sf, &kwhat)
    {
        match check_dns_subdomain(&name) {
            Ok(()) => {
                out.service_account = Some(ServiceAccount {
                    name,
                    line: sf.pos.line,
                    column: sf.pos.column,
                })
            }
            Err(e) => ctx.error(
                codes::INVALID_POD_SETTING,
                sf.value_pos(),
                format!("invalid `service_account` `{name}` in {kwhat}: {e}"),
                Some(
                    "service account names are DNS-1123 subdomains: lowercase letters, digits, \
                     `-` and `.`, starting and ending with a letter or digit (e.g. `deployer`)"
                        .into(),
                ),
            ),
        }
    }
    out
}

const LABEL_KEY_HINT: &str = "label keys are `name` or `prefix/name`: the name has at most 63 \
     letters, digits, `-`, `_` or `.` and starts and ends with a letter or digit; the prefix \
     is a DNS subdomain (e.g. `kubernetes.io/arch`)";
const LABEL_VALUE_HINT: &str = "label values have at most 63 letters, digits, `-`, `_` or `.` \
     and start and end with a letter or digit (or are empty); expressions are not allowed";

fn read_node_selector(ctx: &mut Ctx<'_>, f: Field<'_>, what: &str, out: &mut KubernetesSettings) {
    let Some(list) = ctx.mapping(
        f.value,
        f.value_pos(),
        &format!("`node_selector` in {what}"),
    ) else {
        return;
    };
    for e in list {
        let key_ok = match check_label_key(e.key) {
            Ok(()) => true,
            Err(err) => {
                ctx.error(
                    codes::INVALID_POD_SETTING,
                    e.pos,
                    format!(
                        "invalid label key `{}` in `node_selector` of {what}: {err}",
                        e.key
                    ),
                    Some(LABEL_KEY_HINT.into()),
                );
                false
            }
        };
        let item = format!("`node_selector.{}` in {what}", e.key);
        let Some(value) = ctx.scalar_text(e.value, e.value_pos(), &item) else {
            continue;
        };
        if let Err(err) = check_label_value(&value) {
            ctx.error(
                codes::INVALID_POD_SETTING,
                e.value_pos(),
                format!(
                    "invalid label value `{value}` for `{}` in `node_selector` of {what}: {err}",
                    e.key
                ),
                Some(LABEL_VALUE_HINT.into()),
            );
            continue;
        }
        if key_ok {
            out.node_selector.insert(e.key.to_string(), value);
        }
    }
}

fn read_tolerations(ctx: &mut Ctx<'_>, f: Field<'_>, what: &str) -> Vec<Toleration> {
    let items = match f.value {
        Node::Sequence(items) => items,
        _ if is_null(f.value) => return Vec::new(),
        _ => {
            ctx.wrong_type(
                f.value_pos(),
                &format!("`tolerations` in {what}"),
                "a list of tolerations",
                f.value,
            );
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let twhat = format!("toleration {} in {what}", i + 1);
        let Node::Mapping(m) = item else {
            let pos = if is_null(item) { f.pos } else { node_pos(item) };
            ctx.wrong_type(
                pos,
                &twhat,
                "a mapping (`key`, `operator`, `value`, `effect`)",
                item,
            );
            continue;
        };
        let item_pos = node_pos(item);
        let list = ctx.entries(m);
        let fields = known_keys(ctx, list, item_pos, &twhat, keys::TOLERATION);
        if let Some(t) = read_toleration(ctx, &fields, item_pos, &twhat) {
            out.push(t);
        }
    }
    out
}

fn read_toleration(
    ctx: &mut Ctx<'_>,
    fields: &super::Fields<'_>,
    item_pos: Pos,
    what: &str,
) -> Option<Toleration> {
    let mut ok = true;
    let key = match fields.get("key") {
        None => None,
        Some(kf) => {
            let key = ctx.string(kf, what);
            match &key {
                Some(k) => {
                    if let Err(e) = check_label_key(k) {
                        ctx.error(
                            codes::INVALID_POD_SETTING,
                            kf.value_pos(),
                            format!("invalid `key` `{k}` in {what}: {e}"),
                            Some(LABEL_KEY_HINT.into()),
                        );
                        ok = false;
                    }
                }
                None => ok = false,
            }
            key
        }
    };
    let operator = match fields.get("operator") {
        None => Some(TolerationOperator::Equal),
        Some(of) => match ctx.string(of, what).as_deref() {
            Some("Exists") => Some(TolerationOperator::Exists),
            Some("Equal") => Some(TolerationOperator::Equal),
            Some(other) => {
                ctx.error(
                    codes::INVALID_POD_SETTING,
                    of.value_pos(),
                    format!("invalid `operator` `{other}` in {what}"),
                    did_you_mean(other, keys::TOLERATION_OPERATORS.iter().copied())
                        .or_else(|| Some("use `Exists` or `Equal`".into())),
                );
                None
            }
            None => None,
        },
    };
    let effect = match fields.get("effect") {
        None => None,
        Some(ef) => match ctx.string(ef, what).as_deref() {
            Some("NoSchedule") => Some(TaintEffect::NoSchedule),
            Some("PreferNoSchedule") => Some(TaintEffect::PreferNoSchedule),
            Some("NoExecute") => Some(TaintEffect::NoExecute),
            Some(other) => {
                ctx.error(
                    codes::INVALID_POD_SETTING,
                    ef.value_pos(),
                    format!("invalid `effect` `{other}` in {what}"),
                    did_you_mean(other, keys::TAINT_EFFECTS.iter().copied()).or_else(|| {
                        Some("use `NoSchedule`, `PreferNoSchedule` or `NoExecute`".into())
                    }),
                );
                ok = false;
                None
            }
            None => {
                ok = false;
                None
            }
        },
    };
    let value = match fields.get("value") {
        None => None,
        Some(vf) => {
            let value = ctx.scalar_text(vf.value, vf.value_pos(), &format!("`value` in {what}"));
            if operator == Some(TolerationOperator::Exists) {
                ctx.error(
                    codes::INVALID_POD_SETTING,
                    vf.pos,
                    format!("{what} has `operator: Exists` and a `value`"),
                    Some(
                        "`Exists` matches the taint whatever its value: remove `value`, or use \
                         `operator: Equal`"
                            .into(),
                    ),
                );
                ok = false;
            } else if let Some(v) = &value
                && let Err(e) = check_label_value(v)
            {
                ctx.error(
                    codes::INVALID_POD_SETTING,
                    vf.value_pos(),
                    format!("invalid `value` `{v}` in {what}: {e}"),
                    Some(LABEL_VALUE_HINT.into()),
                );
                ok = false;
            }
            value
        }
    };
    let toleration_seconds = match fields.get("toleration_seconds") {
        None => None,
        Some(sf) => {
            let secs = ctx.uint(sf, what);
            // A misspelt effect was reported already; do not pile on.
            let bad_effect = fields.get("effect").is_some() && effect.is_none();
            if secs.is_none() {
                ok = false;
            } else if secs.is_some_and(|s| i64::try_from(s).is_err()) {
                ctx.error(
                    codes::INVALID_POD_SETTING,
                    sf.value_pos(),
                    format!("`toleration_seconds` in {what} is too large"),
                    Some("leave `toleration_seconds` out to tolerate the taint forever".into()),
                );
                ok = false;
            } else if effect != Some(TaintEffect::NoExecute) && !bad_effect {
                ctx.error(
                    codes::INVALID_POD_SETTING,
                    sf.pos,
                    format!("`toleration_seconds` in {what} needs `effect: NoExecute`"),
                    Some(
                        "only a `NoExecute` taint evicts running pods, so only it has a grace \
                         period: set `effect: NoExecute`, or remove `toleration_seconds`"
                            .into(),
                    ),
                );
                ok = false;
            }
            secs
        }
    };
    let operator = operator?;
    if key.is_none() && fields.get("key").is_none() && operator == TolerationOperator::Equal {
        ctx.error(
            codes::INVALID_POD_SETTING,
            item_pos,
            format!("{what} has no `key`, so it needs `operator: Exists`"),
            Some(
                "name the taint with `key:`, or write `operator: Exists` to tolerate every taint"
                    .into(),
            ),
        );
        ok = false;
    }
    ok.then_some(Toleration {
        key,
        operator,
        value,
        effect,
        toleration_seconds,
    })
}

/// A Kubernetes label key (a qualified name): `name` or `prefix/name`.
pub(crate) fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            return Err("the prefix before `/` is empty".into());
        }
        check_dns_subdomain(p).map_err(|e| format!("prefix `{p}`: {e}"))?;
    }
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    check_label_name(name)
}

/// A Kubernetes label value: empty, or like a label key's name part.
pub(crate) fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    check_label_name(value)
}

/// At most 63 of `[A-Za-z0-9-_.]`, starting and ending alphanumeric.
fn check_label_name(s: &str) -> Result<(), String> {
    if s.len() > 63 {
        return Err(format!("`{}…` is longer than 63 characters", truncate(s)));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!("contains {c:?}"));
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge_ok(s.chars().next()) || !edge_ok(s.chars().last()) {
        return Err("must start and end with a letter or digit".into());
    }
    Ok(())
}

/// A DNS-1123 subdomain: at most 253 characters, dot-separated parts of lowercase
/// letters, digits and `-`, each starting and ending with a letter or digit.
pub(crate) fn check_dns_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("it is empty".into());
    }
    if s.len() > 253 {
        return Err(format!("`{}…` is longer than 253 characters", truncate(s)));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.')))
    {
        return Err(if c.is_ascii_uppercase() {
            "has an uppercase letter".into()
        } else {
            format!("contains {c:?}")
        });
    }
    for part in s.split('.') {
        let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
        if !edge_ok(part.chars().next()) || !edge_ok(part.chars().last()) {
            return Err("each dot-separated part must start and end with a letter or digit".into());
        }
    }
    Ok(())
}

fn truncate(s: &str) -> String {
    s.chars().take(20).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys() {
        for ok in [
            "disktype",
            "kubernetes.io/arch",
            "node-role.kubernetes.io/ci",
            "a",
            "A_b.c-9",
            &"x".repeat(63),
        ] {
            assert_eq!(check_label_key(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "/arch",
            "kubernetes.io/",
            "Kubernetes.io/arch",
            "a/b/c",
            "-a",
            "a-",
            "two words",
            "ünïcode",
            "${{ matrix.arch }}",
            &"x".repeat(64),
        ] {
            assert!(check_label_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn label_values() {
        for ok in ["", "arm64", "true", "1.2.3", "A_b"] {
            assert_eq!(check_label_value(ok), Ok(()), "{ok}");
        }
        for bad in ["-x", "x.", "a b", "a/b", &"v".repeat(64)] {
            assert!(check_label_value(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dns_subdomains() {
        for ok in ["deployer", "ci-bot", "a.b-c.d", "0", &"a".repeat(253)] {
            assert_eq!(check_dns_subdomain(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "Deployer",
            "ci_bot",
            "-a",
            "a-",
            "a..b",
            ".a",
            "a b",
            &"a".repeat(254),
        ] {
            assert!(check_dns_subdomain(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_restricted_key_is_refused_not_just_unknown() {
        for (key, _) in RESTRICTED {
            assert!(
                !keys::KUBERNETES.contains(key) && !keys::all_stage_keys().contains(key),
                "{key} is both allowed and restricted"
            );
        }
    }
}
