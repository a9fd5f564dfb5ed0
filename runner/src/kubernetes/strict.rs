//! Talking to the API server so that nothing is lost in silence. An API server drops
//! fields it does not know (with a warning at most): on a cluster older than
//! Slipway's minimum, the builder pod's `appArmorProfile` would vanish and rootless
//! buildah fail far from the cause. So the cluster's version is checked at connect,
//! and every object is created with `fieldValidation=Strict`, which turns an unknown
//! field into a 400 naming it.

use k8s_openapi::apimachinery::pkg::version::Info;
use kube::Api;
use kube::api::PostParams;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The oldest Kubernetes the backend supports: the builder pod's
/// `securityContext.appArmorProfile` field is from 1.30 (native sidecars, for
/// services, from 1.29).
pub const MIN_VERSION: (u32, u32) = (1, 30);

/// `(major, minor)` of a `/version` answer. Managed clusters say `"30+"` or
/// `"30-gke.1"`: the leading digits count.
pub fn parse_version(info: &Info) -> Option<(u32, u32)> {
    fn leading(s: &str) -> Option<u32> {
        let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }
    Some((leading(&info.major)?, leading(&info.minor)?))
}

/// Why a cluster of this version cannot be used, if it cannot.
pub fn refuse_version(info: &Info) -> Option<String> {
    let (major, minor) = MIN_VERSION;
    match parse_version(info) {
        None => Some(format!(
            "the cluster's /version ({:?}.{:?}, {}) cannot be read as a Kubernetes version",
            info.major, info.minor, info.git_version
        )),
        Some(v) if v < MIN_VERSION => Some(format!(
            "the cluster runs Kubernetes {} but Slipway needs {major}.{minor} or later: \
             older API servers drop fields the stage pods rely on (the builder pod's \
             securityContext.appArmorProfile is from {major}.{minor})",
            info.git_version
        )),
        Some(_) => None,
    }
}

/// `api.create(obj)` with `fieldValidation=Strict`: a field the API server does not
/// know is an error naming it, not a field silently dropped.
pub async fn create<K>(client: &kube::Client, api: &Api<K>, obj: &K) -> kube::Result<K>
where
    K: kube::Resource + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
{
    let body = serde_json::to_vec(obj).map_err(kube::Error::SerdeError)?;
    let mut req = kube::core::Request::new(api.resource_url())
        .create(&PostParams::default(), body)
        .map_err(kube::Error::BuildRequest)?;
    let uri = req.uri().to_string();
    let sep = if uri.contains('?') { '&' } else { '?' };
    *req.uri_mut() = format!("{uri}{sep}fieldValidation=Strict")
        .parse()
        .map_err(|e: http::uri::InvalidUri| kube::Error::HttpError(e.into()))?;
    req.extensions_mut().insert("create");
    client.request::<K>(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(major: &str, minor: &str) -> Info {
        Info {
            major: major.into(),
            minor: minor.into(),
            git_version: format!("v{major}.{minor}"),
            ..Default::default()
        }
    }

    #[test]
    fn versions_below_the_minimum_are_refused_with_the_reason() {
        assert_eq!(parse_version(&info("1", "30+")), Some((1, 30)));
        assert_eq!(parse_version(&info("1", "31-gke.1")), Some((1, 31)));
        assert!(refuse_version(&info("1", "30")).is_none());
        assert!(refuse_version(&info("1", "35")).is_none());
        let why = refuse_version(&info("1", "29")).unwrap();
        assert!(
            why.contains("v1.29") && why.contains("1.30 or later"),
            "{why}"
        );
        assert!(
            refuse_version(&info("", ""))
                .unwrap()
                .contains("cannot be read")
        );
    }
}
