//! A client for Nereid's operator APIs (PAPI, IMGAPI, NAPI, …).
//!
//! Every client command finds the headnode the same way ([`Target::resolve`]):
//! `NEREID_URL` + `NEREID_TOKEN` from the environment, else the data directory given
//! with `--data-dir` (its `endpoints.json` and `admin.token`), else the default data
//! directory (`$NEREID_DATA_DIR`, or `./nereid-data`).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// The default data directory: `$NEREID_DATA_DIR`, else `./nereid-data`.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("NEREID_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("nereid-data"))
}

/// Where the operator API is and how to authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: String,
    pub token: String,
    /// How it was found, for error messages.
    pub source: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API answered with an error body.
    #[error("{message}")]
    Api { status: u16, code: String, message: String, errors: Vec<FieldError>, body: Box<Value> },
    #[error("cannot reach the headnode at {url}: {source}")]
    Connect { url: String, source: reqwest::Error },
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// One entry of a Triton error body's `errors`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct FieldError {
    #[serde(default)]
    pub field: String,
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

#[derive(Deserialize)]
struct Endpoints {
    admin: String,
}

impl Target {
    /// Finds the headnode: environment, then `data_dir`, then the default data directory.
    pub fn resolve(data_dir: Option<&Path>) -> Result<Self, Error> {
        if let (Ok(url), Ok(token)) = (std::env::var("NEREID_URL"), std::env::var("NEREID_TOKEN")) {
            return Ok(Target {
                url: url.trim_end_matches('/').to_string(),
                token: token.trim().to_string(),
                source: "NEREID_URL and NEREID_TOKEN".into(),
            });
        }
        let dir = data_dir.map(Path::to_path_buf).unwrap_or_else(default_data_dir);
        Self::from_data_dir(&dir)
    }

    /// Reads `endpoints.json` and `admin.token` from a headnode's data directory.
    pub fn from_data_dir(dir: &Path) -> Result<Self, Error> {
        let ep = dir.join("endpoints.json");
        let text = std::fs::read_to_string(&ep).map_err(|e| {
            Error::Other(format!(
                "cannot find a headnode: {} ({e}). Start one with `nereid headnode --data-dir {}`, pass --data-dir, or set NEREID_URL and NEREID_TOKEN",
                ep.display(),
                dir.display()
            ))
        })?;
        let endpoints: Endpoints = serde_json::from_str(&text).map_err(|e| Error::Other(format!("{} is not valid: {e}", ep.display())))?;
        let tp = dir.join("admin.token");
        let token = std::fs::read_to_string(&tp).map_err(|e| Error::Other(format!("cannot read the admin token {}: {e}", tp.display())))?;
        Ok(Target {
            url: endpoints.admin.trim_end_matches('/').to_string(),
            token: token.trim().to_string(),
            source: format!("data directory {}", dir.display()),
        })
    }
}

/// An operator API client.
#[derive(Clone)]
pub struct Client {
    pub target: Target,
    http: reqwest::Client,
}

impl Client {
    pub fn new(target: Target) -> Self {
        let http = reqwest::Client::builder().user_agent(concat!("nereid/", env!("CARGO_PKG_VERSION"))).build().unwrap_or_default();
        Client { target, http }
    }

    /// `base + path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.target.url, path)
    }

    /// A request with the bearer token.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path)).bearer_auth(&self.target.token)
    }

    /// Sends a request and decodes a JSON answer (`Null` for an empty body).
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Result<Value, Error> {
        let resp = req.send().await.map_err(|e| Error::Connect { url: self.target.url.clone(), source: e })?;
        decode(resp).await
    }

    pub async fn get(&self, path: &str) -> Result<Value, Error> {
        self.send(self.request(reqwest::Method::GET, path)).await
    }
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, Error> {
        self.send(self.request(reqwest::Method::POST, path).json(body)).await
    }
    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, Error> {
        self.send(self.request(reqwest::Method::PUT, path).json(body)).await
    }
    pub async fn delete(&self, path: &str) -> Result<Value, Error> {
        self.send(self.request(reqwest::Method::DELETE, path)).await
    }

    /// A GET answered with a stream of lines (NDJSON, e.g. `/migrations/{vm}/watch`): an
    /// error status is decoded as any other answer; otherwise the lines as they come.
    pub async fn get_lines(&self, path: &str) -> Result<Lines, Error> {
        let resp = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .map_err(|e| Error::Connect { url: self.target.url.clone(), source: e })?;
        if resp.status().as_u16() >= 400 {
            return Err(decode(resp).await.err().unwrap_or_else(|| Error::Other(format!("GET {path} failed"))));
        }
        Ok(Lines { resp, buf: Vec::new(), done: false })
    }
}

/// The lines of a streamed answer ([`Client::get_lines`]).
pub struct Lines {
    resp: reqwest::Response,
    buf: Vec<u8>,
    done: bool,
}

impl Lines {
    /// The next non-empty line (without its newline), or `None` once the answer has ended.
    pub async fn next(&mut self) -> Result<Option<String>, Error> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let text = String::from_utf8_lossy(&line).trim().to_string();
                if text.is_empty() {
                    continue;
                }
                return Ok(Some(text));
            }
            if self.done {
                let rest = String::from_utf8_lossy(&std::mem::take(&mut self.buf)).trim().to_string();
                return Ok((!rest.is_empty()).then_some(rest));
            }
            match self.resp.chunk().await.map_err(|e| Error::Other(format!("reading the stream: {e}")))? {
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None => self.done = true,
            }
        }
    }
}

/// Turns a response into JSON or a Triton error.
pub async fn decode(resp: reqwest::Response) -> Result<Value, Error> {
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.map_err(|e| Error::Other(format!("reading the response: {e}")))?;
    let body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    if status < 400 {
        return Ok(body);
    }
    let code = body.get("code").and_then(Value::as_str).unwrap_or("Error").to_string();
    let message = body.get("message").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| format!("HTTP {status}: {body}"));
    let errors = body.get("errors").and_then(|e| serde_json::from_value(e.clone()).ok()).unwrap_or_default();
    Err(Error::Api { status, code, message, errors, body: Box::new(body) })
}

/// Percent-encodes one path segment or query value.
pub fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
