//! Untrusted tokens through `Verifier::verify` with a fixed HS256 secret.
//! Half the inputs are used as a raw token; the other half become a token
//! with a valid signature over arbitrary header and claims bytes, so the
//! claim checks behind the signature get fuzzed too. Checks: no panic, an
//! accepted token has a subject, and an error never quotes the token.

#![no_main]

use std::sync::OnceLock;

use herald::auth::{JwtSettings, Verifier};
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzz-only-secret-0123456789abcdef0123456789";

fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("herald-fuzz-secret-{}", std::process::id()));
        std::fs::write(&path, SECRET).expect("write the secret");
        let verifier = Verifier::load(&JwtSettings {
            secret_file: Some(path.clone()),
            ..JwtSettings::default()
        })
        .expect("load the secret");
        let _ = std::fs::remove_file(&path);
        verifier
    })
}

fn b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len() * 4 / 3 + 3);
    for chunk in bytes.chunks(3) {
        let mut acc = 0u32;
        for (i, b) in chunk.iter().enumerate() {
            acc |= u32::from(*b) << (16 - 8 * i);
        }
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(acc >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// `header.claims.signature`, signed with the secret; the input is split at
/// its first NUL into header and claims bytes (no NUL: a fixed header).
fn signed(data: &[u8]) -> String {
    let (header, claims) = match data.iter().position(|&b| b == 0) {
        Some(at) => (b64(&data[..at]), b64(&data[at + 1..])),
        None => (b64(br#"{"alg":"HS256","typ":"JWT"}"#), b64(data)),
    };
    let message = format!("{header}.{claims}");
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET),
        Algorithm::HS256,
    )
    .expect("HMAC signing cannot fail");
    format!("{message}.{signature}")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = if mode % 2 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        signed(rest)
    };
    match verifier().verify(&token) {
        Ok(identity) => assert!(
            !identity.sub.is_empty(),
            "accepted a token without a subject"
        ),
        Err(e) => {
            if token.len() >= 24 {
                assert!(!e.to_string().contains(&token), "an error quotes the token");
            }
        }
    }
});
