//! HTTP Signature `Authorization` headers (cloudapi/signature.rs): the header parser, the
//! keyId parser, the signed-string builder, the Date check and signature verification
//! against one stored key of every type Triton accepts.
//!
//! Invariants: no panic; a parsed header re-encoded the way the `triton` CLI writes it
//! parses back to the same thing; verification of a fuzzed signature never succeeds.

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use nereid_headnode::cloudapi::signature::{self, Authorization};
use nereid_headnode::cloudapi::sshkey::{self, PublicKey};

pub const DICTIONARY: &[&[u8]] = &[
    b"Signature ",
    b"keyId=\"",
    b"algorithm=\"",
    b"headers=\"",
    b"signature=\"",
    b"\",",
    b"(request-target)",
    b"request-line",
    b" date",
    b"rsa-sha256",
    b"rsa-sha1",
    b"ecdsa-sha256",
    b"ecdsa-sha384",
    b"ecdsa-sha512",
    b"ed25519-sha512",
    b"hmac-sha256",
    b"dsa-sha1",
    b"/alice/keys/",
    b"/users/bob/keys/",
    b"ac:57:0d:4e:5f:6a:7b:8c:9d:0e:1f:2a:3b:4c:5d:6e",
    b"%3A",
    b"MEUCIQ",
    b"==",
    b"Wed, 25 Nov 2026 14:54:03 GMT",
];

/// One stored key per type, parsed once.
fn keys() -> &'static [PublicKey] {
    static KEYS: OnceLock<Vec<PublicKey>> = OnceLock::new();
    KEYS.get_or_init(|| crate::targets::sshkey::SAMPLE_KEYS.iter().filter_map(|k| sshkey::parse_public_key(k).ok()).collect())
}

/// How the `triton` CLI writes a header.
pub fn encode(a: &Authorization) -> String {
    format!(
        "Signature keyId=\"{}\",algorithm=\"{}\",headers=\"{}\",signature=\"{}\"",
        a.key_id,
        a.algorithm,
        a.headers.join(" "),
        STANDARD.encode(&a.signature)
    )
}

pub fn run(data: &[u8]) {
    let text = super::text(data);
    // The same text as a Date header and as a keyId.
    let now = time::macros::datetime!(2026-11-25 14:54:03 UTC);
    let _ = signature::check_date(&text, now, 300);
    let _ = signature::parse_key_id(&text);

    let Ok(auth) = signature::parse_authorization(&text) else { return };
    assert!(!auth.key_id.is_empty() && !auth.algorithm.is_empty() && !auth.signature.is_empty(), "{auth:?}");
    assert!(!auth.headers.is_empty(), "headers default to date: {auth:?}");
    assert!(auth.headers.iter().all(|h| !h.is_empty() && *h == h.to_ascii_lowercase()), "{auth:?}");
    let again = signature::parse_authorization(&encode(&auth))
        .unwrap_or_else(|e| panic!("a parsed header re-encoded does not parse: {e} ({auth:?})"));
    assert_eq!(again, auth, "round-trip");
    crate::note_accepted();

    if let Ok(id) = signature::parse_key_id(&auth.key_id) {
        let (signature::KeyId::Account { login, key } | signature::KeyId::User { login, key, .. }) = id;
        assert!(!login.is_empty() && !key.is_empty());
    }
    let header = |name: &str| match name {
        "date" => Some("Wed, 25 Nov 2026 14:54:03 GMT".to_string()),
        "host" => Some(text.chars().take(64).collect()),
        _ => None,
    };
    let signed = signature::signing_string(&auth, "GET", "/alice/machines?limit=1", header);
    let data = signed.as_deref().unwrap_or("").as_bytes();
    for key in keys() {
        assert!(
            signature::verify(key, &auth.algorithm, data, &auth.signature).is_err(),
            "a fuzzed signature verified with the {} key",
            key.type_name()
        );
    }
}
