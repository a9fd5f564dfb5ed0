//! Server configuration: command-line flags, then `SLIPWAY_*` environment variables,
//! then an optional TOML file, then defaults — the first that sets a value wins.
//!
//! One struct, [`Settings`], is both the clap argument group and the TOML schema, so a
//! setting cannot exist in one place and be forgotten in the other.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Every setting is optional here; [`Config::resolve`] fills in defaults.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address to listen on.
    #[arg(long, env = "SLIPWAY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory for the SQLite database, logs, mirrors, artifacts and the secret key.
    #[arg(long, env = "SLIPWAY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL: `sqlite://…` or `postgres://…` (default: SQLite in the data dir).
    #[arg(long, env = "SLIPWAY_DATABASE_URL")]
    pub database_url: Option<String>,
    /// File holding the key that encrypts secrets at rest (default: <data dir>/secret.key,
    /// created on first start). `SLIPWAY_SECRET_KEY` (base64) takes precedence.
    #[arg(long, env = "SLIPWAY_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,
    /// The URL people reach this server at, used for links in commit statuses.
    #[arg(long, env = "SLIPWAY_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Run stages in this process with the local backend (`false` to rely on
    /// `slipway runner` processes only).
    #[arg(long, env = "SLIPWAY_IN_PROCESS_RUNNER", num_args = 0..=1, default_missing_value = "true")]
    pub in_process_runner: Option<bool>,
    /// How many stages the in-process runner runs at once.
    #[arg(long, env = "SLIPWAY_RUNNER_CAPACITY")]
    pub runner_capacity: Option<usize>,
    /// The in-process runner's backend: `local` (host processes), `docker` or
    /// `kubernetes` (settings from `SLIPWAY_KUBE_*`, see `backends`).
    #[arg(long, value_enum, env = "SLIPWAY_RUNNER_BACKEND")]
    pub runner_backend: Option<crate::agent::backends::BackendKind>,
    /// Most stages running at once across all repositories.
    #[arg(long, env = "SLIPWAY_MAX_RUNNING")]
    pub max_running: Option<usize>,
    /// Most stages running at once in one repository.
    #[arg(long, env = "SLIPWAY_MAX_RUNNING_PER_REPO")]
    pub max_running_per_repo: Option<usize>,
    /// Cancel a branch's older runs when a newer push to it arrives.
    #[arg(long, env = "SLIPWAY_AUTO_CANCEL", num_args = 0..=1, default_missing_value = "true")]
    pub auto_cancel: Option<bool>,
    /// Seconds without a heartbeat after which a runner's stage is taken back.
    #[arg(long, env = "SLIPWAY_HEARTBEAT_TIMEOUT")]
    pub heartbeat_timeout_secs: Option<u64>,
    /// Largest webhook body accepted, in bytes.
    #[arg(long, env = "SLIPWAY_MAX_WEBHOOK_BYTES")]
    pub max_webhook_bytes: Option<usize>,
    /// Most bytes of webhook bodies held at once before their signature is checked,
    /// across all connections (default 64 MiB; at least `max_webhook_bytes`). Beyond it
    /// a delivery waits briefly, then gets 503 with `Retry-After`.
    #[arg(long, env = "SLIPWAY_MAX_UNVERIFIED_WEBHOOK_BYTES")]
    pub max_unverified_webhook_bytes: Option<usize>,
    /// Seconds a client may take to send a request's head (default 10); for the first
    /// request of a connection counted from its opening, else from the head's first byte.
    #[arg(long, env = "SLIPWAY_HEADER_READ_TIMEOUT")]
    pub header_read_timeout_secs: Option<u64>,
    /// Seconds a request body may go without a byte arriving (default 30).
    #[arg(long, env = "SLIPWAY_BODY_READ_TIMEOUT")]
    pub body_read_timeout_secs: Option<u64>,
    /// Seconds a kept-alive connection may sit between requests (default 60).
    #[arg(long, env = "SLIPWAY_IDLE_TIMEOUT")]
    pub idle_timeout_secs: Option<u64>,
    /// Most client connections open at once (default 1024, lowered to fit the process's
    /// open-file limit). At the limit a new connection closes the longest-idle one; if
    /// every connection has a request under way, it gets 503.
    #[arg(long, env = "SLIPWAY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Largest single artifact a runner may upload, in bytes (default 2 GiB).
    #[arg(long, env = "SLIPWAY_MAX_ARTIFACT_BYTES")]
    pub max_artifact_bytes: Option<u64>,
    /// Most bytes of artifacts one stage may store in total (default 10 GiB).
    #[arg(long, env = "SLIPWAY_MAX_STAGE_ARTIFACT_BYTES")]
    pub max_stage_artifact_bytes: Option<u64>,
    /// Largest cache archive a runner may upload, in bytes (default 5 GiB).
    #[arg(long, env = "SLIPWAY_MAX_CACHE_BYTES")]
    pub max_cache_bytes: Option<u64>,
    /// Bytes kept free on the data directory's disk (default 64 MiB; 0: none): an
    /// artifact or cache upload that would leave less is refused with 507, and after
    /// the disk filled the server is ready again only once this much is free.
    #[arg(long, env = "SLIPWAY_MIN_FREE_DISK_BYTES")]
    pub min_free_disk_bytes: Option<u64>,
    /// Kubernetes backend: the namespace of the stage pods (default `slipway-builds`).
    #[arg(long, env = "SLIPWAY_KUBE_NAMESPACE")]
    pub kube_namespace: Option<String>,
    /// Kubernetes backend: the image of the pods' helper containers, which need `sh`,
    /// `tar` and `sleep` (default `docker.io/library/busybox:1.37`).
    #[arg(long, env = "SLIPWAY_KUBE_HELPER_IMAGE")]
    pub kube_helper_image: Option<String>,
    /// Kubernetes backend: Secrets (comma-separated names) for pulling from private
    /// registries.
    #[arg(long, env = "SLIPWAY_KUBE_IMAGE_PULL_SECRETS")]
    pub kube_image_pull_secrets: Option<String>,
    /// Kubernetes backend: the image builder pods run `kind: image` stages in, with
    /// `sh` and rootless `buildah` (e.g. `quay.io/buildah/stable`); unset: image
    /// stages are refused on Kubernetes.
    #[arg(long, env = "SLIPWAY_KUBE_BUILDER_IMAGE")]
    pub kube_builder_image: Option<String>,
    /// Kubernetes backend: the namespace of builder pods, at Pod Security
    /// `privileged` and holding nothing else (default `slipway-builders`).
    #[arg(long, env = "SLIPWAY_KUBE_BUILDER_NAMESPACE")]
    pub kube_builder_namespace: Option<String>,
    /// Kubernetes backend: registries (comma-separated `host[:port]`) builder pods
    /// reach over plain HTTP or without a trusted certificate.
    #[arg(long, env = "SLIPWAY_KUBE_INSECURE_REGISTRIES")]
    pub kube_insecure_registries: Option<String>,
    /// Forge API base URLs by clone-URL host (`host`, or `host:port` where the clone URL
    /// names a port), for forges whose API is not where the clone URL suggests: GitLab
    /// under a relative URL root, GitHub Enterprise Cloud at `api.<sub>.ghe.com`, SSH
    /// clone hosts that differ from the web host. A repository's own `api_url` wins.
    /// Config file only, as a `[forge_api_urls]` table.
    #[arg(skip)]
    pub forge_api_urls: Option<std::collections::BTreeMap<String, String>>,
    /// Signing in with forges: `[oauth.<name>]` tables, file only (`web::oauth::settings`).
    #[arg(skip)]
    pub oauth: Option<OAuthTables>,
}

/// The `[oauth.<name>]` tables as written, with where each part is in the file.
pub type OAuthTables = std::collections::BTreeMap<
    toml::Spanned<String>,
    toml::Spanned<crate::web::oauth::settings::ProviderSettings>,
>;

impl Settings {
    /// Field by field: `self` where set, else `other`.
    fn or(self, other: Settings) -> Settings {
        Settings {
            listen: self.listen.or(other.listen),
            data_dir: self.data_dir.or(other.data_dir),
            database_url: self.database_url.or(other.database_url),
            secret_key_file: self.secret_key_file.or(other.secret_key_file),
            public_url: self.public_url.or(other.public_url),
            in_process_runner: self.in_process_runner.or(other.in_process_runner),
            runner_capacity: self.runner_capacity.or(other.runner_capacity),
            runner_backend: self.runner_backend.or(other.runner_backend),
            max_running: self.max_running.or(other.max_running),
            max_running_per_repo: self.max_running_per_repo.or(other.max_running_per_repo),
            auto_cancel: self.auto_cancel.or(other.auto_cancel),
            heartbeat_timeout_secs: self.heartbeat_timeout_secs.or(other.heartbeat_timeout_secs),
            max_webhook_bytes: self.max_webhook_bytes.or(other.max_webhook_bytes),
            max_unverified_webhook_bytes: self
                .max_unverified_webhook_bytes
                .or(other.max_unverified_webhook_bytes),
            header_read_timeout_secs: self
                .header_read_timeout_secs
                .or(other.header_read_timeout_secs),
            body_read_timeout_secs: self.body_read_timeout_secs.or(other.body_read_timeout_secs),
            idle_timeout_secs: self.idle_timeout_secs.or(other.idle_timeout_secs),
            max_connections: self.max_connections.or(other.max_connections),
            max_artifact_bytes: self.max_artifact_bytes.or(other.max_artifact_bytes),
            max_stage_artifact_bytes: self
                .max_stage_artifact_bytes
                .or(other.max_stage_artifact_bytes),
            max_cache_bytes: self.max_cache_bytes.or(other.max_cache_bytes),
            min_free_disk_bytes: self.min_free_disk_bytes.or(other.min_free_disk_bytes),
            kube_namespace: self.kube_namespace.or(other.kube_namespace),
            kube_helper_image: self.kube_helper_image.or(other.kube_helper_image),
            kube_image_pull_secrets: self
                .kube_image_pull_secrets
                .or(other.kube_image_pull_secrets),
            kube_builder_image: self.kube_builder_image.or(other.kube_builder_image),
            kube_builder_namespace: self.kube_builder_namespace.or(other.kube_builder_namespace),
            kube_insecure_registries: self
                .kube_insecure_registries
                .or(other.kube_insecure_registries),
            forge_api_urls: self.forge_api_urls.or(other.forge_api_urls),
            oauth: self.oauth.or(other.oauth),
        }
    }
}

/// The resolved configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub secret_key_file: PathBuf,
    pub public_url: String,
    pub in_process_runner: bool,
    pub runner_capacity: usize,
    pub runner_backend: crate::agent::backends::BackendKind,
    /// The Kubernetes backend's settings (`kube_*`).
    pub kube: crate::agent::backends::KubeSettings,
    pub max_running: usize,
    pub max_running_per_repo: usize,
    pub auto_cancel: bool,
    pub heartbeat_timeout: Duration,
    pub max_webhook_bytes: usize,
    /// The budget of webhook bytes held before verification, shared by all connections.
    pub max_unverified_webhook_bytes: usize,
    /// The HTTP listener's timeouts and connection limit.
    pub http: HttpLimits,
    pub max_artifact_bytes: u64,
    pub max_stage_artifact_bytes: u64,
    pub max_cache_bytes: u64,
    /// Bytes kept free on the data disk (see `daemon::disk`).
    pub min_free_disk_bytes: u64,
    /// `(host, API base)` pairs from `[forge_api_urls]`, checked at start-up.
    pub forge_api_urls: Vec<(String, String)>,
    /// The forges people sign in with (`[oauth.<name>]`), checked; secrets not read yet.
    pub oauth: Vec<crate::web::oauth::settings::OAuthProvider>,
}

/// What the HTTP listener allows a client (see `daemon::listener`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Resolves `cli` (flags and environment, already merged by clap) over the TOML
    /// file at `file`, if any, over the defaults.
    pub fn resolve(cli: Settings, file: Option<&Path>) -> Result<Config, ConfigError> {
        let from_file = match file {
            Some(path) => read_file(path)?,
            None => Settings::default(),
        };
        let s = cli.or(from_file);
        let listen = s
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
        let data_dir = s.data_dir.unwrap_or_else(|| PathBuf::from("slipway-data"));
        let database_url = s.database_url.unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                data_dir.join("slipway.db").display()
            )
        });
        if !(database_url.starts_with("sqlite:") || database_url.starts_with("postgres")) {
            return Err(ConfigError::Invalid(format!(
                "database_url must start with sqlite: or postgres://, not `{}`",
                redact_url(&database_url)
            )));
        }
        let positive = |name: &str, v: Option<usize>, default: usize| match v {
            Some(0) => Err(ConfigError::Invalid(format!("{name} must be at least 1"))),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let bytes = |name: &str, v: Option<u64>, default: u64| match v {
            Some(0) => Err(ConfigError::Invalid(format!("{name} must be at least 1"))),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        const GIB: u64 = 1024 * 1024 * 1024;
        let secs = |name: &str, v: Option<u64>, default: Duration| match v {
            Some(0) => Err(ConfigError::Invalid(format!("{name} must be at least 1"))),
            Some(n) => Ok(Duration::from_secs(n)),
            None => Ok(default),
        };
        let defaults = HttpLimits::default();
        let http = HttpLimits {
            header_read_timeout: secs(
                "header_read_timeout_secs",
                s.header_read_timeout_secs,
                defaults.header_read_timeout,
            )?,
            body_read_timeout: secs(
                "body_read_timeout_secs",
                s.body_read_timeout_secs,
                defaults.body_read_timeout,
            )?,
            idle_timeout: secs(
                "idle_timeout_secs",
                s.idle_timeout_secs,
                defaults.idle_timeout,
            )?,
            max_connections: positive(
                "max_connections",
                s.max_connections,
                defaults.max_connections,
            )?,
        };
        let max_webhook_bytes =
            positive("max_webhook_bytes", s.max_webhook_bytes, 25 * 1024 * 1024)?;
        let max_unverified_webhook_bytes = positive(
            "max_unverified_webhook_bytes",
            s.max_unverified_webhook_bytes,
            (64 * 1024 * 1024).max(max_webhook_bytes),
        )?;
        if max_unverified_webhook_bytes < max_webhook_bytes {
            return Err(ConfigError::Invalid(format!(
                "max_unverified_webhook_bytes ({max_unverified_webhook_bytes}) must be at least \
                 max_webhook_bytes ({max_webhook_bytes}), or no delivery of the largest size \
                 could ever be read"
            )));
        }
        let mut forge_api_urls = Vec::new();
        for (host, url) in s.forge_api_urls.clone().unwrap_or_default() {
            crate::forge::check_api_base(&url)
                .map_err(|e| ConfigError::Invalid(format!("forge_api_urls.\"{host}\": {e}")))?;
            if host.is_empty() || host.contains(['/', '@', ' ']) {
                return Err(ConfigError::Invalid(format!(
                    "forge_api_urls: `{host}` is not a host or host:port as in a clone URL"
                )));
            }
            forge_api_urls.push((host, url));
        }
        let oauth = match &s.oauth {
            Some(tables) => crate::web::oauth::settings::providers(tables)
                .map_err(|(_, message)| ConfigError::Invalid(message))?,
            None => Vec::new(),
        };
        Ok(Config {
            forge_api_urls,
            oauth,
            listen,
            secret_key_file: s
                .secret_key_file
                .unwrap_or_else(|| data_dir.join("secret.key")),
            public_url: s
                .public_url
                .unwrap_or_else(|| format!("http://{listen}"))
                .trim_end_matches('/')
                .to_string(),
            in_process_runner: s.in_process_runner.unwrap_or(true),
            runner_capacity: positive("runner_capacity", s.runner_capacity, 2)?,
            runner_backend: s.runner_backend.unwrap_or_default(),
            kube: crate::agent::backends::KubeSettings {
                namespace: s.kube_namespace.clone(),
                helper_image: s.kube_helper_image.clone(),
                image_pull_secrets: s.kube_image_pull_secrets.clone(),
                builder_image: s.kube_builder_image.clone(),
                builder_namespace: s.kube_builder_namespace.clone(),
                insecure_registries: s.kube_insecure_registries.clone(),
            },
            max_running: positive("max_running", s.max_running, 16)?,
            max_running_per_repo: positive("max_running_per_repo", s.max_running_per_repo, 4)?,
            auto_cancel: s.auto_cancel.unwrap_or(true),
            heartbeat_timeout: Duration::from_secs(match s.heartbeat_timeout_secs {
                Some(0) => {
                    return Err(ConfigError::Invalid(
                        "heartbeat_timeout_secs must be at least 1".into(),
                    ));
                }
                Some(n) => n,
                None => 30,
            }),
            max_webhook_bytes,
            max_unverified_webhook_bytes,
            http,
            max_artifact_bytes: bytes("max_artifact_bytes", s.max_artifact_bytes, 2 * GIB)?,
            max_stage_artifact_bytes: bytes(
                "max_stage_artifact_bytes",
                s.max_stage_artifact_bytes,
                10 * GIB,
            )?,
            max_cache_bytes: bytes("max_cache_bytes", s.max_cache_bytes, 5 * GIB)?,
            min_free_disk_bytes: s.min_free_disk_bytes.unwrap_or(64 * 1024 * 1024),
            data_dir,
            database_url,
        })
    }
}

pub(crate) fn read_file(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let at = |start: usize, message: String| {
        let (line, column) = line_column(&text, start);
        ConfigError::Parse {
            path: path.to_path_buf(),
            line,
            column,
            message,
        }
    };
    let settings: Settings = toml::from_str(&text).map_err(|e| {
        at(
            e.span().map_or(0, |span| span.start),
            e.message().to_string(),
        )
    })?;
    // What only makes sense with the text at hand: where a bad `[oauth.*]` value is.
    if let Some(tables) = &settings.oauth {
        crate::web::oauth::settings::providers(tables)
            .map_err(|(span, message)| at(span.start, message))?;
    }
    Ok(settings)
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Hides the password in a database URL before it goes into a message.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slipway.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn defaults_give_an_embedded_sqlite_server() {
        let c = Config::resolve(Settings::default(), None).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.database_url, "sqlite://slipway-data/slipway.db?mode=rwc");
        assert_eq!(c.secret_key_file, PathBuf::from("slipway-data/secret.key"));
        assert!(c.in_process_runner && c.auto_cancel);
        assert_eq!(c.public_url, "http://127.0.0.1:8080");
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let (_dir, path) =
            file("listen = \"127.0.0.1:9000\"\ndata_dir = \"/srv/slipway\"\nmax_running = 3\n");
        let cli = Settings {
            listen: Some("127.0.0.2:7000".parse().unwrap()),
            ..Settings::default()
        };
        let c = Config::resolve(cli, Some(&path)).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.2:7000");
        assert_eq!(c.data_dir, PathBuf::from("/srv/slipway"));
        assert_eq!(c.max_running, 3);
        assert_eq!(c.database_url, "sqlite:///srv/slipway/slipway.db?mode=rwc");
    }

    #[test]
    fn runner_backend_from_file_and_flag() {
        use crate::agent::backends::BackendKind;
        let c = Config::resolve(Settings::default(), None).unwrap();
        assert_eq!(c.runner_backend, BackendKind::Local);
        let (_dir, path) = file("runner_backend = \"docker\"\n");
        let c = Config::resolve(Settings::default(), Some(&path)).unwrap();
        assert_eq!(c.runner_backend, BackendKind::Docker);
        let cli = Settings {
            runner_backend: Some(BackendKind::Local),
            ..Settings::default()
        };
        assert_eq!(
            Config::resolve(cli, Some(&path)).unwrap().runner_backend,
            BackendKind::Local
        );
        let (_dir, path) = file("runner_backend = \"kubernetez\"\n");
        let text = Config::resolve(Settings::default(), Some(&path))
            .unwrap_err()
            .to_string();
        assert!(text.contains("slipway.toml:1:18"), "{text}");
    }

    #[test]
    fn file_errors_name_the_line_and_column() {
        let (_dir, path) = file("listen = \"127.0.0.1:9000\"\nmax_runing = 3\n");
        let err = Config::resolve(Settings::default(), Some(&path)).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("slipway.toml:2:1"), "{text}");
        assert!(text.contains("max_runing"), "{text}");

        let (_dir, path) = file("max_running = \"lots\"\n");
        let text = Config::resolve(Settings::default(), Some(&path))
            .unwrap_err()
            .to_string();
        assert!(text.contains("slipway.toml:1:15"), "{text}");
    }

    #[test]
    fn http_limits_and_the_webhook_budget() {
        let c = Config::resolve(Settings::default(), None).unwrap();
        assert_eq!(c.http, HttpLimits::default());
        assert_eq!(c.max_unverified_webhook_bytes, 64 * 1024 * 1024);
        let (_dir, path) = file("idle_timeout_secs = 5\nmax_connections = 100\n");
        let cli = Settings {
            header_read_timeout_secs: Some(3),
            ..Settings::default()
        };
        let c = Config::resolve(cli, Some(&path)).unwrap();
        assert_eq!(c.http.header_read_timeout, Duration::from_secs(3));
        assert_eq!(c.http.idle_timeout, Duration::from_secs(5));
        assert_eq!(c.http.max_connections, 100);
        assert_eq!(c.http.body_read_timeout, Duration::from_secs(30));
        // A webhook cap above the default budget raises the budget's default with it.
        let big = Settings {
            max_webhook_bytes: Some(100 * 1024 * 1024),
            ..Settings::default()
        };
        let c = Config::resolve(big.clone(), None).unwrap();
        assert_eq!(c.max_unverified_webhook_bytes, 100 * 1024 * 1024);
        let small_budget = Settings {
            max_unverified_webhook_bytes: Some(1024),
            ..big
        };
        let text = Config::resolve(small_budget, None).unwrap_err().to_string();
        assert!(text.contains("at least max_webhook_bytes"), "{text}");
        let zero = Settings {
            idle_timeout_secs: Some(0),
            ..Settings::default()
        };
        assert!(Config::resolve(zero, None).is_err());
    }

    #[test]
    fn nonsense_values_are_refused() {
        let zero = Settings {
            max_running: Some(0),
            ..Settings::default()
        };
        assert!(Config::resolve(zero, None).is_err());
        let mysql = Settings {
            database_url: Some("mysql://root:hunter2@db/x".into()),
            ..Settings::default()
        };
        let text = Config::resolve(mysql, None).unwrap_err().to_string();
        assert!(text.contains("sqlite: or postgres://"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}
