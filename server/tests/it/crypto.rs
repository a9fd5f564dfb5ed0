//! Secrets at rest and tokens: `server::crypto`.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::Engine as _;
use server::crypto::{
    CryptoError, SECRET_KEY_ENV, SecretBox, SecretKey, generate_token, generate_webhook_secret,
    hash_token, secret_aad, verify_token,
};

fn write_key_file(path: &Path, contents: &[u8], mode: u32) {
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn seal_then_open_round_trips() {
    let sbox = SecretBox::new(&SecretKey::generate());
    let aad = secret_aad(42, "DEPLOY_TOKEN");
    for plaintext in [
        &b""[..],
        b"x",
        b"hunter2",
        &[0u8, 255, 10, 13][..],
        &[7u8; 100_000][..],
    ] {
        let sealed = sbox.seal(plaintext, &aad);
        assert_eq!(sealed[0], 1, "format version byte");
        assert_eq!(sealed.len(), 1 + 24 + plaintext.len() + 16);
        assert_eq!(sbox.open(&sealed, &aad).unwrap().as_slice(), plaintext);
    }
}

#[test]
fn every_seal_uses_a_fresh_nonce() {
    let sbox = SecretBox::new(&SecretKey::generate());
    let a = sbox.seal(b"same", b"aad");
    let b = sbox.seal(b"same", b"aad");
    assert_ne!(a[1..25], b[1..25], "nonces must differ");
    assert_ne!(a, b);
}

#[test]
fn a_ciphertext_copied_to_another_row_does_not_open() {
    let sbox = SecretBox::new(&SecretKey::generate());
    let sealed = sbox.seal(b"prod-password", &secret_aad(1, "DB_PASSWORD"));
    // Another repository's row, another secret's row, and no context at all.
    for aad in [
        secret_aad(2, "DB_PASSWORD"),
        secret_aad(1, "OTHER"),
        Vec::new(),
    ] {
        let err = sbox.open(&sealed, &aad).unwrap_err();
        assert!(matches!(err, CryptoError::Decrypt), "{err:?}");
    }
    assert_eq!(
        sbox.open(&sealed, &secret_aad(1, "DB_PASSWORD"))
            .unwrap()
            .as_slice(),
        b"prod-password"
    );
}

#[test]
fn any_modified_byte_is_rejected() {
    let sbox = SecretBox::new(&SecretKey::generate());
    let sealed = sbox.seal(b"top secret value", b"ctx");
    for i in 0..sealed.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut tampered = sealed.clone();
            tampered[i] ^= flip;
            assert!(
                sbox.open(&tampered, b"ctx").is_err(),
                "byte {i} ^ {flip:#x} went unnoticed"
            );
        }
    }
}

#[test]
fn truncated_or_extended_input_is_an_error_not_a_panic() {
    let sbox = SecretBox::new(&SecretKey::generate());
    let sealed = sbox.seal(b"value", b"ctx");
    for len in 0..sealed.len() {
        assert!(sbox.open(&sealed[..len], b"ctx").is_err(), "length {len}");
    }
    let mut longer = sealed.clone();
    longer.push(0);
    assert!(sbox.open(&longer, b"ctx").is_err());
    assert!(matches!(
        sbox.open(&[], b"ctx"),
        Err(CryptoError::Malformed(_))
    ));
    assert!(matches!(
        sbox.open(&[9; 64], b"ctx"),
        Err(CryptoError::UnsupportedVersion(9))
    ));
}

#[test]
fn another_key_cannot_open() {
    let sealed = SecretBox::new(&SecretKey::generate()).seal(b"value", b"ctx");
    let err = SecretBox::new(&SecretKey::generate())
        .open(&sealed, b"ctx")
        .unwrap_err();
    assert!(matches!(err, CryptoError::Decrypt));
    // The message must not hint at which part was wrong, nor contain data.
    assert_eq!(
        err.to_string(),
        "decryption failed: wrong key, wrong context, or corrupted data"
    );
}

#[test]
fn debug_output_never_contains_the_key() {
    let key = SecretKey::from_bytes([0xAB; 32]);
    let b64 = key.to_base64();
    for shown in [
        format!("{key:?}"),
        format!("{:?}", SecretBox::new(&key)),
        format!("{key:#?}"),
    ] {
        assert!(shown.contains("redacted"), "{shown}");
        assert!(!shown.contains(b64.as_str()) && !shown.to_lowercase().contains("abab"));
    }
}

#[test]
fn load_or_create_makes_a_private_key_file_and_reuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/secret.key");
    let created = SecretKey::load_or_create(&path).unwrap();
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "new key file mode {mode:o}");
    // Base64 text, so it can be copied into SLIPWAY_SECRET_KEY or a Kubernetes Secret.
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(
        SecretKey::from_base64(&text).unwrap().fingerprint(),
        created.fingerprint()
    );

    let loaded = SecretKey::load_or_create(&path).unwrap();
    assert_eq!(loaded.fingerprint(), created.fingerprint());
    // And what one sealed, the other opens.
    let sealed = SecretBox::new(&created).seal(b"v", b"a");
    assert_eq!(
        SecretBox::new(&loaded)
            .open(&sealed, b"a")
            .unwrap()
            .as_slice(),
        b"v"
    );
    // No temporary files left behind.
    let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("secret.key")]);
}

#[test]
fn concurrent_first_starts_agree_on_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret.key");
    let fingerprints: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| SecretKey::load_or_create(&path).unwrap().fingerprint()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        fingerprints.iter().all(|f| f == &fingerprints[0]),
        "{fingerprints:?}"
    );
}

#[test]
fn a_key_file_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret.key");
    let key = SecretKey::generate();
    for mode in [0o644, 0o640, 0o604, 0o660, 0o602] {
        write_key_file(&path, key.to_base64().as_bytes(), mode);
        for result in [
            SecretKey::load_or_create(&path),
            SecretKey::from_file(&path),
        ] {
            let err = result.unwrap_err();
            assert!(
                matches!(err, CryptoError::InsecureKeyFile { .. }),
                "{err:?}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("chmod 600 {}", path.display()))
                    && msg.contains(&format!("{mode:03o}")),
                "{msg}"
            );
        }
    }
    write_key_file(&path, key.to_base64().as_bytes(), 0o400);
    assert_eq!(
        SecretKey::from_file(&path).unwrap().fingerprint(),
        key.fingerprint()
    );
}

#[test]
fn key_files_hold_raw_bytes_or_base64() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret.key");
    let mut raw = [0u8; 32];
    raw.iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = (i as u8).wrapping_mul(37) ^ 0x80);
    let expected = SecretKey::from_bytes(raw).fingerprint();

    write_key_file(&path, &raw, 0o600);
    assert_eq!(SecretKey::from_file(&path).unwrap().fingerprint(), expected);

    for text in [
        base64::engine::general_purpose::STANDARD.encode(raw) + "\n",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw),
        format!(
            "  {}  \r\n",
            base64::engine::general_purpose::STANDARD.encode(raw)
        ),
    ] {
        write_key_file(&path, text.as_bytes(), 0o600);
        assert_eq!(
            SecretKey::from_file(&path).unwrap().fingerprint(),
            expected,
            "{text:?}"
        );
    }

    for (contents, needle) in [
        (&b"correct horse battery staple!!!!"[..], "passphrase"),
        (b"dG9vIHNob3J0", "decodes to 9 bytes"),
        (b"not base64 at all", "not valid base64"),
        (b"", "it is empty"),
        (b" \n", "it is empty"),
        (&[0xffu8; 33][..], "neither a raw key nor text"),
    ] {
        write_key_file(&path, contents, 0o600);
        let err = SecretKey::from_file(&path).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, CryptoError::InvalidKey { .. }), "{msg}");
        assert!(msg.contains(needle) && msg.contains("secret.key"), "{msg}");
    }

    let err = SecretKey::from_file(&dir.path().join("missing")).unwrap_err();
    assert!(matches!(err, CryptoError::KeyFile { .. }));
}

/// What `from_env` and `from_env_or_file` give for a value of `SLIPWAY_SECRET_KEY`:
/// `env-only|either` fingerprints, or the error text. The value is passed in rather than
/// set in the process environment, which is global to the parallel tests (and `set_var`
/// is `unsafe` in edition 2024, which the workspace forbids).
fn key_for_env_value(value: &str, key_file: &Path) -> String {
    let value = Some(std::ffi::OsStr::new(value));
    let env_only = match SecretKey::from_env_value(value) {
        Ok(Some(key)) => key.fingerprint(),
        Ok(None) => "none".into(),
        Err(e) => format!("error: {e}"),
    };
    let either = match SecretKey::from_env_value_or_file(value, key_file) {
        Ok(key) => key.fingerprint(),
        Err(e) => format!("error: {e}"),
    };
    format!("{env_only}|{either}")
}

#[test]
fn key_from_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret.key");
    let file_key = SecretKey::load_or_create(&file).unwrap();
    let env_key = SecretKey::generate();

    // Set: the environment wins over the key file.
    let result = key_for_env_value(&env_key.to_base64(), &file);
    assert_eq!(result, format!("{0}|{0}", env_key.fingerprint()));

    // Empty: as if unset, the key file is used.
    let result = key_for_env_value("", &file);
    assert_eq!(result, format!("none|{}", file_key.fingerprint()));

    // Invalid: a clear error naming the variable, and no fallback to the file (an operator
    // who set the variable meant it).
    let result = key_for_env_value("bm90IGEga2V5", &file);
    assert!(
        result.starts_with("error: ")
            && result.contains(SECRET_KEY_ENV)
            && result.contains("decodes to 9 bytes"),
        "{result}"
    );
    assert!(result.ends_with("decodes to 9 bytes, not 32 (expected 32 raw bytes or their base64; generate one with `head -c 32 /dev/urandom | base64`)"), "{result}");
}

#[test]
fn tokens_are_prefixed_random_base62() {
    let token = generate_token("slp_");
    let body = token.strip_prefix("slp_").unwrap();
    assert_eq!(body.len(), 43);
    assert!(body.bytes().all(|b| b.is_ascii_alphanumeric()), "{token}");
    let many: std::collections::HashSet<String> =
        (0..1000).map(|_| generate_token("slp_")).collect();
    assert_eq!(many.len(), 1000);

    let webhook = generate_webhook_secret();
    assert_eq!(webhook.len(), 64);
    assert!(webhook.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_ne!(webhook, generate_webhook_secret());
}

#[test]
fn tokens_are_found_by_their_hash() {
    // SHA-256 test vector, so stored hashes stay comparable across releases.
    assert_eq!(
        hash_token("abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );

    // What the store does: keep only hashes, look the presented token up by its hash.
    let tokens: Vec<String> = (0..100).map(|_| generate_token("slp_")).collect();
    let table: HashMap<String, usize> = tokens
        .iter()
        .enumerate()
        .map(|(user, t)| (hash_token(t), user))
        .collect();
    for (user, token) in tokens.iter().enumerate() {
        let hash = hash_token(token);
        assert_eq!(table.get(&hash), Some(&user));
        assert!(verify_token(token, &hash));
        assert!(!hash.contains(token.as_str()));
    }
    assert_eq!(table.get(&hash_token(&generate_token("slp_"))), None);

    let stored = hash_token(&tokens[0]);
    assert!(!verify_token(&tokens[1], &stored));
    assert!(!verify_token("", &stored));
    assert!(!verify_token(&tokens[0], ""));
    assert!(!verify_token(&tokens[0], &stored[..63]));
    assert!(!verify_token(&tokens[0], &stored.to_uppercase()));
    let mut almost = tokens[0].clone();
    almost.push('x');
    assert!(!verify_token(&almost, &stored));
}
