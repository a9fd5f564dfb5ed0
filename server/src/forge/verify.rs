//! Webhook authentication and request metadata.
//!
//! Every check runs on the bytes the forge signed before the JSON parser sees any of
//! them — the raw body, except for Gitea/Forgejo form deliveries ([`open`]) — and every
//! comparison is constant-time: HMAC tags through `hmac`'s `verify_slice`, GitLab's and
//! Gitee's shared tokens through `subtle` on fixed-length SHA-256 digests (so neither
//! the token's content nor its length leaks through timing).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ForgeKind;
use super::form::{self, FormError};

type HmacSha256 = Hmac<Sha256>;

const GITHUB_SIGNATURE: &str = "x-hub-signature-256";
const GITEA_SIGNATURE: &str = "x-gitea-signature";
const FORGEJO_SIGNATURE: &str = "x-forgejo-signature";
const GITLAB_TOKEN: &str = "x-gitlab-token";
/// Bitbucket Cloud and Data Center both sign as `X-Hub-Signature: sha256=<hex>`.
const BITBUCKET_SIGNATURE: &str = "x-hub-signature";
const GITEE_TOKEN: &str = "x-gitee-token";
const GITEE_TIMESTAMP: &str = "x-gitee-timestamp";

/// How far a signed Gitee delivery's `X-Gitee-Timestamp` may be from our clock, either
/// way. Gitee's signature covers only `timestamp + "\n" + secret`, not the body, so a
/// captured signature stays valid with *any* body for as long as its timestamp is
/// accepted: the window is what bounds a replay. Gitee itself allows an hour; ten
/// minutes still absorbs clock skew and delivery queueing while cutting that exposure
/// sixfold.
pub const GITEE_MAX_SKEW: Duration = Duration::from_secs(10 * 60);

/// Why a webhook request was not authenticated. Every variant maps to 401 in the
/// handler; they are distinct so logs and tests can tell a misconfigured sender (no
/// header) from a forged or corrupted one. No variant carries a secret or signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing `{header}` header")]
    MissingHeader { header: &'static str },
    #[error("malformed `{header}` header: {reason}")]
    MalformedHeader {
        header: &'static str,
        reason: &'static str,
    },
    #[error("signature or token does not match")]
    Mismatch,
    /// An empty secret would let anyone compute a valid HMAC; treat it as a
    /// configuration error rather than "verified".
    #[error("no webhook secret is configured for this repository")]
    EmptySecret,
    /// A Gitee signature whose timestamp is outside [`GITEE_MAX_SKEW`]: possibly a
    /// replay of a captured delivery.
    #[error("`X-Gitee-Timestamp` is more than {} minutes from the server's clock", GITEE_MAX_SKEW.as_secs() / 60)]
    Stale,
    /// Plain git post-receive hooks authenticate with an API token, checked by the API
    /// layer; reaching this function with `Git` is a routing bug.
    #[error("`{0}` deliveries are not signed webhooks; they are authenticated by API token")]
    Unsupported(ForgeKind),
    /// A Gitea/Forgejo form delivery without its one `payload` field: that field is
    /// what they sign, so there is nothing to check the signature against.
    #[error("{0}; Gitea and Forgejo sign that field, so there is nothing to verify")]
    UnsignedForm(FormError),
}

/// Why a delivery was refused before its payload reached the parser.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Not authenticated: 401.
    #[error(transparent)]
    Unverified(#[from] VerifyError),
    /// Authenticated (GitHub signs the form body itself), but the form carries no
    /// usable payload: 400.
    #[error(transparent)]
    Form(FormError),
}

/// Authenticate a delivery and return its JSON payload, the bytes to hand to
/// [`super::parse`].
///
/// * JSON bodies: [`verify`] on the body, which is the payload.
/// * Form bodies (`application/x-www-form-urlencoded`, the JSON in the `payload` field,
///   see [`form`]):
///   - GitHub signs the request body as sent ("Validating webhook deliveries": the
///     HMAC of the payload body), which here is the form: verified on the raw bytes
///     first, then the field is decoded (none → 400).
///   - Gitea and Forgejo sign the JSON *before* form-encoding it: their
///     `services/webhook/deliver.go` (`newDefaultRequest`) sends
///     `url.Values{"payload": {t.PayloadContent}}.Encode()` as the body but passes
///     `[]byte(t.PayloadContent)` to `addDefaultHeaders`, which computes the HMAC. So
///     the field is decoded first — a byte split and percent-decoding, not the JSON
///     parser — and the signature checked on the decoded bytes; no field → 401
///     ([`VerifyError::UnsignedForm`]).
/// * GitLab sends only JSON and signs nothing (its token is a header), so its body is
///   the payload whatever its `Content-Type`.
pub fn open(
    kind: ForgeKind,
    headers: &HeaderMap,
    body: &Bytes,
    secret: &[u8],
) -> Result<Bytes, DeliveryError> {
    let signs_decoded_form = matches!(kind, ForgeKind::Gitea | ForgeKind::Forgejo);
    if !form::is_form(headers) || kind == ForgeKind::Gitlab {
        verify(kind, headers, body, secret)?;
        return Ok(body.clone());
    }
    if signs_decoded_form {
        let payload = form::payload(body).map_err(VerifyError::UnsignedForm)?;
        verify(kind, headers, &payload, secret)?;
        Ok(Bytes::from(payload))
    } else {
        verify(kind, headers, body, secret)?;
        form::payload(body)
            .map(Bytes::from)
            .map_err(DeliveryError::Form)
    }
}

/// Authenticate a webhook delivery on its raw body.
///
/// * GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`.
/// * Gitea: `X-Gitea-Signature: <hex HMAC-SHA256(secret, body)>`.
/// * Forgejo: `X-Forgejo-Signature` (same scheme); Forgejo also sends the Gitea header,
///   which is accepted only when the Forgejo one is absent — a present-but-bad Forgejo
///   signature is not rescued by a Gitea one.
/// * GitLab: `X-Gitlab-Token: <secret>` (GitLab does not sign bodies).
/// * Bitbucket Cloud and Data Center: `X-Hub-Signature: sha256=<hex HMAC-SHA256(secret,
///   body)>` (Atlassian's "Manage webhooks" / "Webhook secrets" pages).
/// * Gitee: `X-Gitee-Token` is either the webhook password itself, or — with
///   `X-Gitee-Timestamp` (milliseconds) present — `base64(HMAC-SHA256(secret,
///   timestamp + "\n" + secret))` (Gitee help "WebHook 密钥验证和验证算法"; the doc's
///   extra URL-encoding step applies to URLs, a header carries plain base64, but a
///   percent-encoded value is accepted too). A signed delivery whose timestamp is
///   more than [`GITEE_MAX_SKEW`] away from now is refused as [`VerifyError::Stale`].
pub fn verify(
    kind: ForgeKind,
    headers: &HeaderMap,
    body: &[u8],
    secret: &[u8],
) -> Result<(), VerifyError> {
    verify_at(kind, headers, body, secret, SystemTime::now())
}

/// [`verify`] with the clock given, for Gitee's timestamp window.
pub fn verify_at(
    kind: ForgeKind,
    headers: &HeaderMap,
    body: &[u8],
    secret: &[u8],
    now: SystemTime,
) -> Result<(), VerifyError> {
    if kind == ForgeKind::Git {
        return Err(VerifyError::Unsupported(kind));
    }
    if secret.is_empty() {
        return Err(VerifyError::EmptySecret);
    }
    match kind {
        ForgeKind::Github => {
            let value = header_str(headers, GITHUB_SIGNATURE)?;
            let hex_tag = value
                .strip_prefix("sha256=")
                .ok_or(VerifyError::MalformedHeader {
                    header: GITHUB_SIGNATURE,
                    reason: "expected `sha256=<hex>`",
                })?;
            verify_hmac_hex(GITHUB_SIGNATURE, hex_tag, body, secret)
        }
        ForgeKind::Gitea => {
            let value = header_str(headers, GITEA_SIGNATURE)?;
            verify_hmac_hex(GITEA_SIGNATURE, value, body, secret)
        }
        ForgeKind::Forgejo => {
            let (name, value) = if headers.contains_key(FORGEJO_SIGNATURE) {
                (FORGEJO_SIGNATURE, header_str(headers, FORGEJO_SIGNATURE)?)
            } else if headers.contains_key(GITEA_SIGNATURE) {
                (GITEA_SIGNATURE, header_str(headers, GITEA_SIGNATURE)?)
            } else {
                return Err(VerifyError::MissingHeader {
                    header: FORGEJO_SIGNATURE,
                });
            };
            verify_hmac_hex(name, value, body, secret)
        }
        ForgeKind::Gitlab => {
            let value = headers
                .get(GITLAB_TOKEN)
                .ok_or(VerifyError::MissingHeader {
                    header: GITLAB_TOKEN,
                })?;
            shared_token_eq(value.as_bytes(), secret)
        }
        ForgeKind::Bitbucket | ForgeKind::BitbucketDc => {
            let value = header_str(headers, BITBUCKET_SIGNATURE)?;
            let hex_tag = value
                .strip_prefix("sha256=")
                .ok_or(VerifyError::MalformedHeader {
                    header: BITBUCKET_SIGNATURE,
                    reason: "expected `sha256=<hex>`",
                })?;
            verify_hmac_hex(BITBUCKET_SIGNATURE, hex_tag, body, secret)
        }
        ForgeKind::Gitee => verify_gitee(headers, secret, now),
        ForgeKind::Git => Err(VerifyError::Unsupported(kind)),
    }
}

/// Compare a shared token with the secret on SHA-256 digests, not the strings: `ct_eq`
/// on slices returns early on a length mismatch, which would leak the secret's length.
fn shared_token_eq(given: &[u8], secret: &[u8]) -> Result<(), VerifyError> {
    let given = Sha256::digest(given);
    let expected = Sha256::digest(secret);
    if bool::from(given.as_slice().ct_eq(expected.as_slice())) {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

fn verify_gitee(headers: &HeaderMap, secret: &[u8], now: SystemTime) -> Result<(), VerifyError> {
    let token = headers.get(GITEE_TOKEN).ok_or(VerifyError::MissingHeader {
        header: GITEE_TOKEN,
    })?;
    let Some(timestamp) = headers.get(GITEE_TIMESTAMP) else {
        // Password mode: Gitee sends the configured password as is.
        return shared_token_eq(token.as_bytes(), secret);
    };
    let timestamp = timestamp
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 16 && t.bytes().all(|b| b.is_ascii_digit()))
        .ok_or(VerifyError::MalformedHeader {
            header: GITEE_TIMESTAMP,
            reason: "expected milliseconds since the Unix epoch",
        })?;
    let sent_ms: u64 = timestamp
        .parse()
        .map_err(|_| VerifyError::MalformedHeader {
            header: GITEE_TIMESTAMP,
            reason: "expected milliseconds since the Unix epoch",
        })?;
    let now_ms = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let max_skew_ms = u64::try_from(GITEE_MAX_SKEW.as_millis()).unwrap_or(u64::MAX);
    if now_ms.abs_diff(sent_ms) > max_skew_ms {
        return Err(VerifyError::Stale);
    }
    let token = token.to_str().map_err(|_| VerifyError::MalformedHeader {
        header: GITEE_TOKEN,
        reason: "not visible ASCII",
    })?;
    let token = percent_decode(token.trim()).ok_or(VerifyError::MalformedHeader {
        header: GITEE_TOKEN,
        reason: "bad percent-encoding",
    })?;
    let tag = base64::engine::general_purpose::STANDARD
        .decode(token.as_bytes())
        .map_err(|_| VerifyError::MalformedHeader {
            header: GITEE_TOKEN,
            reason: "a signed delivery's token must be base64",
        })?;
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| VerifyError::EmptySecret)?;
    mac.update(timestamp.as_bytes());
    mac.update(b"\n");
    mac.update(secret);
    mac.verify_slice(&tag).map_err(|_| VerifyError::Mismatch)
}

/// `%2B` → `+` etc.; `None` for a broken escape. Base64 only needs `+`, `/` and `=`
/// decoded, but decoding every escape is simpler than listing them.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn header_str<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<&'h str, VerifyError> {
    let value = headers
        .get(name)
        .ok_or(VerifyError::MissingHeader { header: name })?;
    let value = value.to_str().map_err(|_| VerifyError::MalformedHeader {
        header: name,
        reason: "not visible ASCII",
    })?;
    Ok(value.trim())
}

fn verify_hmac_hex(
    header: &'static str,
    hex_tag: &str,
    body: &[u8],
    secret: &[u8],
) -> Result<(), VerifyError> {
    // The tag's length is public (always 32 bytes), so rejecting a wrong length early
    // leaks nothing and gives the sender a clearer error than "mismatch".
    if hex_tag.len() != 64 {
        return Err(VerifyError::MalformedHeader {
            header,
            reason: "expected 64 hex digits (HMAC-SHA256)",
        });
    }
    let tag = hex::decode(hex_tag).map_err(|_| VerifyError::MalformedHeader {
        header,
        reason: "not hexadecimal",
    })?;
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| VerifyError::EmptySecret)?;
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&tag).map_err(|_| VerifyError::Mismatch)
}

/// Longest delivery id accepted. Ids are stored under a unique index; every forge uses
/// a UUID (36 chars), so anything much longer is not a real delivery id.
const MAX_DELIVERY_ID: usize = 128;

/// The delivery's unique id, for de-duplicating retried or replayed deliveries.
///
/// * GitHub `X-GitHub-Delivery`, Gitea `X-Gitea-Delivery`, Forgejo `X-Forgejo-Delivery`
///   (falling back to `X-Gitea-Delivery`, which Forgejo also sends).
/// * GitLab: `Idempotency-Key` first, then `X-Gitlab-Event-UUID`. GitLab documents
///   `Idempotency-Key` (GitLab ≥ 17.4) as "unique ID consistent across webhook
///   retries", whereas `X-Gitlab-Event-UUID` is shared by *recursive* webhooks
///   triggered by an earlier one — keying on it first could drop a distinct event as a
///   duplicate. Older GitLab only sends the UUID, hence the fallback.
///
/// * Bitbucket Cloud `X-Request-UUID` (Atlassian: "UUID for the request"; a retry is
///   counted in `X-Attempt-Number`, so the UUID stays), Bitbucket Data Center
///   `X-Request-Id` ("A unique UUID for each webhook request").
/// * Gitee sends no delivery id header at all; see [`delivery_id_with_body`].
///
/// `None` when absent, empty, not visible ASCII, or longer than 128 bytes.
pub fn delivery_id(kind: ForgeKind, headers: &HeaderMap) -> Option<String> {
    let candidates: &[&str] = match kind {
        ForgeKind::Github => &["x-github-delivery"],
        ForgeKind::Gitlab => &["idempotency-key", "x-gitlab-event-uuid"],
        ForgeKind::Gitea => &["x-gitea-delivery"],
        ForgeKind::Forgejo => &["x-forgejo-delivery", "x-gitea-delivery"],
        ForgeKind::Bitbucket => &["x-request-uuid"],
        ForgeKind::BitbucketDc => &["x-request-id"],
        ForgeKind::Gitee | ForgeKind::Git => &[],
    };
    candidates.iter().find_map(|name| {
        let value = headers.get(*name)?.to_str().ok()?.trim();
        (!value.is_empty() && value.len() <= MAX_DELIVERY_ID).then(|| value.to_owned())
    })
}

/// [`delivery_id`], or for a forge that sends none (Gitee) one derived from the
/// delivery itself: `gitee:` and the SHA-256 of the event name, `X-Gitee-Timestamp` and
/// the raw body. A re-sent copy of the same delivery (same body, same trigger time)
/// gets the same id and is de-duplicated like any other forge's; two different events
/// never share one, even in the same millisecond, because their bodies differ. The
/// plain-git hook derives its ids the same way, from what identifies the update.
pub fn delivery_id_with_body(kind: ForgeKind, headers: &HeaderMap, body: &[u8]) -> Option<String> {
    if kind != ForgeKind::Gitee {
        return delivery_id(kind, headers);
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .trim()
            .to_owned()
    };
    let mut h = Sha256::new();
    h.update(header("x-gitee-event").as_bytes());
    h.update(b"\n");
    h.update(header(GITEE_TIMESTAMP).as_bytes());
    h.update(b"\n");
    h.update(body);
    Some(format!("gitee:{}", hex::encode(h.finalize())))
}

/// The event name [`event_name`] gives a Gitee delivery marked `X-Gitee-Ping: true`.
pub const GITEE_PING_EVENT: &str = "X-Gitee-Ping";

/// The event name header: `X-GitHub-Event`, `X-Gitlab-Event`, `X-Gitea-Event`, for
/// Forgejo `X-Forgejo-Event` falling back to `X-Gitea-Event`, `X-Event-Key` for both
/// Bitbucket editions and `X-Gitee-Event` (or [`GITEE_PING_EVENT`]). `None` when absent.
pub fn event_name(kind: ForgeKind, headers: &HeaderMap) -> Option<String> {
    // Gitee's "test" button sends a normal event header with `X-Gitee-Ping: true` and
    // sample data; it is answered as the ping it is, not built.
    let gitee_ping = headers
        .get("x-gitee-ping")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    if kind == ForgeKind::Gitee && gitee_ping {
        return Some(GITEE_PING_EVENT.to_owned());
    }
    let candidates: &[&str] = match kind {
        ForgeKind::Github => &["x-github-event"],
        ForgeKind::Gitlab => &["x-gitlab-event"],
        ForgeKind::Gitea => &["x-gitea-event"],
        ForgeKind::Forgejo => &["x-forgejo-event", "x-gitea-event"],
        ForgeKind::Bitbucket | ForgeKind::BitbucketDc => &["x-event-key"],
        ForgeKind::Gitee => &["x-gitee-event"],
        ForgeKind::Git => &[],
    };
    candidates.iter().find_map(|name| {
        let value = headers.get(*name)?.to_str().ok()?.trim();
        (!value.is_empty()).then(|| value.to_owned())
    })
}
