//! SSH public keys as CloudAPI and UFDS keep them: one OpenSSH line (`<type> <base64> [comment]`),
//! checked and fingerprinted the way `ssh-keygen -l` does.
//!
//! * `md5` is the form the `triton` CLI puts in its keyId and the one `GET /:a/keys` shows
//!   (`ac:57:0d:…`, lowercase colon hex of the MD5 of the raw key blob);
//! * `sha256` is `ssh-keygen -l`'s default (`SHA256:<unpadded base64>`), shown to humans.
//!
//! Accepted types are the ones the CLI can sign with and [`super::signature`] can verify:
//! `ssh-rsa` (at least 2048 bits), `ecdsa-sha2-nistp256/384/521` and `ssh-ed25519`. The blob is
//! parsed here (SSH wire format, RFC 4253 §6.6, RFC 5656 §3.1, RFC 8709 §4) rather than
//! through `ssh-key`, so that every refusal can say precisely what is wrong and P-521 works.

use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD, STANDARD_NO_PAD};
use md5::Md5;
use sha2::{Digest, Sha256};

/// The type names this module accepts, as they appear first on the line.
pub const SUPPORTED_TYPES: &str = "ssh-rsa, ecdsa-sha2-nistp256, ecdsa-sha2-nistp384, ecdsa-sha2-nistp521, ssh-ed25519";

/// The smallest RSA modulus accepted.
pub const MIN_RSA_BITS: usize = 2048;

/// The largest RSA modulus accepted (OpenSSH's own limit).
pub const MAX_RSA_BITS: usize = 16384;

/// Longest text [`parse_public_key`] looks at (an RSA-16384 line is about 2.8 KiB).
const MAX_TEXT: usize = 16 * 1024;

/// base64 as found in key files: padding optional, re-encoded canonically.
const LENIENT_B64: GeneralPurpose =
    GeneralPurpose::new(&base64::alphabet::STANDARD, GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent));

/// Why a public key was refused. The messages are meant for the person who pasted the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no key given: paste one OpenSSH public key line (the contents of a .pub file)")]
    Empty,
    #[error("this is a private key: give the .pub file (the public half) instead, and keep the private key secret")]
    PrivateKey,
    #[error("expected one public key line, got {0} lines")]
    MultipleLines(usize),
    #[error("not an OpenSSH public key line (\"<type> <base64> [comment]\"): {0}")]
    Format(String),
    #[error("unsupported key type {kind:?}; supported types are {SUPPORTED_TYPES}")]
    Unsupported { kind: String },
    #[error("the key data is not valid base64: {0}")]
    Base64(String),
    #[error("the key data is corrupt: {0}")]
    Corrupt(String),
    #[error("RSA keys must have at least {MIN_RSA_BITS} bits; this one has {bits}")]
    RsaTooSmall { bits: usize },
    #[error("RSA keys may have at most {MAX_RSA_BITS} bits; this one has {bits}")]
    RsaTooLarge { bits: usize },
}

/// An elliptic curve of an ECDSA key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EcCurve {
    P256,
    P384,
    P521,
}

impl EcCurve {
    /// Bits of the curve (what `ssh-keygen -l` prints).
    pub fn bits(self) -> usize {
        match self {
            EcCurve::P256 => 256,
            EcCurve::P384 => 384,
            EcCurve::P521 => 521,
        }
    }

    /// The SSH curve identifier (`nistp256`, …).
    pub fn ssh_name(self) -> &'static str {
        match self {
            EcCurve::P256 => "nistp256",
            EcCurve::P384 => "nistp384",
            EcCurve::P521 => "nistp521",
        }
    }
}

/// What kind of key, with its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    Rsa { bits: usize },
    Ecdsa { curve: EcCurve },
    Ed25519,
}

/// A checked SSH public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub kind: KeyKind,
    /// `<type> <base64>`, the base64 re-encoded canonically, without the comment.
    pub openssh: String,
    /// Whatever followed the key data on the line (may contain spaces), trimmed; often empty.
    pub comment: String,
    /// MD5 of the key blob, lowercase colon-separated hex (`ac:57:0d:…`), 16 bytes.
    pub md5: String,
    /// `SHA256:` and the unpadded base64 of the SHA-256 of the key blob.
    pub sha256: String,
}

/// The key itself, ready to verify signatures with (see [`PublicKey::material`]).
#[derive(Clone)]
pub enum KeyMaterial {
    Rsa(rsa::RsaPublicKey),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    P521(p521::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl PublicKey {
    /// `rsa`, `ecdsa` or `ed25519`: the prefix of the HTTP Signature algorithms it signs
    /// with, and what CloudAPI shows as the key's type.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            KeyKind::Rsa { .. } => "rsa",
            KeyKind::Ecdsa { .. } => "ecdsa",
            KeyKind::Ed25519 => "ed25519",
        }
    }

    /// The key size as `ssh-keygen -l` prints it.
    pub fn bits(&self) -> usize {
        match self.kind {
            KeyKind::Rsa { bits } => bits,
            KeyKind::Ecdsa { curve } => curve.bits(),
            KeyKind::Ed25519 => 256,
        }
    }

    /// The raw key blob (the base64-decoded second field).
    pub fn blob(&self) -> Result<Vec<u8>, KeyError> {
        let b64 = self.openssh.split(' ').nth(1).ok_or_else(|| KeyError::Format("no key data".into()))?;
        LENIENT_B64.decode(b64).map_err(|e| KeyError::Base64(e.to_string()))
    }

    /// The key, decoded again from [`PublicKey::openssh`] (cheap: no fingerprinting).
    pub fn material(&self) -> Result<KeyMaterial, KeyError> {
        let type_name = self.openssh.split(' ').next().unwrap_or_default();
        decode_blob(type_name, &self.blob()?).map(|(_, material)| material)
    }
}

/// Parses one OpenSSH public key line: surrounding whitespace and a trailing newline are
/// fine, and so is a comment with spaces; anything else is refused with a [`KeyError`]
/// saying why.
pub fn parse_public_key(text: &str) -> Result<PublicKey, KeyError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(KeyError::Empty);
    }
    if text.contains("PRIVATE KEY-----") || text.starts_with("PuTTY-User-Key-File-") {
        return Err(KeyError::PrivateKey);
    }
    if text.starts_with("---- BEGIN SSH2 PUBLIC KEY ----") {
        return Err(KeyError::Format("this is an RFC 4716 (SSH2) key: convert it with `ssh-keygen -i -f FILE`".into()));
    }
    if text.starts_with("-----BEGIN") {
        return Err(KeyError::Format("this is a PEM key: convert it with `ssh-keygen -i -m PKCS8 -f FILE`".into()));
    }
    if text.len() > MAX_TEXT {
        return Err(KeyError::Format(format!("{} bytes is too long for a public key", text.len())));
    }
    let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
    if lines > 1 {
        return Err(KeyError::MultipleLines(lines));
    }

    let mut fields = text.splitn(2, [' ', '\t']);
    let type_name = fields.next().unwrap_or_default();
    let rest = fields.next().unwrap_or_default().trim_start_matches([' ', '\t']);
    if !is_supported(type_name) {
        return Err(KeyError::Unsupported { kind: type_name.chars().take(40).collect() });
    }
    let (b64, comment) = rest.split_once([' ', '\t']).unwrap_or((rest, ""));
    if b64.is_empty() {
        return Err(KeyError::Format(format!("nothing follows the type {type_name:?}")));
    }
    let blob = LENIENT_B64.decode(b64).map_err(|e| KeyError::Base64(e.to_string()))?;
    let (kind, _) = decode_blob(type_name, &blob)?;

    let md5 = Md5::digest(&blob).iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    let sha256 = format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(&blob)));
    Ok(PublicKey { kind, openssh: format!("{type_name} {}", STANDARD.encode(&blob)), comment: comment.trim().to_string(), md5, sha256 })
}

fn is_supported(type_name: &str) -> bool {
    matches!(type_name, "ssh-rsa" | "ecdsa-sha2-nistp256" | "ecdsa-sha2-nistp384" | "ecdsa-sha2-nistp521" | "ssh-ed25519")
}

/// Decodes and checks a key blob whose line said `type_name`.
fn decode_blob(type_name: &str, blob: &[u8]) -> Result<(KeyKind, KeyMaterial), KeyError> {
    let mut r = Reader(blob);
    let inner = r.string("key type")?;
    if inner != type_name.as_bytes() {
        return Err(KeyError::Corrupt(format!(
            "the line says {type_name:?} but the key data says {:?}",
            String::from_utf8_lossy(inner).chars().take(40).collect::<String>()
        )));
    }
    let out = match type_name {
        "ssh-rsa" => {
            let e = r.mpint("RSA exponent")?;
            let n = r.mpint("RSA modulus")?;
            let bits = n.first().map_or(0, |top| n.len() * 8 - top.leading_zeros() as usize);
            if bits < MIN_RSA_BITS {
                return Err(KeyError::RsaTooSmall { bits });
            }
            if bits > MAX_RSA_BITS {
                return Err(KeyError::RsaTooLarge { bits });
            }
            if e.last().is_none_or(|low| low & 1 == 0) {
                return Err(KeyError::Corrupt("the RSA exponent is not odd".into()));
            }
            let key = rsa::RsaPublicKey::new_with_max_size(rsa::BigUint::from_bytes_be(n), rsa::BigUint::from_bytes_be(e), MAX_RSA_BITS)
                .map_err(|err| KeyError::Corrupt(format!("invalid RSA key: {err}")))?;
            (KeyKind::Rsa { bits }, KeyMaterial::Rsa(key))
        }
        "ecdsa-sha2-nistp256" | "ecdsa-sha2-nistp384" | "ecdsa-sha2-nistp521" => {
            let curve = match type_name {
                "ecdsa-sha2-nistp256" => EcCurve::P256,
                "ecdsa-sha2-nistp384" => EcCurve::P384,
                _ => EcCurve::P521,
            };
            let id = r.string("curve name")?;
            if id != curve.ssh_name().as_bytes() {
                return Err(KeyError::Corrupt(format!("a {type_name} key names curve {:?}", String::from_utf8_lossy(id))));
            }
            let point = r.string("curve point")?;
            let bad = |_| KeyError::Corrupt(format!("the point is not on curve {}", curve.ssh_name()));
            let material = match curve {
                EcCurve::P256 => KeyMaterial::P256(p256::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(bad)?),
                EcCurve::P384 => KeyMaterial::P384(p384::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(bad)?),
                EcCurve::P521 => KeyMaterial::P521(p521::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(bad)?),
            };
            (KeyKind::Ecdsa { curve }, material)
        }
        "ssh-ed25519" => {
            let raw = r.string("Ed25519 key")?;
            let raw: &[u8; 32] =
                raw.try_into().map_err(|_| KeyError::Corrupt(format!("an Ed25519 key has 32 bytes, this one {}", raw.len())))?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(raw).map_err(|_| KeyError::Corrupt("invalid Ed25519 point".into()))?;
            if key.is_weak() {
                return Err(KeyError::Corrupt("a weak (small-order) Ed25519 key".into()));
            }
            (KeyKind::Ed25519, KeyMaterial::Ed25519(key))
        }
        other => return Err(KeyError::Unsupported { kind: other.to_string() }),
    };
    if !r.0.is_empty() {
        return Err(KeyError::Corrupt(format!("{} unexpected bytes after the key", r.0.len())));
    }
    Ok(out)
}

/// SSH wire-format reader over a key blob.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// A `string`: u32 big-endian length, then that many bytes.
    fn string(&mut self, what: &str) -> Result<&'a [u8], KeyError> {
        let truncated = || KeyError::Corrupt(format!("truncated at the {what}"));
        let (len, rest) = self.0.split_first_chunk::<4>().ok_or_else(truncated)?;
        let len = u32::from_be_bytes(*len) as usize;
        if rest.len() < len {
            return Err(truncated());
        }
        let (s, rest) = rest.split_at(len);
        self.0 = rest;
        Ok(s)
    }

    /// A non-negative `mpint`, without its leading zero bytes.
    fn mpint(&mut self, what: &str) -> Result<&'a [u8], KeyError> {
        let v = self.string(what)?;
        if v.first().is_some_and(|b| b & 0x80 != 0) {
            return Err(KeyError::Corrupt(format!("the {what} is negative")));
        }
        let start = v.iter().position(|&b| b != 0).unwrap_or(v.len());
        Ok(&v[start..])
    }
}

#[cfg(test)]
mod tests {
    //! Keys made once with OpenSSH 9.2p1 (`ssh-keygen -t rsa -b 2048`, `-t ecdsa -b 256/384/521`,
    //! `-t ed25519`, plus a 1024-bit RSA and a DSA key to be refused); the expected fingerprints
    //! are `ssh-keygen -l -E md5 -f K.pub` and `ssh-keygen -l -E sha256 -f K.pub`.

    use super::*;

    const RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCUo7/OiO1uiKNqLu6YF2TGEfTYIJeadtddy8VZtEynxzFxxxKKfgt3geCIbzIeIfXz5pLQbGZeFeO0CwokYgU1HBdqKwwapia9hQsDmPBjRZnJPTCqZJC1lXfMUJ/GVr5MBV2MGeoBynyE+cV6K1emz7lyZ9Q8pu+JV7ffRYTUZZzRsuexyD99tRPViVUDxg8j1Gw3tP7k1Z47uiJplknJQcY9jxUt4asDAKtmoF+JZJYADieFjg/r0S8Xw2Tf2hdOIr++JayHvl6uJU+fG/dhtVrFzmWq/M0jrzU3GBMR7E43AaCjaPqTcNgUta9mkkHDQAHKFEC2JCI43e1MJDJZ alice@laptop rsa";
    const RSA_MD5: &str = "99:56:f4:f8:c6:26:6a:70:39:aa:5a:8e:12:20:87:95";
    const RSA_SHA256: &str = "SHA256:1dn5EUtxIIBAucBHtJnP3WF2z6v/WG8fJQLB4vveviE";

    const P256: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBNWfBm3s8uqoNHBUDR4Fqw5M6cCSeWkYz70aizlitVZUZyowvMf63bcLL/fSeCj74jd9BHC6M/AaiCsdIy2Vvzo= alice@laptop p256";
    const P256_MD5: &str = "ea:d1:01:9e:23:a3:2e:55:4d:1f:43:33:d2:cd:7b:a9";
    const P256_SHA256: &str = "SHA256:R7CFIz6DYc7floI9iIhvUOZEUjijroFtvckr0wwmHAk";

    const P384: &str = "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBAWd9XjzJKN2Kw/HJTzkFYHcDJ3w3gSQYh8WGJWu1dppZncTYbW2ro3OtLoJ7jgeECOyMtFJxmjY85gVR1mdrLikOIAaqmDDyDAgD8j4/FGv1tsL+yhbuCB1t23ncv0ezg== alice p384";
    const P384_MD5: &str = "54:c6:2c:8b:03:b0:ae:06:03:73:b2:af:bc:89:bf:44";
    const P384_SHA256: &str = "SHA256:FGzWgT0Zy++53aF7uaf23omlusTHs20R/qNBIkJPs+c";

    const P521: &str = "ecdsa-sha2-nistp521 AAAAE2VjZHNhLXNoYTItbmlzdHA1MjEAAAAIbmlzdHA1MjEAAACFBACfxrf2Tvo1cxxWGc7YWt27D9BNpI7y5uhan8eu14BsIUJpd5yMTSxEj63T5tkHr7bg8fQD2br9Q8Ww2cnfB2rUhwDlwXleO1yp5ExxwOovrwwakY+WSSWt4G1i2fG6dBMs/fRlzvhAtINjSMuoI/5JSKa8U/BIlGoRwu6x/5p0kJgwAA== alice p521";
    const P521_MD5: &str = "fd:25:e4:ff:88:ca:de:89:53:32:85:d8:0e:ae:d1:11";
    const P521_SHA256: &str = "SHA256:v3vat/wN7mnW7VgFfDJl67lmGoZIiRxCcjWg0Imqeig";

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMQZQncKA3f+UBqQcv9nXHbGRpqvc9lA0aijuluxkLmz alice@laptop ed25519 key";
    const ED25519_MD5: &str = "13:97:dc:25:61:83:cd:89:f7:29:d1:6f:c5:78:56:cf";
    const ED25519_SHA256: &str = "SHA256:Ps+IO7pRs1d+sqRyu6dWULawVaxy3ryMvJbkuDusioQ";

    const RSA_1024: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDNggmdwAwj//xWGslW3/Lr0S3XBSSCo89FcKZNfm0eLOR2zDTJFFc3SzoGJN/tEIuG9Np3Q92xN94FrHU8ljvBV/R5gPSxc1I3ee6s7wix7n3ROEz67cJpqqz3VvlUh+uyJV6a96mE+ob4ciF/mVU8b77f+7OgDaEXA8sqZIJ9fw== small";

    const DSA: &str = "ssh-dss AAAAB3NzaC1kc3MAAACBAPM6yBSrTbYN2VRSjuv17oHf+XbcOztL/hjXKoOIrdLsTHPf9ls6IVlQiE6xCdHzRWXsgCbC2MdmcojfoW/duxENKcR+nohWWmJqR6zU0MFFd9NaVBD34KV+i8ZanlEWFqYc5VaKm4GUcMH/v3mms/Nb5/jrKVYaZOGD0x7OIlntAAAAFQCs4BAwnJ1PEdOk1344lFGnnWkSDwAAAIBSaNiWf/n2njd8GfzEU2+y16dmV0v9kD1kj6o3Ja6G6x8eAIjVYW4hNFyXFyLz/EdlesFE+rEhq5scvlCdOh82lZoJWUJmyjo/XfIa4JMq5FFeler8o4loShR2yge70kNvG5+Gnxx7YkGoPoENpj7LyevOrkd8LbtTh9vZgxU6pwAAAIARgLvT6stXjNvu5k1aDR1lK7F7iGgKJcH0P7Z3oEZ4MpvOaLIPXwzfWrZHH7uVpcQGGK9GgCYxbXJINdGfOkG/gZHoraAY7ZT7o2UdogvBUsSrDKDyTziWjbmNlv9CzgDf+nCYXaiq06Wci2zSP4Xx6niwIUbxjEnhDB4Y4ICM7Q== root@vm";

    fn without_comment(line: &str) -> String {
        line.split(' ').take(2).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn real_keys_parse_with_ssh_keygen_fingerprints() {
        let cases = [
            (RSA, KeyKind::Rsa { bits: 2048 }, "rsa", 2048, RSA_MD5, RSA_SHA256, "alice@laptop rsa"),
            (P256, KeyKind::Ecdsa { curve: EcCurve::P256 }, "ecdsa", 256, P256_MD5, P256_SHA256, "alice@laptop p256"),
            (P384, KeyKind::Ecdsa { curve: EcCurve::P384 }, "ecdsa", 384, P384_MD5, P384_SHA256, "alice p384"),
            (P521, KeyKind::Ecdsa { curve: EcCurve::P521 }, "ecdsa", 521, P521_MD5, P521_SHA256, "alice p521"),
            (ED25519, KeyKind::Ed25519, "ed25519", 256, ED25519_MD5, ED25519_SHA256, "alice@laptop ed25519 key"),
        ];
        for (line, kind, type_name, bits, md5, sha256, comment) in cases {
            let k = parse_public_key(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(k.kind, kind);
            assert_eq!((k.type_name(), k.bits()), (type_name, bits));
            assert_eq!(k.md5, md5);
            assert_eq!(k.sha256, sha256);
            assert_eq!(k.comment, comment);
            assert_eq!(k.openssh, without_comment(line));
            assert!(k.material().is_ok());
            assert_eq!(k.blob().unwrap().len(), LENIENT_B64.decode(line.split(' ').nth(1).unwrap()).unwrap().len());
        }
    }

    #[test]
    fn whitespace_newlines_and_missing_comment_are_tolerated() {
        let k = parse_public_key(&format!("  {ED25519}\r\n\n")).unwrap();
        assert_eq!(k.comment, "alice@laptop ed25519 key");
        let bare = parse_public_key(&without_comment(P256)).unwrap();
        assert_eq!((bare.comment.as_str(), bare.md5.as_str()), ("", P256_MD5));
        let tabs = parse_public_key(&P256.replacen(' ', "\t", 2)).unwrap();
        assert_eq!((tabs.openssh, tabs.comment), (without_comment(P256), "alice@laptop p256".to_string()));
        // Padding dropped by some tools still gives the same key, re-encoded with padding.
        let unpadded = parse_public_key(&P521.replacen("== ", " ", 1)).unwrap();
        assert_eq!((unpadded.openssh, unpadded.md5), (without_comment(P521), P521_MD5.to_string()));
    }

    #[test]
    fn refusals_say_why() {
        assert_eq!(parse_public_key(" \n"), Err(KeyError::Empty));
        let private =
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ==\n-----END OPENSSH PRIVATE KEY-----\n";
        let e = parse_public_key(private).unwrap_err();
        assert_eq!(e, KeyError::PrivateKey);
        assert!(e.to_string().contains("this is a private key: give the .pub file"), "{e}");
        assert_eq!(parse_public_key("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----"), Err(KeyError::PrivateKey));

        let e = parse_public_key(DSA).unwrap_err();
        assert_eq!(e, KeyError::Unsupported { kind: "ssh-dss".into() });
        assert!(e.to_string().contains("\"ssh-dss\"") && e.to_string().contains("ssh-ed25519"), "{e}");
        let sk = "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29t x";
        assert!(matches!(parse_public_key(sk), Err(KeyError::Unsupported { .. })));

        let e = parse_public_key(RSA_1024).unwrap_err();
        assert_eq!(e, KeyError::RsaTooSmall { bits: 1024 });
        assert_eq!(e.to_string(), "RSA keys must have at least 2048 bits; this one has 1024");

        let e = parse_public_key(&format!("{RSA}\n{ED25519}\n")).unwrap_err();
        assert_eq!(e, KeyError::MultipleLines(2));

        assert!(matches!(parse_public_key("ssh-ed25519 AAAA!!!notbase64"), Err(KeyError::Base64(_))));
        assert!(matches!(parse_public_key("ssh-ed25519"), Err(KeyError::Format(_))));
        assert!(matches!(
            parse_public_key("---- BEGIN SSH2 PUBLIC KEY ----\nAAAA\n---- END SSH2 PUBLIC KEY ----"),
            Err(KeyError::Format(_))
        ));
        assert!(matches!(parse_public_key("-----BEGIN PUBLIC KEY-----\nMCow\n-----END PUBLIC KEY-----"), Err(KeyError::Format(_))));
    }

    #[test]
    fn corrupt_blobs_are_refused() {
        let blob = |line: &str| LENIENT_B64.decode(line.split(' ').nth(1).unwrap()).unwrap();
        let line = |t: &str, b: &[u8]| format!("{t} {}", STANDARD.encode(b));
        // Truncated.
        let b = blob(ED25519);
        assert!(matches!(parse_public_key(&line("ssh-ed25519", &b[..b.len() - 1])), Err(KeyError::Corrupt(_))));
        // Trailing garbage.
        let mut long = blob(P256);
        long.push(0);
        assert!(matches!(parse_public_key(&line("ecdsa-sha2-nistp256", &long)), Err(KeyError::Corrupt(_))));
        // The line's type disagrees with the blob's.
        let e = parse_public_key(&line("ssh-rsa", &blob(ED25519))).unwrap_err();
        assert!(e.to_string().contains("the line says \"ssh-rsa\" but the key data says \"ssh-ed25519\""), "{e}");
        // A point moved off the curve.
        let mut off = blob(P256);
        let last = off.len() - 1;
        off[last] ^= 1;
        let e = parse_public_key(&line("ecdsa-sha2-nistp256", &off)).unwrap_err();
        assert!(e.to_string().contains("not on curve nistp256"), "{e}");
        // A P-256 point labelled as P-384.
        let mut relabelled = blob(P256);
        relabelled[..23].copy_from_slice(&blob(P384)[..23]);
        relabelled[23..35].copy_from_slice(&blob(P384)[23..35]);
        assert!(matches!(parse_public_key(&line("ecdsa-sha2-nistp384", &relabelled)), Err(KeyError::Corrupt(_))));
    }
}
