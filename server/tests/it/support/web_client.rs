//! A browser without the browser: an HTTP client that follows redirects itself and
//! keeps the cookies each host sets (by name, honouring `Path` and `Max-Age=0`), so a
//! test can walk the sign-in with a forge hop by hop and look at every answer.

use std::collections::HashMap;

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};

/// One hop's answer.
#[derive(Debug, Clone)]
pub struct Hop {
    pub url: String,
    pub status: u16,
    pub location: Option<String>,
    pub set_cookies: Vec<String>,
    pub body: String,
}

#[derive(Debug, Clone)]
struct Cookie {
    value: String,
    path: String,
}

/// Cookies by host, then name.
#[derive(Default)]
pub struct WebClient {
    http: reqwest::Client,
    jar: HashMap<String, HashMap<String, Cookie>>,
}

impl WebClient {
    pub fn new() -> WebClient {
        WebClient {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            jar: HashMap::new(),
        }
    }

    /// Sets cookie `name` for `url`'s host (a test replaying an old one).
    pub fn set_cookie(&mut self, url: &str, name: &str, value: &str, path: &str) {
        self.jar.entry(host_of(url)).or_default().insert(
            name.to_string(),
            Cookie {
                value: value.to_string(),
                path: path.to_string(),
            },
        );
    }

    /// One GET, cookies sent and stored, no redirect followed.
    pub async fn get(&mut self, url: &str) -> Hop {
        self.send(self.http.get(url), url).await
    }

    /// One form POST, cookies sent and stored, no redirect followed.
    pub async fn post_form(&mut self, url: &str, form: &[(&str, &str)]) -> Hop {
        self.send(self.http.post(url).form(form), url).await
    }

    async fn send(&mut self, req: reqwest::RequestBuilder, url: &str) -> Hop {
        let parsed = reqwest::Url::parse(url).unwrap();
        let host = host_of(url);
        let path = parsed.path().to_string();
        let cookies: Vec<String> = self
            .jar
            .get(&host)
            .map(|c| {
                c.iter()
                    .filter(|(_, c)| path.starts_with(&c.path))
                    .map(|(k, c)| format!("{k}={}", c.value))
                    .collect()
            })
            .unwrap_or_default();
        let req = if cookies.is_empty() {
            req
        } else {
            req.header(COOKIE, cookies.join("; "))
        };
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let location = r
            .headers()
            .get(LOCATION)
            .map(|l| parsed.join(l.to_str().unwrap()).unwrap().to_string());
        let set_cookies: Vec<String> = r
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        for sc in &set_cookies {
            self.store(&host, sc);
        }
        let body = r.text().await.unwrap_or_default();
        Hop {
            url: url.to_string(),
            status,
            location,
            set_cookies,
            body,
        }
    }

    fn store(&mut self, host: &str, set_cookie: &str) {
        let mut parts = set_cookie.split(';').map(str::trim);
        let Some((name, value)) = parts.next().and_then(|kv| kv.split_once('=')) else {
            return;
        };
        let mut path = "/".to_string();
        let mut gone = value.is_empty();
        for attr in parts {
            if let Some(p) = attr.strip_prefix("Path=") {
                path = p.to_string();
            }
            if attr == "Max-Age=0" {
                gone = true;
            }
        }
        let cookies = self.jar.entry(host.to_string()).or_default();
        if gone {
            cookies.remove(name);
        } else {
            cookies.insert(
                name.to_string(),
                Cookie {
                    value: value.to_string(),
                    path,
                },
            );
        }
    }

    /// GETs `url` and follows redirects (at most 10) across hosts; every hop.
    pub async fn follow(&mut self, url: &str) -> Vec<Hop> {
        let mut hops = vec![self.get(url).await];
        while let Some(next) = hops.last().unwrap().location.clone() {
            assert!(hops.len() < 10, "a redirect loop: {hops:#?}");
            hops.push(self.get(&next).await);
        }
        hops
    }
}

fn host_of(url: &str) -> String {
    let u = reqwest::Url::parse(url).unwrap();
    format!(
        "{}:{}",
        u.host_str().unwrap(),
        u.port_or_known_default().unwrap()
    )
}
