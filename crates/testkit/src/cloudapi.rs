//! A CloudAPI client for tests that signs requests itself (Ed25519, as the `triton` CLI
//! signs with an Ed25519 key), and can sign them wrongly on purpose: a stale `Date`, a
//! flipped signature bit, another account's path. The real `triton` CLI is driven by
//! [`crate::triton`]; this client is for what the CLI cannot be made to do.

use anyhow::{Context, Result};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer as _, SigningKey};
use serde_json::Value;

/// An account's Ed25519 key.
pub struct Key {
    signing: SigningKey,
}

impl Key {
    /// A key from a seed byte (deterministic keys keep test failures reproducible).
    pub fn from_seed(seed: u8) -> Self {
        Key { signing: SigningKey::from_bytes(&[seed; 32]) }
    }

    /// The OpenSSH public key line.
    pub fn openssh(&self) -> String {
        let mut blob = Vec::new();
        for part in [b"ssh-ed25519".as_slice(), self.signing.verifying_key().as_bytes().as_slice()] {
            blob.extend_from_slice(&u32::try_from(part.len()).unwrap_or(0).to_be_bytes());
            blob.extend_from_slice(part);
        }
        format!("ssh-ed25519 {} test@nereid", B64.encode(blob))
    }

    /// The MD5 fingerprint (colon hex) the CLI puts in its keyId.
    pub fn md5(&self) -> String {
        let line = self.openssh();
        let blob = B64.decode(line.split(' ').nth(1).unwrap_or_default()).unwrap_or_default();
        let digest = <md5::Md5 as md5::Digest>::digest(&blob);
        digest.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
    }
}

/// How to (mis)sign a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signing {
    Good,
    /// No Authorization header.
    None,
    /// A signature with one bit flipped.
    Corrupt,
    /// Signed correctly, with a Date `secs` in the past.
    StaleBy(i64),
}

/// An answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

/// Signs and sends CloudAPI requests as one account.
pub struct Client {
    pub url: String,
    pub login: String,
    pub key: Key,
    http: reqwest::Client,
}

impl Client {
    pub fn new(url: &str, login: &str, key: Key) -> Self {
        // Answers are looked at as they come (a 302 is a 302, as the CLI sees it), so redirects are not followed.
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap_or_default();
        Client { url: url.trim_end_matches('/').to_string(), login: login.to_string(), key, http }
    }

    /// Sends `method path` (path as it goes on the request line, already encoded).
    pub async fn send(&self, method: &str, path: &str, body: Option<&Value>, signing: Signing) -> Result<Answer> {
        let mut req = self.signed(method, path, signing)?;
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(serde_json::to_vec(b)?);
        }
        let resp = req.send().await.with_context(|| format!("{method} {path}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Answer { status, headers, body, text })
    }

    /// A signed `GET path` whose answer is read as bytes, not decoded: the status and the
    /// body's length. For benchmarks, where decoding a 1 MB list is the client's time, not
    /// the server's.
    pub async fn get_bytes(&self, path: &str) -> Result<(u16, usize)> {
        let resp = self.signed("GET", path, Signing::Good)?.send().await.with_context(|| format!("GET {path}"))?;
        let status = resp.status().as_u16();
        Ok((status, resp.bytes().await?.len()))
    }

    /// The request `method path`, with its Date and (as `signing` says) Authorization.
    fn signed(&self, method: &str, path: &str, signing: Signing) -> Result<reqwest::RequestBuilder> {
        let now = time::OffsetDateTime::now_utc();
        let date_time = match signing {
            Signing::StaleBy(s) => now - time::Duration::seconds(s),
            _ => now,
        };
        let date = date_time.format(&time::format_description::well_known::Rfc2822).context("formatting the date")?.replace("+0000", "GMT");
        let method_l = method.to_ascii_lowercase();
        let data = format!("(request-target): {method_l} {path}\ndate: {date}");
        let mut sig = self.key.signing.sign(data.as_bytes()).to_bytes().to_vec();
        if signing == Signing::Corrupt {
            sig[10] ^= 0x01;
        }
        let auth = format!(
            "Signature keyId=\"/{}/keys/{}\",algorithm=\"ed25519-sha512\",headers=\"(request-target) date\",signature=\"{}\"",
            self.login,
            self.key.md5(),
            B64.encode(sig)
        );
        let m = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut req = self.http.request(m, format!("{}{path}", self.url)).header("date", &date).header("accept", "application/json");
        req = req.header("accept-version", "~9||~8");
        if signing != Signing::None {
            req = req.header("authorization", auth);
        }
        Ok(req)
    }

    pub async fn get(&self, path: &str) -> Result<Answer> {
        self.send("GET", path, None, Signing::Good).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Answer> {
        self.send("POST", path, Some(body), Signing::Good).await
    }
}
