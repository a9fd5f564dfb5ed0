//! Pod Security admission, `enforce: restricted` (`latest`), for the namespaces in
//! [`KubeDoubleOptions::restricted_namespaces`](crate::kube_double::KubeDoubleOptions::restricted_namespaces)
//! — what a namespace labelled `pod-security.kubernetes.io/enforce: restricted` gets.
//! The rules are the project's checker ([`crate::pod_security`]); the refusal is the
//! admission plugin's (`k8s.io/pod-security-admission/admission/admission.go`,
//! `EvaluatePod`, and `response.go`, `forbiddenResponse`): 403 Forbidden,
//! `pods "<name>" is forbidden: violates PodSecurity "restricted:latest": <what>`.
//! The `<what>` lists the checker's findings, which name the field
//! (`spec.containers[0] (step): securityContext.allowPrivilegeEscalation must be
//! false`), not upstream's `allowPrivilegeEscalation != false (container "step" must
//! set …)` wording.

use k8s_openapi::api::core::v1::Pod;

/// The policy as the admission names it in its message.
pub const POLICY: &str = "restricted:latest";

/// Why `restricted` refuses `pod` (the text after "is forbidden: "), if it does.
pub fn refusal(pod: &Pod) -> Option<String> {
    let json = serde_json::to_value(pod).expect("pods serialize");
    let violations = crate::pod_security::restricted_violations(&json);
    (!violations.is_empty()).then(|| {
        format!(
            "violates PodSecurity \"{POLICY}\": {}",
            violations.join(", ")
        )
    })
}
