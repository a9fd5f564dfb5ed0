//! The three steps of the authorization-code flow that talk to a forge: the authorize
//! URL the browser is sent to, the code swapped for an access token (a form POST,
//! client authenticated as the forge documents), and the user read with that token.
//! The token lives only for these calls and is never stored or logged; neither is the
//! code or the client secret. Endpoints and parameters: see `provider`.

use serde_json::Value;
use zeroize::Zeroizing;

use super::clients::Client;
use super::provider::{ClientAuth, ForgeUser};

/// Why a step failed, in words safe to show (never a code, token or secret).
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The forge answered and said no (a bad or used code, a wrong verifier …).
    #[error("{0}")]
    Refused(String),
    /// The forge could not be reached or answered nonsense.
    #[error("{0}")]
    Unavailable(String),
}

/// Where the browser goes to sign in at the forge.
pub fn authorize_url(
    client: &Client,
    redirect_uri: &str,
    state: &str,
    code_challenge: &str,
) -> Result<String, ExchangeError> {
    let p = &client.provider;
    let mut url = reqwest::Url::parse(&format!("{}{}", p.url, p.kind.authorize_path()))
        .map_err(|e| ExchangeError::Unavailable(format!("the authorize URL: {e}")))?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", &p.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("state", state);
        if let Some(scope) = p.kind.scope() {
            q.append_pair("scope", scope);
        }
        if p.kind.supports_pkce() {
            q.append_pair("code_challenge", code_challenge)
                .append_pair("code_challenge_method", "S256");
        }
    }
    Ok(url.into())
}

/// Swaps `code` for an access token at the forge's token endpoint.
pub async fn exchange_code(
    http: &reqwest::Client,
    client: &Client,
    redirect_uri: &str,
    code: &str,
    code_verifier: &str,
) -> Result<Zeroizing<String>, ExchangeError> {
    let p = &client.provider;
    let name = &p.display_name;
    let mut form: Vec<(&str, &str)> = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri),
    ];
    if p.kind.supports_pkce() {
        form.push(("code_verifier", code_verifier));
    }
    let mut req = http
        .post(format!("{}{}", p.url, p.kind.token_path()))
        .header("accept", "application/json");
    match p.kind.client_auth() {
        ClientAuth::Form => {
            form.push(("client_id", &p.client_id));
            form.push(("client_secret", &client.secret));
        }
        ClientAuth::Basic => req = req.basic_auth(&p.client_id, Some(client.secret.as_str())),
    }
    let answer = req.form(&form).send().await.map_err(|e| {
        ExchangeError::Unavailable(format!("{name} could not be reached: {}", without_url(e)))
    })?;
    let status = answer.status();
    let body: Value = answer.json().await.map_err(|_| {
        ExchangeError::Unavailable(format!(
            "{name}'s token endpoint answered {status} without JSON"
        ))
    })?;
    // GitHub answers 200 with an `error` field; the others a 4xx with one (RFC 6749 §5.2).
    if let Some(error) = body["error"].as_str() {
        return Err(ExchangeError::Refused(format!(
            "{name} refused the sign-in: {}",
            short(error)
        )));
    }
    if !status.is_success() {
        return Err(ExchangeError::Refused(format!(
            "{name}'s token endpoint answered {status}"
        )));
    }
    match body["access_token"].as_str() {
        Some(t) if !t.is_empty() => Ok(Zeroizing::new(t.to_string())),
        _ => Err(ExchangeError::Unavailable(format!(
            "{name}'s token endpoint answered without an access token"
        ))),
    }
}

/// Who the token belongs to, from the forge's user endpoint.
pub async fn fetch_user(
    http: &reqwest::Client,
    client: &Client,
    token: &str,
) -> Result<ForgeUser, ExchangeError> {
    let p = &client.provider;
    let name = &p.display_name;
    let answer = http
        .get(format!("{}{}", p.api_url, p.kind.user_path()))
        .bearer_auth(token)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| {
            ExchangeError::Unavailable(format!("{name} could not be reached: {}", without_url(e)))
        })?;
    let status = answer.status();
    if !status.is_success() {
        return Err(ExchangeError::Refused(format!(
            "{name} did not say who signed in: its user endpoint answered {status}"
        )));
    }
    let body: Value = answer.json().await.map_err(|_| {
        ExchangeError::Unavailable(format!("{name}'s user endpoint answered without JSON"))
    })?;
    p.kind
        .parse_user(&body)
        .map_err(|why| ExchangeError::Unavailable(format!("{name}'s user endpoint: {why}")))
}

/// A transport error's text without its URL (which holds nothing secret here, but
/// the message is shown on a page and short is better).
fn without_url(e: reqwest::Error) -> String {
    e.without_url().to_string()
}

/// A forge's error code as shown: short, printable.
fn short(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(100).collect()
}
