//! Secrets at rest and API/runner tokens.
//!
//! * [`SecretKey`]: the server's 32-byte master key, from a file (raw bytes or base64 text)
//!   or from `SLIPWAY_SECRET_KEY` (base64). Never printed, zeroed on drop.
//! * [`SecretBox`]: XChaCha20-Poly1305 with a fresh random 24-byte nonce per seal. The
//!   caller passes *associated data* naming the row a ciphertext belongs to (see
//!   [`secret_aad`]), so a ciphertext copied into another row (another repository's secret,
//!   another secret name) fails to open instead of silently decrypting there.
//! * Tokens: [`generate_token`], [`hash_token`], [`verify_token`],
//!   [`generate_webhook_secret`].
//!
//! Why XChaCha20-Poly1305: the 24-byte nonce is large enough that random nonces never
//! collide in practice, so no nonce counter has to be kept consistent across server replicas
//! or restarts — the failure mode that breaks AES-GCM deployments.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use rand::RngCore;
use rand::distributions::{Alphanumeric, Distribution};
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Environment variable holding the base64-encoded master key. When set it wins over the
/// key file, so a Kubernetes Secret can provide the key without a writable volume.
pub const SECRET_KEY_ENV: &str = "SLIPWAY_SECRET_KEY";

/// Length of the master key in bytes (XChaCha20-Poly1305 uses a 256-bit key).
pub const KEY_LEN: usize = 32;

/// First byte of every sealed value. Bump it (and keep opening the old one) if the format or
/// the algorithm ever changes, so stored rows can be migrated lazily.
const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// Errors from key loading and decryption. Messages never contain key material or
/// plaintext.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("secret key file {}: {source}", path.display())]
    KeyFile { path: PathBuf, source: io::Error },

    #[error(
        "secret key file {} is accessible by group or others (mode {mode:03o}); \
         restrict it with `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    InsecureKeyFile { path: PathBuf, mode: u32 },

    #[error(
        "secret key from {origin} is invalid: {reason} (expected 32 raw bytes or their base64; \
         generate one with `head -c 32 /dev/urandom | base64`)"
    )]
    InvalidKey { origin: String, reason: String },

    /// Wrong key, wrong associated data, or a modified ciphertext. AEADs deliberately do
    /// not say which, and neither do we.
    #[error("decryption failed: wrong key, wrong context, or corrupted data")]
    Decrypt,

    #[error("sealed value is malformed: {0}")]
    Malformed(&'static str),

    #[error("sealed value has unsupported format version {0}")]
    UnsupportedVersion(u8),

    #[error("hashing the password failed: {0}")]
    Password(String),
}

pub type Result<T, E = CryptoError> = std::result::Result<T, E>;

/// The 32-byte master key that encrypts secrets at rest.
///
/// `Debug` is redacted and the bytes are zeroed on drop, so a key cannot reach a log line by
/// accident (`tracing::debug!(?config)` included).
#[derive(Clone)]
pub struct SecretKey(Zeroizing<[u8; KEY_LEN]>);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl SecretKey {
    /// A new random key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        OsRng.fill_bytes(bytes.as_mut());
        SecretKey(bytes)
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        SecretKey(Zeroizing::new(bytes))
    }

    /// Parses base64 (standard or URL-safe, padded or not; surrounding whitespace ignored).
    pub fn from_base64(text: &str) -> Result<Self> {
        Self::decode_base64(text, "base64 text")
    }

    /// Base64 (standard, padded) of the key: what [`SecretKey::load_or_create`] writes and
    /// what `SLIPWAY_SECRET_KEY` expects. Only for writing the key where it belongs.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.0.as_ref()))
    }

    /// A short identifier of the key (SHA-256 of the key, first 8 bytes, hex), safe to log
    /// so operators can tell which key a replica runs with. It reveals nothing about the key.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0.as_ref());
        hex::encode(&digest[..8])
    }

    /// Reads a key file: exactly 32 raw bytes, or base64 text of 32 bytes.
    ///
    /// On Unix the file must not be accessible by group or others (like ssh does with private
    /// keys): whoever reads this file can decrypt every stored secret, and whoever can write it
    /// can make the server encrypt new secrets under a key they know.
    pub fn from_file(path: &Path) -> Result<Self> {
        let key_file_err = |source| CryptoError::KeyFile {
            path: path.to_owned(),
            source,
        };
        let file = fs::File::open(path).map_err(key_file_err)?;
        check_permissions(path, &file)?;
        let mut contents = Zeroizing::new(Vec::with_capacity(64));
        io::Read::read_to_end(&mut io::Read::take(&file, 4096), &mut contents)
            .map_err(key_file_err)?;
        let origin = format!("file {}", path.display());
        // 32 raw bytes can never be base64 of 32 bytes (that is 43 or 44 characters), so the
        // length alone tells the two encodings apart.
        if contents.len() == KEY_LEN {
            // A random key is all printable ASCII with probability (95/256)^32 ≈ 1e-14, so a
            // printable one is a typed passphrase, which is far weaker than a key: refuse it.
            if contents.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
                return Err(CryptoError::InvalidKey {
                    origin,
                    reason: "32 printable characters look like a passphrase, not a random key"
                        .into(),
                });
            }
            return Ok(Self::from_slice(&contents));
        }
        let text = std::str::from_utf8(&contents).map_err(|_| CryptoError::InvalidKey {
            origin: origin.clone(),
            reason: format!(
                "{} bytes that are neither a raw key nor text",
                contents.len()
            ),
        })?;
        Self::decode_base64(text, &origin)
    }

    /// The key from `SLIPWAY_SECRET_KEY`, or `None` when the variable is unset or empty.
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_env_value(std::env::var_os(SECRET_KEY_ENV).as_deref())
    }

    /// [`SecretKey::from_env`] for a given value of the variable (`None`: unset), so the
    /// rules are testable without touching the process environment.
    pub fn from_env_value(value: Option<&std::ffi::OsStr>) -> Result<Option<Self>> {
        let origin = || format!("environment variable {SECRET_KEY_ENV}");
        match value.map(|v| v.to_str()) {
            None => Ok(None),
            Some(None) => Err(CryptoError::InvalidKey {
                origin: origin(),
                reason: "not valid UTF-8".into(),
            }),
            Some(Some(v)) if v.trim().is_empty() => Ok(None),
            Some(Some(v)) => Self::decode_base64(v, &origin()).map(Some),
        }
    }

    /// Loads the key file, or creates it with a random key (base64 text, mode 0600) when it
    /// does not exist. The parent directory is created if needed.
    ///
    /// Creation is race-free: the key is written to a private temporary file in the same
    /// directory and hard-linked into place, which fails if another process (a second server
    /// replica starting at the same moment) won the race — we then load the winner's key, so
    /// both replicas agree. A crash mid-write leaves no half-written key file behind.
    pub fn load_or_create(path: &Path) -> Result<Self> {
        let key_file_err = |source| CryptoError::KeyFile {
            path: path.to_owned(),
            source,
        };
        match fs::metadata(path) {
            Ok(_) => return Self::from_file(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(key_file_err(e)),
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        fs::create_dir_all(dir).map_err(key_file_err)?;
        let key = Self::generate();
        // tempfile creates files with mode 0600 on Unix.
        let mut tmp = tempfile::Builder::new()
            .prefix(".slipway-key-")
            .tempfile_in(dir)
            .map_err(key_file_err)?;
        let mut text = key.to_base64();
        text.push('\n');
        tmp.write_all(text.as_bytes()).map_err(key_file_err)?;
        tmp.as_file().sync_all().map_err(key_file_err)?;
        match fs::hard_link(tmp.path(), path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), fingerprint = %key.fingerprint(), "created a new secret key file");
                Ok(key)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Self::from_file(path),
            Err(e) => Err(key_file_err(e)),
        }
        // `tmp` is removed on drop; the hard link keeps the key file.
    }

    /// The key from `SLIPWAY_SECRET_KEY` if set, else [`SecretKey::load_or_create`] on `path`.
    /// The environment wins because setting it is an explicit operator choice.
    pub fn from_env_or_file(path: &Path) -> Result<Self> {
        Self::from_env_value_or_file(std::env::var_os(SECRET_KEY_ENV).as_deref(), path)
    }

    /// [`SecretKey::from_env_or_file`] for a given value of the variable.
    pub fn from_env_value_or_file(value: Option<&std::ffi::OsStr>, path: &Path) -> Result<Self> {
        match Self::from_env_value(value)? {
            Some(key) => Ok(key),
            None => Self::load_or_create(path),
        }
    }

    fn decode_base64(text: &str, origin: &str) -> Result<Self> {
        let text = text.trim();
        if text.is_empty() {
            return Err(CryptoError::InvalidKey {
                origin: origin.to_owned(),
                reason: "it is empty".into(),
            });
        }
        let decoded = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
            .iter()
            .find_map(|engine| engine.decode(text).ok())
            .map(Zeroizing::new)
            .ok_or_else(|| CryptoError::InvalidKey {
                origin: origin.to_owned(),
                reason: "not valid base64".into(),
            })?;
        if decoded.len() != KEY_LEN {
            return Err(CryptoError::InvalidKey {
                origin: origin.to_owned(),
                reason: format!("decodes to {} bytes, not {KEY_LEN}", decoded.len()),
            });
        }
        Ok(Self::from_slice(&decoded))
    }

    /// Copies straight into zeroizing storage so no stray copy of the key stays on the stack.
    /// `bytes` must be `KEY_LEN` long (checked by the callers).
    fn from_slice(bytes: &[u8]) -> Self {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(bytes);
        SecretKey(key)
    }
}

#[cfg(unix)]
fn check_permissions(path: &Path, file: &fs::File) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = file
        .metadata()
        .map_err(|source| CryptoError::KeyFile {
            path: path.to_owned(),
            source,
        })?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(CryptoError::InsecureKeyFile {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_path: &Path, _file: &fs::File) -> Result<()> {
    Ok(())
}

/// Authenticated encryption of small values (secrets, forge tokens) with the master key.
///
/// Sealed layout: `version (1) || nonce (24) || ciphertext || tag (16)`.
#[derive(Clone)]
pub struct SecretBox {
    cipher: XChaCha20Poly1305,
}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBox(<redacted>)")
    }
}

impl SecretBox {
    pub fn new(key: &SecretKey) -> Self {
        SecretBox {
            cipher: XChaCha20Poly1305::new(key.0.as_ref().into()),
        }
    }

    /// Encrypts `plaintext`, binding it to `aad` (e.g. [`secret_aad`]): the same `aad` must
    /// be passed to [`SecretBox::open`]. Two seals of the same input differ (random nonce).
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            // Encryption only fails for inputs beyond ~256 GiB, which a secret never is.
            .expect("XChaCha20-Poly1305 encryption of an in-memory value cannot fail");
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        sealed.push(FORMAT_V1);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        sealed
    }

    /// Decrypts a value made by [`SecretBox::seal`] with the same key and `aad`. Any other
    /// input — wrong key, other `aad`, a changed or missing byte — is an error, never a panic.
    /// The plaintext is zeroed when dropped.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let (&version, rest) = sealed
            .split_first()
            .ok_or(CryptoError::Malformed("empty"))?;
        if version != FORMAT_V1 {
            return Err(CryptoError::UnsupportedVersion(version));
        }
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(CryptoError::Malformed("too short"));
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Decrypt)
    }
}

/// The associated data for a repository secret: `secret:<repo_id>:<name>`. Using one function
/// on both the write and the read path keeps the two in agreement.
pub fn secret_aad(repo_id: impl fmt::Display, name: &str) -> Vec<u8> {
    format!("secret:{repo_id}:{name}").into_bytes()
}

/// Associated data binding a sealed kubeconfig to its repository and environment, so
/// that a row copied to another environment does not open.
pub fn kubeconfig_aad(repo_id: impl fmt::Display, environment: &str) -> Vec<u8> {
    format!("kubeconfig:{repo_id}:{environment}").into_bytes()
}

/// Number of base62 characters in a token: 43 × log2(62) ≈ 256 bits of entropy.
const TOKEN_CHARS: usize = 43;

/// A new random token: `prefix` followed by 43 base62 characters (256 bits from the OS
/// CSPRNG). Base62 because it survives URLs, headers, shells and double-click selection;
/// the prefix (e.g. `slp_`) lets secret scanners recognise leaked tokens.
pub fn generate_token(prefix: &str) -> String {
    let mut token = String::with_capacity(prefix.len() + TOKEN_CHARS);
    token.push_str(prefix);
    token.extend(
        Alphanumeric
            .sample_iter(OsRng)
            .take(TOKEN_CHARS)
            .map(char::from),
    );
    token
}

/// The stored form of a token: SHA-256, lowercase hex.
///
/// A fast unsalted hash is right here, unlike for passwords: tokens are 256-bit random
/// strings, so there is nothing to brute-force or look up in a dictionary, and a
/// deterministic hash lets the server find a token's row by `WHERE token_hash = ?` (a unique
/// index) instead of trying a slow salted hash against every row. A database leak reveals
/// only hashes, which cannot be presented as tokens. (The index lookup itself is not
/// constant-time; that is fine, since learning part of a SHA-256 digest reveals nothing
/// usable about a token.)
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether `presented` hashes to `stored_hash`, compared in constant time so response timing
/// reveals nothing about how much of a hash matched.
pub fn verify_token(presented: &str, stored_hash: &str) -> bool {
    let computed = hash_token(presented);
    computed.as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

/// A new webhook signing secret: 32 random bytes as 64 hex characters. Hex because every
/// forge accepts it verbatim (GitHub/Gitea HMAC key, GitLab's `X-Gitlab-Token`).
pub fn generate_webhook_secret() -> String {
    let mut bytes = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(bytes.as_mut());
    hex::encode(bytes.as_ref())
}

/// Shortest password accepted: long enough that an online guess is hopeless, short
/// enough to type.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// An argon2id hash of `password` in PHC form (salt and parameters inside), with the
/// crate's defaults (19 MiB, 2 passes: OWASP's recommended minimum).
pub fn hash_password(password: &str) -> Result<String> {
    use argon2::PasswordHasher;
    let salt = argon2::password_hash::SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| CryptoError::Password(e.to_string()))
}

/// Whether `password` matches a stored [`hash_password`] hash (argon2 compares in
/// constant time). A malformed stored hash never matches.
pub fn verify_password(password: &str, stored: &str) -> bool {
    use argon2::PasswordVerifier;
    let Ok(parsed) = argon2::password_hash::PasswordHash::new(stored) else {
        return false;
    };
    argon2::Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}
