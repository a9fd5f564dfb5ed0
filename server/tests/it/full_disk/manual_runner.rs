//! A runner the test drives by hand over the runner protocol (blocking HTTP), to put
//! each kind of write in front of a full disk at a moment the test chooses: log
//! batches, artifact and cache uploads, step and stage ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// An answer: its status, its `Retry-After`, its JSON (or text as a JSON string).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: Value,
}

impl Answer {
    fn from(resp: reqwest::blocking::Response) -> Answer {
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = resp.text().unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer {
            status,
            retry_after,
            body,
        }
    }

    /// The JSON error's message.
    pub fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or_default()
    }

    /// A 507 the way the server answers a full disk: `insufficient_storage`, a
    /// `Retry-After`, and a message that says so.
    pub fn assert_disk_full(&self, what: &str) {
        assert_eq!(self.status, 507, "{what}: {self:?}");
        assert_eq!(
            self.body["error"]["code"], "insufficient_storage",
            "{what}: {self:?}"
        );
        assert!(
            self.retry_after.is_some(),
            "{what} has a Retry-After: {self:?}"
        );
        assert!(
            self.message().contains("disk") && self.message().contains("not stored"),
            "{what} says why: {self:?}"
        );
    }
}

/// Heartbeats in the background ([`ManualRunner::keep_alive`]) until dropped.
pub struct KeepAlive {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A stage leased by the manual runner.
pub struct Leased {
    pub stage_id: i64,
    pub lease: String,
}

pub struct ManualRunner {
    base: String,
    token: String,
    http: reqwest::blocking::Client,
    runner_id: i64,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl ManualRunner {
    /// Registers as `name` with `labels` on the server at `base` (no trailing `/`).
    pub fn register(base: &str, token: &str, name: &str, labels: &[&str]) -> ManualRunner {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let mut r = ManualRunner {
            base: base.to_string(),
            token: token.to_string(),
            http,
            runner_id: 0,
        };
        let a = r.post(
            "/api/runner/register",
            &json!({"name": name, "labels": labels, "capacity": 1}),
        );
        assert_eq!(a.status, 200, "register: {a:?}");
        r.runner_id = a.body["runner_id"].as_i64().unwrap();
        r
    }

    pub fn post(&self, path: &str, body: &Value) -> Answer {
        Answer::from(
            self.http
                .post(format!("{}{path}", self.base))
                .bearer_auth(&self.token)
                .json(body)
                .send()
                .unwrap_or_else(|e| panic!("POST {path}: {e}")),
        )
    }

    fn put(&self, path: &str, query: &[(&str, String)], bytes: Vec<u8>) -> Answer {
        Answer::from(
            self.http
                .put(format!("{}{path}", self.base))
                .bearer_auth(&self.token)
                .query(query)
                .body(bytes)
                .send()
                .unwrap_or_else(|e| panic!("PUT {path}: {e}")),
        )
    }

    /// Long-polls until a stage is leased (bounded).
    pub fn lease(&self, within: Duration) -> Leased {
        let until = Instant::now() + within;
        while Instant::now() < until {
            let a = self.post("/api/runner/lease", &json!({"runner_id": self.runner_id}));
            match a.status {
                200 => {
                    return Leased {
                        stage_id: a.body["stage_id"].as_i64().unwrap(),
                        lease: a.body["lease_token"].as_str().unwrap().to_string(),
                    };
                }
                204 => {}
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        panic!("no stage leased within {within:?}");
    }

    fn stage_path(l: &Leased, tail: &str) -> String {
        format!("/api/runner/stages/{}{tail}", l.stage_id)
    }

    /// Heartbeats `l` every second in a thread of its own, as a real runner does
    /// whatever the answers (a 507 included), until the guard drops.
    pub fn keep_alive(&self, l: &Leased) -> KeepAlive {
        let stop = Arc::new(AtomicBool::new(false));
        let runner = ManualRunner {
            base: self.base.clone(),
            token: self.token.clone(),
            http: self.http.clone(),
            runner_id: self.runner_id,
        };
        let lease = Leased {
            stage_id: l.stage_id,
            lease: l.lease.clone(),
        };
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                let _ = runner.heartbeat(&lease);
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        KeepAlive {
            stop,
            thread: Some(thread),
        }
    }

    pub fn heartbeat(&self, l: &Leased) -> Answer {
        self.post(
            &Self::stage_path(l, "/heartbeat"),
            &json!({"lease_token": l.lease, "wait_ms": 0}),
        )
    }

    pub fn step_start(&self, l: &Leased, idx: u32) -> Answer {
        self.post(
            &Self::stage_path(l, &format!("/steps/{idx}/start")),
            &json!({"lease_token": l.lease}),
        )
    }

    /// Lines `first..` of step `idx`: `lines` as stdout.
    pub fn log_batch(&self, l: &Leased, idx: u32, first: u64, lines: &[String]) -> Answer {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let wire: Vec<Value> = lines
            .iter()
            .map(|t| json!({"time_ms": 1, "stream": "stdout", "data_b64": b64.encode(t)}))
            .collect();
        self.post(
            &Self::stage_path(l, &format!("/steps/{idx}/logs")),
            &json!({"lease_token": l.lease, "first_line": first, "lines": wire}),
        )
    }

    pub fn step_finish(&self, l: &Leased, idx: u32) -> Answer {
        self.post(
            &Self::stage_path(l, &format!("/steps/{idx}/finish")),
            &json!({"lease_token": l.lease, "status": "success", "exit_code": 0}),
        )
    }

    pub fn artifact(&self, l: &Leased, name: &str, bytes: Vec<u8>) -> Answer {
        let query = [
            ("lease_token", l.lease.clone()),
            ("name", name.to_string()),
            ("sha256", sha256_hex(&bytes)),
            ("size", bytes.len().to_string()),
        ];
        self.put(&Self::stage_path(l, "/artifacts"), &query, bytes)
    }

    pub fn cache(&self, l: &Leased, key: &str, bytes: Vec<u8>) -> Answer {
        let query = [
            ("lease_token", l.lease.clone()),
            ("key", key.to_string()),
            ("sha256", sha256_hex(&bytes)),
            ("size", bytes.len().to_string()),
        ];
        self.put(&Self::stage_path(l, "/cache"), &query, bytes)
    }

    pub fn stage_finish(&self, l: &Leased) -> Answer {
        self.post(
            &Self::stage_path(l, "/finish"),
            &json!({"lease_token": l.lease, "status": "success"}),
        )
    }
}
