//! HTTP Signature verification as sdc-cloudapi does it for the `triton` CLI 7.17.0
//! (compat/cloudapi.md §1.1–1.5); pure functions, the middleware is [`super::auth`].
//!
//! ```text
//! Authorization: Signature keyId="/alice/keys/ac:57:…",algorithm="rsa-sha256",
//!                          headers="(request-target) date",signature="<base64>"
//!
//! signed string:  (request-target): get /alice/machines?limit=1000&offset=0
//!                 date: Wed, 25 Nov 2026 14:54:03 GMT
//! ```
//!
//! * [`parse_authorization`] reads the header (http-signature 1.x; spaces after commas and
//!   the older form without `headers=`, which means `date`, are tolerated).
//! * [`parse_key_id`] takes `/login/keys/KEY` or `/login/users/USER/keys/KEY` only.
//! * [`signing_string`] rebuilds the signed text from the *raw* request target (`%3A`
//!   stays `%3A`); `date` must be among the signed headers, [`check_date`] keeps it within
//!   the allowed skew.
//! * [`verify`] checks the signature with the stored [`PublicKey`]: RSA PKCS#1 v1.5
//!   (`rsa-sha1/256/384/512`), ECDSA with DER `(r, s)` (`ecdsa-sha256/384/512`, the named
//!   hash over the key's curve), pure Ed25519 (`ed25519-sha512`, whose "sha512" is only a
//!   label, or bare `ed25519`). The algorithm's key type must be the key's.
//!
//! [`SigError`]'s messages are for the log: the client only ever learns 400 `InvalidHeader`
//! (unparseable header) or 401 `InvalidCredentials`.

use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use rsa::Pkcs1v15Sign;
use rsa::traits::PublicKeyParts;
use sha2::{Digest, Sha256, Sha384, Sha512};
use time::OffsetDateTime;

use crate::cloudapi::sshkey::{KeyError, KeyMaterial, PublicKey};

/// Why a signed request was refused (for the log; see the module doc for what clients see).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    /// No `Signature` scheme in the header (another scheme, or nothing).
    #[error("the Authorization header does not hold an HTTP Signature")]
    Missing,
    /// A `Signature` header that cannot be parsed.
    #[error("malformed Authorization header: {0}")]
    Malformed(String),
    /// A keyId not of the form `/login/keys/KEY` or `/login/users/USER/keys/KEY`.
    #[error("{0}")]
    BadKeyId(String),
    /// An algorithm not accepted, or not fitting the key.
    #[error("{0}")]
    Algorithm(String),
    /// A `Date` header that is not an RFC 1123 date.
    #[error("the Date header {0:?} is not an RFC 1123 date like \"Wed, 25 Nov 2026 14:54:03 GMT\"")]
    BadDate(String),
    /// The request's `Date` is too far from the server's clock (`skew_ms` > 0: ahead of it).
    #[error(
        "the request's Date is {}.{:03} s {} the server's clock, more than the {max_skew_secs} s allowed",
        skew_ms.unsigned_abs() / 1000,
        skew_ms.unsigned_abs() % 1000,
        if *skew_ms > 0 { "ahead of" } else { "behind" }
    )]
    ClockSkew { skew_ms: i64, max_skew_secs: i64 },
    /// The signature does not cover the `Date` header.
    #[error("the signature does not cover the Date header")]
    DateNotSigned,
    /// A header listed in `headers=` is not in the request.
    #[error("the signed header {0:?} is not in the request")]
    MissingHeader(String),
    /// The stored key could not be decoded.
    #[error("the stored key is unusable: {0}")]
    Key(#[from] KeyError),
    /// The signature is not valid for this key and data.
    #[error("bad signature: {0}")]
    BadSignature(String),
}

/// A parsed `Authorization: Signature …` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub key_id: String,
    /// Lowercased, as http-signature does.
    pub algorithm: String,
    /// Lowercased header names in signing order; `["date"]` when the header has no `headers=`.
    pub headers: Vec<String>,
    /// The decoded signature bytes.
    pub signature: Vec<u8>,
}

/// Whose key signed: an account's or one of its RBAC sub-users'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyId {
    Account { login: String, key: String },
    User { login: String, user: String, key: String },
}

/// Signatures come padded; be lenient about it anyway.
const LENIENT_B64: GeneralPurpose =
    GeneralPurpose::new(&base64::alphabet::STANDARD, GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent));

/// Parses an `Authorization` header value holding an HTTP Signature.
///
/// The CLI sends `Signature keyId="…",algorithm="…",headers="(request-target) date",signature="…"`
/// (that order, no spaces, every value quoted). Also accepted: spaces or tabs around the
/// commas, parameters in any order, unknown parameters (ignored), a missing or empty
/// `headers=` (then `date`). Refused: unquoted values, repeated parameters, anything after
/// the last parameter (http-signature 0.9 put the signature there, and signed a different
/// string), a signature that is not base64.
pub fn parse_authorization(value: &str) -> Result<Authorization, SigError> {
    let value = value.trim();
    let (scheme, params) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("signature") {
        return Err(SigError::Missing);
    }
    let mut key_id = None;
    let mut algorithm = None;
    let mut headers = None;
    let mut signature = None;
    let bad = |m: String| SigError::Malformed(m);
    let mut rest = params.trim_start();
    if rest.is_empty() {
        return Err(bad("no parameters after \"Signature\"".into()));
    }
    loop {
        let name_len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')).unwrap_or(rest.len());
        let (name, after) = rest.split_at(name_len);
        if name.is_empty() {
            return Err(bad(format!("expected a parameter name at {:?}", preview(rest))));
        }
        let Some(after) = after.strip_prefix("=\"") else {
            return Err(bad(format!("parameter {name:?} is not followed by =\"value\"")));
        };
        let Some((val, after)) = after.split_once('"') else {
            return Err(bad(format!("the value of {name:?} has no closing quote")));
        };
        let slot = match name {
            "keyId" => Some(&mut key_id),
            "algorithm" => Some(&mut algorithm),
            "headers" => Some(&mut headers),
            "signature" => Some(&mut signature),
            _ => None,
        };
        if let Some(slot) = slot {
            if slot.is_some() {
                return Err(bad(format!("parameter {name:?} appears twice")));
            }
            *slot = Some(val);
        }
        let after = after.trim_start_matches([' ', '\t']);
        if after.is_empty() {
            break;
        }
        let Some(after) = after.strip_prefix(',') else {
            return Err(bad(format!("expected ',' after parameter {name:?}, found {:?}", preview(after))));
        };
        rest = after.trim_start_matches([' ', '\t']);
    }
    let key_id = key_id.filter(|k| !k.is_empty()).ok_or_else(|| bad("keyId was not specified".into()))?;
    let algorithm = algorithm.filter(|a| !a.is_empty()).ok_or_else(|| bad("algorithm was not specified".into()))?;
    let signature = signature.filter(|s| !s.is_empty()).ok_or_else(|| bad("signature was not specified".into()))?;
    let signature = LENIENT_B64.decode(signature).map_err(|e| bad(format!("the signature is not base64: {e}")))?;
    let headers: Vec<String> = headers.unwrap_or_default().split_ascii_whitespace().map(str::to_ascii_lowercase).collect();
    Ok(Authorization {
        key_id: key_id.to_string(),
        algorithm: algorithm.to_ascii_lowercase(),
        headers: if headers.is_empty() { vec!["date".to_string()] } else { headers },
        signature,
    })
}

fn preview(s: &str) -> String {
    s.chars().take(20).collect()
}

/// Splits a keyId: exactly `/login/keys/KEY` or `/login/users/USER/keys/KEY`, every segment
/// non-empty. Segments are percent-decoded (the CLI sends the MD5 fingerprint with bare
/// colons; other clients may encode a key name).
pub fn parse_key_id(s: &str) -> Result<KeyId, SigError> {
    let shape = || SigError::BadKeyId("expected /LOGIN/keys/KEY or /LOGIN/users/USER/keys/KEY".into());
    let Some(path) = s.strip_prefix('/') else {
        return Err(shape());
    };
    let segs: Vec<&str> = path.split('/').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return Err(shape());
    }
    match segs.as_slice() {
        [login, "keys", key] => Ok(KeyId::Account { login: percent_decode(login)?, key: percent_decode(key)? }),
        [login, "users", user, "keys", key] => {
            Ok(KeyId::User { login: percent_decode(login)?, user: percent_decode(user)?, key: percent_decode(key)? })
        }
        _ => Err(shape()),
    }
}

fn percent_decode(s: &str) -> Result<String, SigError> {
    let bad = || SigError::BadKeyId(format!("bad percent-encoding in {s:?}"));
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).ok_or_else(bad)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// Rebuilds the string the client signed: one `name: value` line per signed header, in
/// the order of `auth.headers`, joined by `\n`. `(request-target)` is the lowercased method
/// and the raw path and query exactly as on the request line. Header values are trimmed
/// (Node, which made the upstream string, hands them over trimmed).
pub fn signing_string(
    auth: &Authorization,
    method: &str,
    raw_target: &str,
    header: impl Fn(&str) -> Option<String>,
) -> Result<String, SigError> {
    if !auth.headers.iter().any(|h| h == "date") {
        return Err(SigError::DateNotSigned);
    }
    let mut lines = Vec::with_capacity(auth.headers.len());
    for name in &auth.headers {
        match name.as_str() {
            "(request-target)" => lines.push(format!("(request-target): {} {raw_target}", method.to_ascii_lowercase())),
            "request-line" => return Err(SigError::Malformed("the draft-00 \"request-line\" header is not supported".into())),
            _ => {
                let value = header(name).ok_or_else(|| SigError::MissingHeader(name.clone()))?;
                lines.push(format!("{name}: {}", value.trim()));
            }
        }
    }
    Ok(lines.join("\n"))
}

/// Checks a `Date` header (RFC 1123, `Wed, 25 Nov 2026 14:54:03 GMT`) against `now`:
/// at most `max_skew_secs` either way, like http-signature's `clockSkew`.
pub fn check_date(date: &str, now: OffsetDateTime, max_skew_secs: i64) -> Result<(), SigError> {
    let date = date.trim();
    if date.is_empty() {
        return Err(SigError::MissingHeader("date".into()));
    }
    let when = parse_http_date(date).ok_or_else(|| SigError::BadDate(date.chars().take(64).collect()))?;
    let skew_ms = i64::try_from((when - now).whole_milliseconds()).unwrap_or(i64::MAX);
    if skew_ms.unsigned_abs() > max_skew_secs.unsigned_abs().saturating_mul(1000) {
        return Err(SigError::ClockSkew { skew_ms, max_skew_secs });
    }
    Ok(())
}

/// RFC 1123 with `GMT` (what the CLI and every browser send) or `UTC`, or RFC 2822 with a
/// numeric zone. Like Node's `Date`, which parses it upstream, the weekday is not checked.
fn parse_http_date(s: &str) -> Option<OffsetDateTime> {
    let gmt = s.strip_suffix(" UTC").map(|d| format!("{d} GMT"));
    let s = gmt.as_deref().unwrap_or(s);
    const RFC1123: &[time::format_description::BorrowedFormatItem<'static>] =
        time::macros::format_description!("[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT");
    time::PrimitiveDateTime::parse(s, RFC1123)
        .map(time::PrimitiveDateTime::assume_utc)
        .or_else(|_| OffsetDateTime::parse(s, &time::format_description::well_known::Rfc2822))
        .ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha1 => sha1::Sha1::digest(data).to_vec(),
            Hash::Sha256 => Sha256::digest(data).to_vec(),
            Hash::Sha384 => Sha384::digest(data).to_vec(),
            Hash::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    fn pkcs1v15(self) -> Pkcs1v15Sign {
        match self {
            // DigestInfo prefix for SHA-1 (RFC 8017 §9.2 note 1): the `sha1` crate is built
            // without its `oid` feature, so `Pkcs1v15Sign::new::<Sha1>()` is not available.
            Hash::Sha1 => Pkcs1v15Sign {
                hash_len: Some(20),
                prefix: Box::new([0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14]),
            },
            Hash::Sha256 => Pkcs1v15Sign::new::<Sha256>(),
            Hash::Sha384 => Pkcs1v15Sign::new::<Sha384>(),
            Hash::Sha512 => Pkcs1v15Sign::new::<Sha512>(),
        }
    }
}

/// Verifies `signature` over `data` with the stored `key`, for the header's `algorithm`.
pub fn verify(key: &PublicKey, algorithm: &str, data: &[u8], signature: &[u8]) -> Result<(), SigError> {
    let algorithm = algorithm.to_ascii_lowercase();
    let (family, hash) = match algorithm.as_str() {
        "rsa-sha1" => ("rsa", Some(Hash::Sha1)),
        "rsa-sha256" => ("rsa", Some(Hash::Sha256)),
        "rsa-sha384" => ("rsa", Some(Hash::Sha384)),
        "rsa-sha512" => ("rsa", Some(Hash::Sha512)),
        "ecdsa-sha256" => ("ecdsa", Some(Hash::Sha256)),
        "ecdsa-sha384" => ("ecdsa", Some(Hash::Sha384)),
        "ecdsa-sha512" => ("ecdsa", Some(Hash::Sha512)),
        "ed25519-sha512" | "ed25519" => ("ed25519", None),
        a if a.starts_with("dsa-") => return Err(SigError::Algorithm(format!("{a}: DSA keys are not supported"))),
        a if a.starts_with("hmac-") => return Err(SigError::Algorithm(format!("{a}: shared-secret signatures are not supported"))),
        a => return Err(SigError::Algorithm(format!("unsupported signature algorithm {:?}", preview(a)))),
    };
    if family != key.type_name() {
        return Err(SigError::Algorithm(format!("algorithm {algorithm} does not fit the stored {} key", key.type_name())));
    }
    let failed = || SigError::BadSignature("the signature does not verify".into());
    match (key.material()?, hash) {
        (KeyMaterial::Rsa(k), Some(hash)) => {
            // Fixed-length signatures are the norm; OpenSSL (hence upstream) also takes ones
            // whose leading zero bytes were dropped.
            let size = k.size();
            if signature.len() > size {
                return Err(SigError::BadSignature(format!("{} bytes is longer than the {size}-byte modulus", signature.len())));
            }
            let mut padded = vec![0u8; size - signature.len()];
            padded.extend_from_slice(signature);
            k.verify(hash.pkcs1v15(), &hash.digest(data), &padded).map_err(|_| failed())
        }
        (KeyMaterial::P256(k), Some(hash)) => {
            let sig = ecdsa_signature(signature, 32, p256::ecdsa::Signature::from_slice)?;
            k.verify_prehash(&prehash(hash, data, 32), &sig).map_err(|_| failed())
        }
        (KeyMaterial::P384(k), Some(hash)) => {
            let sig = ecdsa_signature(signature, 48, p384::ecdsa::Signature::from_slice)?;
            k.verify_prehash(&prehash(hash, data, 48), &sig).map_err(|_| failed())
        }
        (KeyMaterial::P521(k), Some(hash)) => {
            let sig = ecdsa_signature(signature, 66, p521::ecdsa::Signature::from_slice)?;
            k.verify_prehash(&prehash(hash, data, 66), &sig).map_err(|_| failed())
        }
        (KeyMaterial::Ed25519(k), None) => {
            let sig: &[u8; 64] = signature
                .try_into()
                .map_err(|_| SigError::BadSignature(format!("an Ed25519 signature has 64 bytes, this one {}", signature.len())))?;
            k.verify_strict(data, &ed25519_dalek::Signature::from_bytes(sig)).map_err(|_| failed())
        }
        _ => Err(SigError::Algorithm(format!("algorithm {algorithm} does not fit the stored {} key", key.type_name()))),
    }
}

/// The ECDSA message representative input: the hash, left-padded with zeros to the field
/// size when shorter. That is FIPS 186-4's "leftmost min(N, outlen) bits" for these curves
/// (P-521's 66-byte field holds any SHA-2 output whole), and lets P-521 take SHA-256, which
/// the `ecdsa` crate otherwise refuses as shorter than half the field. Longer hashes
/// (P-256 with SHA-512) are truncated to the field size by the crate.
fn prehash(hash: Hash, data: &[u8], field_len: usize) -> Vec<u8> {
    let digest = hash.digest(data);
    if digest.len() >= field_len {
        return digest;
    }
    let mut out = vec![0u8; field_len - digest.len()];
    out.extend_from_slice(&digest);
    out
}

/// Decodes a DER `SEQUENCE { INTEGER r, INTEGER s }` into the curve's fixed-size signature.
fn ecdsa_signature<S, E>(der: &[u8], field_len: usize, from_rs: impl Fn(&[u8]) -> Result<S, E>) -> Result<S, SigError> {
    let not_der = || SigError::BadSignature("an ECDSA signature must be DER SEQUENCE { r, s }".into());
    let (r, s) = der_rs(der).ok_or_else(not_der)?;
    if r.len() > field_len || s.len() > field_len {
        return Err(SigError::BadSignature("r or s is larger than the curve".into()));
    }
    let mut rs = vec![0u8; 2 * field_len];
    rs[field_len - r.len()..field_len].copy_from_slice(r);
    rs[2 * field_len - s.len()..].copy_from_slice(s);
    from_rs(&rs).map_err(|_| SigError::BadSignature("r or s is zero or not below the curve order".into()))
}

/// Strict DER (as OpenSSL checks it): minimal lengths, positive minimal integers, nothing
/// after the sequence. Returns r and s without their sign byte.
fn der_rs(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let body = der_tlv(der, 0x30).and_then(|(body, rest)| rest.is_empty().then_some(body))?;
    let (r, rest) = der_tlv(body, 0x02)?;
    let (s, rest) = der_tlv(rest, 0x02)?;
    if !rest.is_empty() {
        return None;
    }
    Some((der_uint(r)?, der_uint(s)?))
}

fn der_tlv(b: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, b) = b.split_first()?;
    let (&first, b) = b.split_first()?;
    if t != tag {
        return None;
    }
    let (len, b) = match first {
        0..=0x7f => (usize::from(first), b),
        0x81 => {
            let (&l, b) = b.split_first()?;
            (l >= 0x80).then_some((usize::from(l), b))?
        }
        0x82 => {
            let (l, b) = b.split_first_chunk::<2>()?;
            let l = usize::from(u16::from_be_bytes(*l));
            (l >= 0x100).then_some((l, b))?
        }
        _ => return None,
    };
    (b.len() >= len).then(|| b.split_at(len))
}

fn der_uint(v: &[u8]) -> Option<&[u8]> {
    match v {
        [] => None,
        [b, ..] if b & 0x80 != 0 => None,
        [0, next, ..] if next & 0x80 == 0 => None,
        [0, rest @ ..] if !rest.is_empty() => Some(rest),
        _ => Some(v),
    }
}

#[cfg(test)]
mod tests {
    //! Vectors made once, offline, by Node 20 (OpenSSL 3.0) signing the way http-signature
    //! 1.4.0 does for the `triton` CLI, with keys from `ssh-keygen` (OpenSSH 9.2p1):
    //!
    //! ```text
    //! ssh-keygen -t rsa -b 2048 -f k_rsa; -t ecdsa -b 256|384|521 -f k_p256|k_p384|k_p521; -t ed25519 -f k_ed
    //! for k in rsa p256 p384 p521; do cp k_$k k_$k.pem; ssh-keygen -p -N '' -m PKCS8 -f k_$k.pem; done
    //! node gen.js   # prints "<key> <hash> <data|data2> <base64 signature>"
    //!
    //! const crypto = require('crypto'), fs = require('fs');
    //! const date = 'Wed, 25 Nov 2026 14:54:03 GMT';
    //! const data = `(request-target): get /alice/machines?limit=1000&offset=0\ndate: ${date}`;
    //! const fp = '99:56:f4:f8:c6:26:6a:70:39:aa:5a:8e:12:20:87:95'; // ssh-keygen -l -E md5 -f k_rsa.pub
    //! const data2 = `(request-target): get /alice/keys/${encodeURIComponent(fp)}\ndate: ${date}`;
    //! function load(f) {
    //!   if (fs.existsSync(f + '.pem')) return crypto.createPrivateKey(fs.readFileSync(f + '.pem'));
    //!   // ssh-keygen cannot write Ed25519 as PKCS#8: take the seed from the unencrypted
    //!   // openssh-key-v1 private section (..."ssh-ed25519", pub(32), seed(32)||pub(32)...).
    //!   const b = Buffer.from(fs.readFileSync(f, 'utf8').replace(/-----[^-]+-----|\s/g, ''), 'base64');
    //!   const at = b.lastIndexOf('ssh-ed25519') + 11 + 4 + 32 + 4;
    //!   const der = Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), b.subarray(at, at + 32)]);
    //!   return crypto.createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
    //! }
    //! for (const [f, hash, d] of [['k_rsa', 'sha256', data], ['k_rsa', 'sha1', data], ['k_rsa', 'sha512', data],
    //!     ['k_rsa', 'sha256', data2], ['k_p256', 'sha256', data], ['k_p256', 'sha512', data], ['k_p384', 'sha384', data],
    //!     ['k_p521', 'sha512', data], ['k_p521', 'sha256', data], ['k_ed', null, data]]) {
    //!   const sig = crypto.sign(hash, Buffer.from(d), load(f));  // RSA: PKCS#1 v1.5; ECDSA: DER; Ed25519: pure
    //!   console.log(f, hash, d === data2 ? 'data2' : 'data', sig.toString('base64'));
    //! }
    //! ```
    //!
    //! The Ed25519 key's public half is taken from `k_ed.pub`, not from Node, so its vector
    //! also checks that the seed extraction and the `.pub` line agree.

    use super::*;
    use crate::cloudapi::sshkey::parse_public_key;

    const DATA: &str = "(request-target): get /alice/machines?limit=1000&offset=0\ndate: Wed, 25 Nov 2026 14:54:03 GMT";
    const DATE: &str = "Wed, 25 Nov 2026 14:54:03 GMT";
    const RSA_MD5: &str = "99:56:f4:f8:c6:26:6a:70:39:aa:5a:8e:12:20:87:95";

    const RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCUo7/OiO1uiKNqLu6YF2TGEfTYIJeadtddy8VZtEynxzFxxxKKfgt3geCIbzIeIfXz5pLQbGZeFeO0CwokYgU1HBdqKwwapia9hQsDmPBjRZnJPTCqZJC1lXfMUJ/GVr5MBV2MGeoBynyE+cV6K1emz7lyZ9Q8pu+JV7ffRYTUZZzRsuexyD99tRPViVUDxg8j1Gw3tP7k1Z47uiJplknJQcY9jxUt4asDAKtmoF+JZJYADieFjg/r0S8Xw2Tf2hdOIr++JayHvl6uJU+fG/dhtVrFzmWq/M0jrzU3GBMR7E43AaCjaPqTcNgUta9mkkHDQAHKFEC2JCI43e1MJDJZ alice@laptop rsa";
    const P256: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBNWfBm3s8uqoNHBUDR4Fqw5M6cCSeWkYz70aizlitVZUZyowvMf63bcLL/fSeCj74jd9BHC6M/AaiCsdIy2Vvzo= alice@laptop p256";
    const P384: &str = "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBAWd9XjzJKN2Kw/HJTzkFYHcDJ3w3gSQYh8WGJWu1dppZncTYbW2ro3OtLoJ7jgeECOyMtFJxmjY85gVR1mdrLikOIAaqmDDyDAgD8j4/FGv1tsL+yhbuCB1t23ncv0ezg== alice p384";
    const P521: &str = "ecdsa-sha2-nistp521 AAAAE2VjZHNhLXNoYTItbmlzdHA1MjEAAAAIbmlzdHA1MjEAAACFBACfxrf2Tvo1cxxWGc7YWt27D9BNpI7y5uhan8eu14BsIUJpd5yMTSxEj63T5tkHr7bg8fQD2br9Q8Ww2cnfB2rUhwDlwXleO1yp5ExxwOovrwwakY+WSSWt4G1i2fG6dBMs/fRlzvhAtINjSMuoI/5JSKa8U/BIlGoRwu6x/5p0kJgwAA== alice p521";
    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMQZQncKA3f+UBqQcv9nXHbGRpqvc9lA0aijuluxkLmz alice@laptop ed25519 key";

    const RSA_SHA256: &str = "PgmtTc2mDsJbe0pr2hyIv1tpGmWDA3cv79a2x7El28t6C8YvXaRgVQIFeZzrHfCHE3+R2Fo3larz93e3PUg3cDxge1MBg1iUqsl6s7+9e3ZiAWvA5TJpJ/iipFpsiTi/h3QzLB83i14Nq/64O3oImLGwCVlsKTqzY5n5hBcy+OhYpUPikb4BAykWb7hw1RyvUMJlpB1pDw6ltEyqDjgceVPxNK0sG9Maa8WVavyOgwTy7IJ8q4DAM21p9QVOM9n4Uj4BlmAKKr+tDcIb9dpbWzWj3J73ItJ3yCEDy9bYrhkplVeYA1aNiL8TtrHyKN92I8z6gYo+Q6pQUg9NpgO/DQ==";
    const RSA_SHA1: &str = "TBqyyTr1x8Y0HjXzZmBKuFhABq4ZknbhgKvdWxaaIBxvuuk+stlzwjWJA78PhHJNwQ/lk+i+TDqYqvUJnIOUoGWwtgO2ZD0WXXQ46EFASQbT7Q3wpiVToVb6i5jbaCrstKL9vstt9k39IHgNCSAq924h/qmp/BtcaZnSNNbFCOOaICRZ8QMmllrZLd+8JU8Ti+c+2wNQVV6hf2U8qLxVixezpc4nyd3GW+O9wwJCatzRIOuzX2O6ThWp53iAP+xs15Q/Y8SX63Czy18uVy+jKJrchfZYVID+5ZpyWUEVd2SMUS8Dz+UTHCLRnkA37P+hzNvBSSAqAYFyXKN8fzaakw==";
    const RSA_SHA512: &str = "isdbkP0FAamibErSicXtshTPuEcZtatudqbqElVbNkoRne6x8KR3mZYb3rQQ0U/VD51NkLH5347IVLFudhKTCWZrTpd3iMBqKFUtbif+o7HYTS8jSV10/+iDWBBRIeg4kVzRLp15sVBjVCZrVS+MS9V5H3Yx8h/c+zdMXFUWLJmm2wjAt9ZIk01pO8hJySJBf6mANaBylarQFAqw1mi9iaEEhwr1s0YOF8yxadaCAzjFxeazq8aHh5q8ZD1M8TsZAkNs0rUJ+mEl195i46TorVv3K+CB+9BL9YD0v7Jpq1MfRwhA9UdIkacIfMr1PF0Y7/FxBG1h3eUQ0b/7EPjwAw==";
    /// rsa-sha256 over `(request-target): get /alice/keys/99%3A56%3A…` (data2).
    const RSA_SHA256_KEYS: &str = "ahbvay3gesaJIvZy8Nu2bEGc2chA0Ol4uv6iZatdtqg7TacAaM0WPFIjyUEJ7zaxVWtqnxHkvfouE/8D6xcEorxci6Yx899gKrK4tbEGagQBbMTvhew9dPJdEG1Bs1oY8C9Gmgxdb16w4AHXrmKhraA8tCzLpzdFISWTuIFkHczAzpITXmgJqKVjjzera3MBUUPApuk+Y7IQOJAnX0fooQuUDaeeTn9BOVgNMJdoGVbiX25D3oJKz/YVVUu+ftJYXtR9rgF/JIJwCTdG/fR6eo01D4PU47kkvH8AE2ukAqMH1iDuDG4mWFMGXQDNohGkVeL8+nbgkRUXPIgDQYNqSg==";
    const P256_SHA256: &str = "MEYCIQC7AwAIVsT8Kv8abJ0/k5ItKnfSTN1Kl55xooQw1oBB0gIhALi7NnGfq3bXe5CV8NHRvTuJzn5x+2vnpEYQE6hDfYgv";
    const P256_SHA512: &str = "MEUCIQDBplRy5paXMMjYjp9Hw3m0CdHBAscQUzgdN8OnUVKF2QIgSApNzrrIeqtQeAvMk9nBiShMCLxcwItrfXLKcz3tdTo=";
    const P384_SHA384: &str = "MGQCMF08joXs/nub8m008KrFnOKaNJVRMNYLP8LzyknYWdviCCftnwgyF6b+qJkYLG2lcwIwUtarJjFgu+8NnlLcjYCVkaqgiIJkC9v38AecPJT0pNbbMBJMTCYYAczFdfrU+Fmt";
    const P521_SHA512: &str = "MIGIAkIA7v8rD7/gfGUD1Lg6xKJe45i7Jxy+CMItPc4sfeLeeXPlGIR5a1CQJBFwltmsAAMGk6DFmrwCLYRjEZBFqXxzeIYCQgH4r2D5wi/TBvGbsJJCHRG8lcmPJIRKYlIxrHP2jw2fmoJI0DVYE6iCDlQcta6bdwTUtCh9ncGsTw4RazNAPgttUQ==";
    const P521_SHA256: &str = "MIGHAkIAsOkpK1e2LpgtqTpU3p5sxAG5IBTcmlwaOtMckkafqJEVBBx05q50hkUdDSxVIFT4QC/+L1XuVm4276J7/kV8huUCQT6x6//MI7zkukOh7nbHrRzkKL2cOMA2Ei24pBOQqjaYVEqjh/1nhFWynMbEz65yDOMUF0f2AyConB12hoD45irg";
    const ED25519_SIG: &str = "xpqe+ydqKaT/n9fv2gmHRWurpJRvekjy4D5lUKJIKLS00KthHUDV9pukZnJyZjQGsyvYmF5wnd6LOvhj/6MCDA==";

    /// (key line, algorithm, base64 signature over DATA)
    const VECTORS: &[(&str, &str, &str)] = &[
        (RSA, "rsa-sha256", RSA_SHA256),
        (RSA, "rsa-sha1", RSA_SHA1),
        (RSA, "rsa-sha512", RSA_SHA512),
        (P256, "ecdsa-sha256", P256_SHA256),
        (P256, "ecdsa-sha512", P256_SHA512),
        (P384, "ecdsa-sha384", P384_SHA384),
        (P521, "ecdsa-sha512", P521_SHA512),
        (P521, "ecdsa-sha256", P521_SHA256),
        (ED25519, "ed25519-sha512", ED25519_SIG),
        (ED25519, "ed25519", ED25519_SIG),
    ];

    fn key(line: &str) -> PublicKey {
        parse_public_key(line).unwrap()
    }

    fn b64(s: &str) -> Vec<u8> {
        LENIENT_B64.decode(s).unwrap()
    }

    fn at(s: &str) -> OffsetDateTime {
        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
    }

    #[test]
    fn node_vectors_verify() {
        for (line, alg, sig) in VECTORS {
            verify(&key(line), alg, DATA.as_bytes(), &b64(sig)).unwrap_or_else(|e| panic!("{alg} with {line}: {e}"));
            // http-signature lowercases; so do we.
            verify(&key(line), &alg.to_ascii_uppercase(), DATA.as_bytes(), &b64(sig)).unwrap();
        }
    }

    #[test]
    fn any_flipped_bit_fails() {
        for (line, alg, sig) in VECTORS {
            let sig = b64(sig);
            let k = key(line);
            for i in [0, sig.len() / 2, sig.len() - 1] {
                for bit in [0x01, 0x80] {
                    let mut bad = sig.clone();
                    bad[i] ^= bit;
                    let e = verify(&k, alg, DATA.as_bytes(), &bad).unwrap_err();
                    assert!(matches!(e, SigError::BadSignature(_)), "{alg} byte {i} bit {bit}: {e:?}");
                }
            }
            let mut data = DATA.as_bytes().to_vec();
            data[20] ^= 1;
            assert!(matches!(verify(&k, alg, &data, &sig), Err(SigError::BadSignature(_))), "{alg}: altered data");
        }
    }

    #[test]
    fn algorithm_must_fit_the_key_and_the_signature() {
        let cases = [
            (RSA, "ecdsa-sha256", RSA_SHA256),
            (P256, "rsa-sha256", P256_SHA256),
            (ED25519, "ecdsa-sha512", ED25519_SIG),
            (P521, "ed25519-sha512", P521_SHA512),
        ];
        for (line, alg, sig) in cases {
            let e = verify(&key(line), alg, DATA.as_bytes(), &b64(sig)).unwrap_err();
            assert!(matches!(e, SigError::Algorithm(_)), "{alg}: {e:?}");
            assert!(e.to_string().contains("does not fit the stored"), "{e}");
        }
        // Right family, wrong hash: a clean refusal, not a panic.
        for (line, alg, sig) in [
            (RSA, "rsa-sha512", RSA_SHA256),
            (RSA, "rsa-sha384", RSA_SHA256),
            (P256, "ecdsa-sha384", P256_SHA256),
            (P521, "ecdsa-sha256", P521_SHA512),
        ] {
            assert!(matches!(verify(&key(line), alg, DATA.as_bytes(), &b64(sig)), Err(SigError::BadSignature(_))), "{alg}");
        }
        for alg in ["hmac-sha256", "dsa-sha1", "dsa-sha256", "ecdsa-sha1", "rsa-md5", "ed25519-sha256", "", "rsa-sha256 "] {
            let e = verify(&key(RSA), alg, DATA.as_bytes(), &b64(RSA_SHA256)).unwrap_err();
            assert!(matches!(e, SigError::Algorithm(_)), "{alg:?}: {e:?}");
        }
    }

    #[test]
    fn malformed_signatures_are_refused_cleanly() {
        let ed = key(ED25519);
        assert!(matches!(verify(&ed, "ed25519-sha512", DATA.as_bytes(), &b64(ED25519_SIG)[..63]), Err(SigError::BadSignature(_))));
        assert!(matches!(verify(&ed, "ed25519-sha512", DATA.as_bytes(), &[]), Err(SigError::BadSignature(_))));
        let p256 = key(P256);
        let der = b64(P256_SHA256);
        // Raw r||s instead of DER, trailing bytes, truncation, empty.
        let (r, s) = der_rs(&der).unwrap();
        let mut raw = vec![0u8; 64];
        raw[32 - r.len()..32].copy_from_slice(r);
        raw[64 - s.len()..].copy_from_slice(s);
        for bad in [raw, [der.clone(), vec![0]].concat(), der[..der.len() - 1].to_vec(), vec![]] {
            let e = verify(&p256, "ecdsa-sha256", DATA.as_bytes(), &bad).unwrap_err();
            assert!(matches!(e, SigError::BadSignature(_)), "{e:?}");
        }
        // A P-521-sized signature on a P-256 key.
        assert!(matches!(verify(&p256, "ecdsa-sha256", DATA.as_bytes(), &b64(P521_SHA256)), Err(SigError::BadSignature(_))));
        // RSA: longer than the modulus, or shortened (its first byte is not zero), fails.
        let rsa = key(RSA);
        for bad in [[b64(RSA_SHA256), vec![0]].concat(), [vec![0], b64(RSA_SHA256)].concat(), b64(RSA_SHA256)[1..].to_vec()] {
            assert!(matches!(verify(&rsa, "rsa-sha256", DATA.as_bytes(), &bad), Err(SigError::BadSignature(_))));
        }
    }

    #[test]
    fn der_is_parsed_strictly() {
        assert_eq!(der_rs(&[0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02]), Some((&[1u8][..], &[2u8][..])));
        assert_eq!(der_rs(&[0x30, 0x07, 0x02, 0x02, 0x00, 0x81, 0x02, 0x01, 0x02]), Some((&[0x81u8][..], &[2u8][..])));
        // Negative, non-minimal, empty integer; wrong outer length; long form for a short length.
        assert_eq!(der_rs(&[0x30, 0x06, 0x02, 0x01, 0x81, 0x02, 0x01, 0x02]), None);
        assert_eq!(der_rs(&[0x30, 0x07, 0x02, 0x02, 0x00, 0x01, 0x02, 0x01, 0x02]), None);
        assert_eq!(der_rs(&[0x30, 0x05, 0x02, 0x00, 0x02, 0x01, 0x02]), None);
        assert_eq!(der_rs(&[0x30, 0x07, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02]), None);
        assert_eq!(der_rs(&[0x30, 0x81, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02]), None);
        // The P-521 vectors use the two-byte length form (0x81 0x88 / 0x81 0x87).
        assert!(der_rs(&b64(P521_SHA512)).is_some() && der_rs(&b64(P521_SHA256)).is_some());
    }

    #[test]
    fn the_raw_target_is_what_was_signed() {
        let rsa = key(RSA);
        assert_eq!(rsa.md5, RSA_MD5);
        let header = format!(
            "Signature keyId=\"/alice/keys/{RSA_MD5}\",algorithm=\"rsa-sha256\",headers=\"(request-target) date\",signature=\"{RSA_SHA256_KEYS}\""
        );
        let auth = parse_authorization(&header).unwrap();
        let date = |name: &str| (name == "date").then(|| DATE.to_string());
        let raw = format!("/alice/keys/{}", RSA_MD5.replace(':', "%3A"));
        let signed = signing_string(&auth, "GET", &raw, date).unwrap();
        assert_eq!(signed, format!("(request-target): get {raw}\ndate: {DATE}"));
        verify(&rsa, &auth.algorithm, signed.as_bytes(), &auth.signature).unwrap();
        // The same request with its path decoded, or re-encoded in lowercase, does not verify.
        for target in [format!("/alice/keys/{RSA_MD5}"), raw.replace("%3A", "%3a")] {
            let other = signing_string(&auth, "GET", &target, date).unwrap();
            assert!(matches!(verify(&rsa, &auth.algorithm, other.as_bytes(), &auth.signature), Err(SigError::BadSignature(_))), "{target}");
        }
        // Nor does another method.
        let head = signing_string(&auth, "HEAD", &raw, date).unwrap();
        assert!(verify(&rsa, &auth.algorithm, head.as_bytes(), &auth.signature).is_err());
    }

    #[test]
    fn cli_header_end_to_end() {
        let header = format!(
            "Signature keyId=\"/alice/keys/ea:d1:01:9e:23:a3:2e:55:4d:1f:43:33:d2:cd:7b:a9\",algorithm=\"ecdsa-sha256\",headers=\"(request-target) date\",signature=\"{P256_SHA256}\""
        );
        let auth = parse_authorization(&header).unwrap();
        assert_eq!(
            auth,
            Authorization {
                key_id: "/alice/keys/ea:d1:01:9e:23:a3:2e:55:4d:1f:43:33:d2:cd:7b:a9".into(),
                algorithm: "ecdsa-sha256".into(),
                headers: vec!["(request-target)".into(), "date".into()],
                signature: b64(P256_SHA256),
            }
        );
        let k = key(P256);
        assert_eq!(
            parse_key_id(&auth.key_id).unwrap(),
            KeyId::Account { login: "alice".into(), key: k.md5.clone() },
            "the keyId names the key by its MD5 fingerprint"
        );
        let data = signing_string(&auth, "GET", "/alice/machines?limit=1000&offset=0", |name| match name {
            "date" => Some(format!("{DATE} ")),
            _ => None,
        })
        .unwrap();
        assert_eq!(data, DATA);
        verify(&k, &auth.algorithm, data.as_bytes(), &auth.signature).unwrap();
        check_date(DATE, at("2026-11-25T14:55:00Z"), 300).unwrap();
    }

    #[test]
    fn parse_authorization_variants() {
        let sig = "c2lnbmF0dXJl"; // "signature"
        let tolerant = [
            format!("Signature keyId=\"/a/keys/k\", algorithm=\"RSA-SHA256\", headers=\"(request-target) Date\", signature=\"{sig}\""),
            format!(
                "  Signature\tsignature=\"{sig}\" ,algorithm=\"rsa-sha256\",\theaders=\"(request-target)  date\",keyId=\"/a/keys/k\",created=\"1\"\r\n"
            ),
            format!("signature keyId=\"/a/keys/k\",algorithm=\"rsa-sha256\",headers=\"(request-target) date\",signature=\"{sig}\""),
        ];
        for h in &tolerant {
            let a = parse_authorization(h).unwrap_or_else(|e| panic!("{h}: {e}"));
            assert_eq!((a.key_id.as_str(), a.algorithm.as_str()), ("/a/keys/k", "rsa-sha256"));
            assert_eq!(a.headers, ["(request-target)", "date"]);
            assert_eq!(a.signature, b"signature");
        }
        // The legacy form: no headers= means the Date alone.
        for h in [
            format!("Signature keyId=\"/a/keys/k\",algorithm=\"rsa-sha256\",signature=\"{sig}\""),
            format!("Signature keyId=\"/a/keys/k\",algorithm=\"rsa-sha256\",headers=\"\",signature=\"{sig}\""),
        ] {
            let a = parse_authorization(&h).unwrap();
            assert_eq!(a.headers, ["date"]);
            assert_eq!(signing_string(&a, "get", "/x", |_| Some(DATE.into())).unwrap(), format!("date: {DATE}"));
        }
        // Padding-less base64 is fine too.
        assert_eq!(parse_authorization("Signature keyId=\"/a/keys/k\",algorithm=\"ed25519\",signature=\"YWI\"").unwrap().signature, b"ab");

        assert_eq!(parse_authorization(""), Err(SigError::Missing));
        assert_eq!(parse_authorization("Basic YWxpY2U6c2VjcmV0"), Err(SigError::Missing));
        assert_eq!(parse_authorization("Signatures keyId=\"/a/keys/k\""), Err(SigError::Missing));
        let malformed = [
            "Signature".to_string(),
            "Signature   ".to_string(),
            format!("Signature keyId=/a/keys/k,algorithm=\"rsa-sha256\",signature=\"{sig}\""),
            format!("Signature keyId=\"/a/keys/k,algorithm=\"rsa-sha256\",signature=\"{sig}"),
            format!("Signature algorithm=\"rsa-sha256\",signature=\"{sig}\""),
            format!("Signature keyId=\"\",algorithm=\"rsa-sha256\",signature=\"{sig}\""),
            format!("Signature keyId=\"/a/keys/k\",signature=\"{sig}\""),
            "Signature keyId=\"/a/keys/k\",algorithm=\"rsa-sha256\"".to_string(),
            "Signature keyId=\"/a/keys/k\",algorithm=\"rsa-sha256\",signature=\"not base64!\"".to_string(),
            format!("Signature keyId=\"/a/keys/k\",keyId=\"/b/keys/k\",algorithm=\"rsa-sha256\",signature=\"{sig}\""),
            format!("Signature keyId=\"/a/keys/k\" algorithm=\"rsa-sha256\",signature=\"{sig}\""),
            format!("Signature keyId=\"/a/keys/k\",algorithm=\"rsa-sha256\",signature=\"{sig}\","),
            format!("Signature keyId = \"/a/keys/k\",algorithm=\"rsa-sha256\",signature=\"{sig}\""),
            // http-signature 0.9: the signature after the parameters.
            format!("Signature keyId=\"/a/keys/k\",algorithm=\"rsa-sha256\" {sig}"),
        ];
        for h in &malformed {
            let e = parse_authorization(h).unwrap_err();
            assert!(matches!(e, SigError::Malformed(_)), "{h}: {e:?}");
        }
    }

    #[test]
    fn key_id_forms() {
        assert_eq!(parse_key_id("/alice/keys/ac:57:0d:1e").unwrap(), KeyId::Account { login: "alice".into(), key: "ac:57:0d:1e".into() });
        assert_eq!(
            parse_key_id("/alice/users/bob/keys/99:56:f4").unwrap(),
            KeyId::User { login: "alice".into(), user: "bob".into(), key: "99:56:f4".into() }
        );
        assert_eq!(parse_key_id("/alice/keys/my%20laptop").unwrap(), KeyId::Account { login: "alice".into(), key: "my laptop".into() });
        assert_eq!(parse_key_id("/alice/keys/ac%3A57").unwrap(), KeyId::Account { login: "alice".into(), key: "ac:57".into() });
        for bad in [
            "",
            "/",
            "alice/keys/k",
            "/alice/keys",
            "/alice/keys/",
            "//keys/k",
            "/alice/key/k",
            "/alice/keys/k/",
            "/alice/keys/k/extra",
            "/alice/users/bob/keys",
            "/alice/users/bob/keys/",
            "/alice/users//keys/k",
            "/alice/user/bob/keys/k",
            "/alice/users/bob/key/k",
            "/alice/users/bob/keys/k/x",
            "/alice/keys/bad%zz",
            "/alice/keys/bad%2",
            "/alice/keys/%ff",
        ] {
            let e = parse_key_id(bad).unwrap_err();
            assert!(matches!(e, SigError::BadKeyId(_)), "{bad:?}: {e:?}");
        }
    }

    #[test]
    fn signing_string_follows_the_header_list() {
        let auth = |headers: &[&str]| Authorization {
            key_id: "/a/keys/k".into(),
            algorithm: "rsa-sha256".into(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            signature: vec![1],
        };
        let h = |name: &str| match name {
            "date" => Some(DATE.to_string()),
            "content-md5" => Some("1B2M2Y8AsgTpgAmY7PhCfg==".to_string()),
            _ => None,
        };
        assert_eq!(
            signing_string(&auth(&["date", "(request-target)", "content-md5"]), "POST", "/my/machines?as-role=a,b", h).unwrap(),
            format!("date: {DATE}\n(request-target): post /my/machines?as-role=a,b\ncontent-md5: 1B2M2Y8AsgTpgAmY7PhCfg==")
        );
        assert_eq!(signing_string(&auth(&["(request-target)"]), "GET", "/", h), Err(SigError::DateNotSigned));
        assert_eq!(signing_string(&auth(&[]), "GET", "/", h), Err(SigError::DateNotSigned));
        assert_eq!(signing_string(&auth(&["date", "x-extra"]), "GET", "/", h), Err(SigError::MissingHeader("x-extra".into())));
        assert_eq!(signing_string(&auth(&["date"]), "GET", "/", |_| None), Err(SigError::MissingHeader("date".into())));
        assert!(matches!(signing_string(&auth(&["request-line", "date"]), "GET", "/", h), Err(SigError::Malformed(_))));
    }

    #[test]
    fn date_skew() {
        let now = at("2026-11-25T14:54:03Z");
        check_date(DATE, now, 300).unwrap();
        check_date(DATE, at("2026-11-25T14:59:03Z"), 300).unwrap();
        check_date(DATE, at("2026-11-25T14:49:03Z"), 300).unwrap();
        check_date(DATE, at("2026-11-25T14:58:02.999Z"), 300).unwrap();
        check_date("Wed, 25 Nov 2026 14:54:03 +0000", now, 300).unwrap();
        check_date("Wed, 25 Nov 2026 14:54:03 UTC", now, 300).unwrap();
        check_date("Wed, 25 Nov 2026 15:54:03 +0100", now, 300).unwrap();
        check_date("Thu, 25 Nov 2026 14:54:03 GMT", now, 300).unwrap();

        let e = check_date(DATE, at("2026-11-25T14:59:03.5Z"), 300).unwrap_err();
        assert_eq!(e, SigError::ClockSkew { skew_ms: -300_500, max_skew_secs: 300 });
        assert_eq!(e.to_string(), "the request's Date is 300.500 s behind the server's clock, more than the 300 s allowed");
        let e = check_date(DATE, at("2026-11-25T14:47:13Z"), 300).unwrap_err();
        assert_eq!(e, SigError::ClockSkew { skew_ms: 410_000, max_skew_secs: 300 });
        assert!(e.to_string().contains("410.000 s ahead of"), "{e}");
        let e = check_date("Wed, 25 Nov 2020 14:54:03 GMT", now, 300).unwrap_err();
        assert!(matches!(e, SigError::ClockSkew { skew_ms, .. } if skew_ms < -6 * 365 * 86_400_000), "{e:?}");

        assert_eq!(check_date("", now, 300), Err(SigError::MissingHeader("date".into())));
        for garbage in [
            "yesterday",
            "2026-11-25T14:54:03Z",
            "Wed, 25 Nov 2026 14:54:03",
            "Wed, 32 Nov 2026 14:54:03 GMT",
            "Wed, 25 Nov 2026 25:54:03 GMT",
        ] {
            assert!(matches!(check_date(garbage, now, 300), Err(SigError::BadDate(_))), "{garbage}");
        }
    }
}
