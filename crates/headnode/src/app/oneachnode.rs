//! Running a command (or putting or getting a file) on every running server, or those
//! named: Triton's `sdc-oneachnode`. Each server's agent is called over the pinned mutual
//! TLS connection (see [`super::agents`]); at most [`CONCURRENCY`] at once, each with its
//! own timeout, and each server's result is yielded as soon as it is known, so a slow or
//! hung server never holds back the others' — nor fails them: an unreachable server is a
//! result with its `error`.
//!
//! ```text
//!   request → validate (pure: [`parse`]) → targets (running servers, or the named ones)
//!           → per server: POST agent …/exec | …/files/put | …/files/get  (timeout + grace)
//!           → one [`NodeResult`] per server, in the order they finish
//! ```

use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use nereid_types::query::Query;
use nereid_types::{ApiError, FieldError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::App;

/// Servers called at once.
pub const CONCURRENCY: usize = 32;
/// The default per-server timeout, seconds.
pub const DEFAULT_TIMEOUT_SECS: u64 = 60;
/// The longest per-server timeout, seconds, and the sizes (the agent's own limits: one
/// definition for the CLI, the headnode and the agent).
pub use nereid_types::oneachnode::{ANSWER_CAP, FILE_CAP, MAX_TIMEOUT_SECS, REQUEST_CAP};
/// What the headnode waits past the command's timeout for the agent's answer (the agent
/// kills the command at the timeout and answers then).
const GRACE: Duration = Duration::from_secs(10);

/// What to do on each server.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Command(String),
    Put { path: String, content_base64: String, mode: Option<u32> },
    Get { path: String },
}

/// A validated request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub action: Action,
    /// UUIDs or hostnames; empty: every running server.
    pub servers: Vec<String>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

/// One server's answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeResult {
    pub server_uuid: Uuid,
    pub hostname: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    #[serde(default)]
    pub stdout_truncated: bool,
    #[serde(default)]
    pub stderr_truncated: bool,
    pub timed_out: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// For a get: the file, base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_base64: Option<String>,
    /// Why the server gave no answer (unreachable, not running, refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Bad input, answered as the operator API's other `Operations` endpoints answer it
/// (`GET /audit`'s `since`, any unknown query parameter: `http::Api::of("Operations")`):
/// IMGAPI's 422 `InvalidParameter`, one error per field.
fn invalid(errors: Vec<FieldError>) -> ApiError {
    ApiError::invalid_parameter(errors)
}

/// The body `POST /oneachnode` takes, checked: exactly one of `command`, `put`, `get`.
pub fn parse(body: &Map<String, Value>) -> Result<Request, ApiError> {
    let mut errors = Vec::new();
    for k in body.keys() {
        if !matches!(k.as_str(), "command" | "put" | "get" | "servers" | "timeout_secs" | "connect_timeout_secs") {
            errors.push(FieldError::unknown(k.clone()));
        }
    }
    let secs = |k: &str, default: u64, errors: &mut Vec<FieldError>| match body.get(k) {
        None | Some(Value::Null) => default,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_TIMEOUT_SECS).contains(&n) => n,
            _ => {
                errors.push(FieldError::invalid(k, format!("must be a whole number of seconds from 1 to {MAX_TIMEOUT_SECS}")));
                default
            }
        },
    };
    let timeout = secs("timeout_secs", DEFAULT_TIMEOUT_SECS, &mut errors);
    let connect = secs("connect_timeout_secs", 10, &mut errors);
    let servers = match body.get("servers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) if a.iter().all(|s| s.as_str().is_some_and(|s| !s.is_empty())) => {
            a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()
        }
        Some(_) => {
            errors.push(FieldError::invalid("servers", "must be an array of server UUIDs or hostnames"));
            Vec::new()
        }
    };
    let text = |o: &Map<String, Value>, k: &str, field: &str, errors: &mut Vec<FieldError>| match o.get(k).and_then(Value::as_str) {
        Some(s) if !s.is_empty() && !s.contains('\0') => Some(s.to_string()),
        _ => {
            errors.push(FieldError::invalid(field, "must be a non-empty string"));
            None
        }
    };
    let absolute = |p: Option<String>, field: &str, errors: &mut Vec<FieldError>| {
        p.filter(|p| {
            let ok = p.starts_with('/') && !p.ends_with('/');
            if !ok {
                errors.push(FieldError::invalid(field, "must be an absolute path to a file"));
            }
            ok
        })
    };
    let given: Vec<&str> = ["command", "put", "get"].into_iter().filter(|k| body.get(*k).is_some_and(|v| !v.is_null())).collect();
    let action = match given.as_slice() {
        ["command"] => text(body, "command", "command", &mut errors).map(Action::Command),
        ["put"] => match body.get("put") {
            Some(Value::Object(o)) => {
                let path = absolute(text(o, "path", "put.path", &mut errors), "put.path", &mut errors);
                let content = match o.get("content_base64").and_then(Value::as_str) {
                    Some(c) if c.len() as u64 > nereid_types::oneachnode::base64_len(FILE_CAP) => {
                        errors.push(FieldError::invalid("put.content_base64", format!("a file put is at most {FILE_CAP} bytes")));
                        None
                    }
                    Some(c) => Some(c.to_string()),
                    None => {
                        errors.push(FieldError::missing("put.content_base64"));
                        None
                    }
                };
                let mode = match o.get("mode") {
                    None | Some(Value::Null) => None,
                    Some(m) => match m.as_u64().filter(|m| *m <= 0o7777) {
                        Some(m) => Some(m as u32),
                        None => {
                            errors.push(FieldError::invalid("put.mode", "must be a file mode from 0 to 4095 (0o7777)"));
                            None
                        }
                    },
                };
                path.zip(content).map(|(path, content_base64)| Action::Put { path, content_base64, mode })
            }
            _ => {
                errors.push(FieldError::invalid("put", "must be an object {path, content_base64, mode}"));
                None
            }
        },
        ["get"] => match body.get("get") {
            Some(Value::Object(o)) => {
                absolute(text(o, "path", "get.path", &mut errors), "get.path", &mut errors).map(|path| Action::Get { path })
            }
            _ => {
                errors.push(FieldError::invalid("get", "must be an object {path}"));
                None
            }
        },
        [] => {
            errors.push(FieldError::missing("command"));
            None
        }
        _ => {
            errors.push(FieldError::invalid(given[1], "give exactly one of command, put and get"));
            None
        }
    };
    match action {
        Some(action) if errors.is_empty() => {
            Ok(Request { action, servers, timeout: Duration::from_secs(timeout), connect_timeout: Duration::from_secs(connect) })
        }
        _ => Err(invalid(errors)),
    }
}

/// What the audit record of a request says it did: the command's SHA-256 (never its
/// text: it may hold a secret), or the file put or got; and the servers it named (their
/// UUIDs), or `all` (every running server).
pub fn audit_detail(action: &Action, servers: Option<&[Uuid]>) -> Value {
    use sha2::Digest;
    let mut d = match action {
        Action::Command(c) => serde_json::json!({"command_sha256": hex::encode(sha2::Sha256::digest(c.as_bytes()))}),
        Action::Put { path, content_base64, mode } => {
            use base64::Engine;
            // The content's SHA-256 (what `sha256sum` says of the file), never the content.
            let content = base64::engine::general_purpose::STANDARD.decode(content_base64).unwrap_or_default();
            serde_json::json!({"put": path, "content_sha256": hex::encode(sha2::Sha256::digest(&content)), "mode": mode})
        }
        Action::Get { path } => serde_json::json!({"get": path}),
    };
    d["servers"] = match servers {
        None => Value::from("all"),
        Some(u) => u.iter().map(|u| Value::from(u.to_string())).collect(),
    };
    d
}

/// A server to call: its UUID and hostname, and why it cannot be called, if it cannot.
type Target = (Uuid, String, Option<String>);

/// Which servers `wanted` names among `servers` (`(uuid, hostname, running)`): all the
/// running ones when it names none; a name that matches nothing is an error.
pub fn pick(servers: &[(Uuid, String, bool)], wanted: &[String]) -> Result<Vec<Target>, ApiError> {
    if wanted.is_empty() {
        return Ok(servers.iter().filter(|s| s.2).map(|(u, h, _)| (*u, h.clone(), None)).collect());
    }
    let mut out: Vec<Target> = Vec::new();
    let mut unknown = Vec::new();
    for w in wanted {
        let hits: Vec<_> = servers.iter().filter(|(u, h, _)| u.to_string() == w.to_ascii_lowercase() || h == w).collect();
        if hits.is_empty() {
            unknown.push(w.clone());
        }
        for (u, h, running) in hits {
            if !out.iter().any(|o| o.0 == *u) {
                out.push((*u, h.clone(), (!running).then(|| format!("server {u} ({h}) is not running (no recent heartbeat)"))));
            }
        }
    }
    if !unknown.is_empty() {
        return Err(invalid(vec![FieldError::invalid("servers", format!("no such server: {}", unknown.join(", ")))]));
    }
    Ok(out)
}

impl App {
    /// The servers `req` is for, each a result as soon as it is known (see the module doc).
    pub async fn oneachnode(self: &Arc<Self>, req: Request) -> Result<impl Stream<Item = NodeResult> + use<>, ApiError> {
        let all = self.list_servers(&Query::default()).await?;
        let servers: Vec<(Uuid, String, bool)> =
            all.iter().map(|(s, hb)| (s.uuid, s.hostname.clone(), self.server_status(hb.as_ref()).0 == "running")).collect();
        let targets = pick(&servers, &req.servers)?;
        let uuids: Vec<Uuid> = targets.iter().map(|t| t.0).collect();
        super::audit::note_detail(audit_detail(&req.action, (!req.servers.is_empty()).then_some(&uuids[..])));
        let app = self.clone();
        let req = Arc::new(req);
        Ok(futures_util::stream::iter(targets)
            .map(move |(uuid, hostname, not_running)| {
                let (app, req) = (app.clone(), req.clone());
                async move {
                    let base = NodeResult { server_uuid: uuid, hostname, ..Default::default() };
                    if let Some(e) = not_running {
                        return NodeResult { error: Some(e), ..base };
                    }
                    match app.oneachnode_call(uuid, &req).await {
                        Ok(v) => merge(base, v),
                        Err(e) => NodeResult { error: Some(e), ..base },
                    }
                }
            })
            .buffer_unordered(CONCURRENCY))
    }

    /// One server's agent asked to do `req`'s action; its JSON answer, or why there is none.
    async fn oneachnode_call(&self, server: Uuid, req: &Request) -> Result<Value, String> {
        let (s, _) = self.get_server_record(server).await.map_err(|e| e.message)?;
        let pin = self.server_pin(server).await.map_err(|e| e.message)?;
        if !s.agent_url.starts_with("https://") {
            return Err(format!("server {server}'s agent is not on TLS ({}): it is not called", s.agent_url));
        }
        let http = self.agents.client(server, &pin)?;
        let secs = req.timeout.as_secs();
        let (path, body) = match &req.action {
            Action::Command(c) => ("exec", serde_json::json!({"command": c, "timeout_secs": secs})),
            Action::Put { path, content_base64, mode } => {
                ("files/put", serde_json::json!({"path": path, "content_base64": content_base64, "mode": mode}))
            }
            Action::Get { path } => ("files/get", serde_json::json!({"path": path})),
        };
        let url = format!("{}/servers/{server}/{path}", s.agent_url.trim_end_matches('/'));
        let call = async {
            let resp = http.post(&url).timeout(req.timeout + GRACE).json(&body).send().await.map_err(|e| format!("calling {url}: {e}"))?;
            let status = resp.status().as_u16();
            let bytes = read_capped(resp, ANSWER_CAP).await.map_err(|e| format!("server {server}'s agent: {e}"))?;
            let v: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
            if status >= 400 {
                let m = v.get("message").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| v.to_string());
                return Err(format!("the agent answered {status}: {m}"));
            }
            Ok(v)
        };
        match tokio::time::timeout(req.timeout + GRACE + req.connect_timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer from the agent within {} s", (req.timeout + GRACE + req.connect_timeout).as_secs())),
        }
    }
}

/// An answer's body, read only up to `cap` bytes: past it, an error (an agent answers
/// at most a file or two output streams; more is not read into memory).
async fn read_capped(mut resp: reqwest::Response, cap: u64) -> Result<Vec<u8>, String> {
    if resp.content_length().is_some_and(|n| n > cap) {
        return Err(format!("its answer is larger than {cap} bytes"));
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("reading its answer: {e}"))? {
        if out.len() as u64 + chunk.len() as u64 > cap {
            return Err(format!("its answer is larger than {cap} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The agent's answer over the server's identity.
fn merge(base: NodeResult, v: Value) -> NodeResult {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    let b = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
    let is_exec = v.get("stdout").is_some();
    NodeResult {
        stdout: s("stdout"),
        stderr: s("stderr"),
        stdout_truncated: b("stdout_truncated"),
        stderr_truncated: b("stderr_truncated"),
        // A put or get that answers succeeded: status 0, as sdc-oneachnode reports it.
        exit_status: if is_exec { v.get("exit_status").and_then(Value::as_i64).map(|n| n as i32) } else { Some(0) },
        signal: v.get("signal").and_then(Value::as_i64).map(|n| n as i32),
        timed_out: b("timed_out"),
        duration_ms: v.get("duration_ms").and_then(Value::as_u64),
        content_base64: v.get("content_base64").and_then(Value::as_str).map(str::to_string),
        ..base
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn requests_need_exactly_one_action_and_sane_timeouts() {
        let r = parse(&obj(json!({"command": "uname -a", "servers": ["cn1"], "timeout_secs": 5}))).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(r.action, Action::Command("uname -a".into()));
        assert_eq!((r.servers, r.timeout), (vec!["cn1".to_string()], Duration::from_secs(5)));
        let field = |v: Value| parse(&obj(v)).err().map(|e| e.errors.first().map(|f| f.field.clone()).unwrap_or_default());
        assert_eq!(field(json!({})), Some("command".into()));
        let e = parse(&obj(json!({"command": ""}))).err().unwrap_or_else(|| ApiError::internal("parsed"));
        let shape = (e.status, e.code.as_str(), e.errors.first().map(|f| (f.field.as_str(), f.code.as_str())));
        assert_eq!(shape, (422, "InvalidParameter", Some(("command", "Invalid"))), "as GET /audit answers a bad since");
        assert_eq!(field(json!({"command": "x", "get": {"path": "/etc/hostname"}})), Some("get".into()));
        assert_eq!(field(json!({"command": "x", "timeout_secs": 0})), Some("timeout_secs".into()));
        assert_eq!(field(json!({"command": "x", "servers": "cn1"})), Some("servers".into()));
        assert_eq!(field(json!({"put": {"path": "relative", "content_base64": ""}})), Some("put.path".into()));
        assert_eq!(field(json!({"get": {"path": "/tmp/"}})), Some("get.path".into()));
        assert_eq!(field(json!({"command": "x", "bogus": 1})), Some("bogus".into()));
        let big = "A".repeat(nereid_types::oneachnode::base64_len(FILE_CAP) as usize + 4);
        assert_eq!(field(json!({"put": {"path": "/tmp/f", "content_base64": big}})), Some("put.content_base64".into()));
        let r = parse(&obj(json!({"put": {"path": "/tmp/f", "content_base64": "aGk=", "mode": 420}}))).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(r.action, Action::Put { path: "/tmp/f".into(), content_base64: "aGk=".into(), mode: Some(0o644) });
    }

    #[test]
    fn the_audit_detail_names_what_ran_but_never_the_command() {
        let d = audit_detail(&Action::Command("mysql -psecret".into()), None);
        assert_eq!(d["servers"], "all");
        let sum = d["command_sha256"].as_str().unwrap_or_default();
        assert_eq!(sum.len(), 64);
        assert!(!d.to_string().contains("secret"), "{d}");
        let u = Uuid::new_v4();
        let d = audit_detail(&Action::Put { path: "/etc/motd".into(), content_base64: "aGk=".into(), mode: Some(0o644) }, Some(&[u]));
        assert_eq!((d["put"].as_str(), d["mode"].as_u64(), d["servers"].clone()), (Some("/etc/motd"), Some(0o644), json!([u.to_string()])));
        assert!(!d.to_string().contains("aGk="), "the content is never recorded: {d}");
        assert_eq!(audit_detail(&Action::Get { path: "/etc/hostname".into() }, None)["get"], "/etc/hostname");
    }

    #[test]
    fn servers_are_picked_by_uuid_or_hostname_and_stopped_ones_answer_why() {
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let all = vec![(a, "cn-a".to_string(), true), (b, "cn-b".to_string(), true), (c, "cn-c".to_string(), false)];
        let every: Vec<Uuid> = pick(&all, &[]).unwrap_or_default().into_iter().map(|t| t.0).collect();
        assert_eq!(every, vec![a, b], "all running servers, none that is not");
        let named = pick(&all, &["cn-b".into(), c.to_string().to_uppercase(), b.to_string()]).unwrap_or_default();
        assert_eq!(named.iter().map(|t| t.0).collect::<Vec<_>>(), vec![b, c]);
        assert!(named[0].2.is_none() && named[1].2.as_deref().unwrap_or("").contains("not running"));
        let e = pick(&all, &["cn-z".into(), "cn-a".into()]).err().map(|e| e.errors).unwrap_or_default();
        assert_eq!((e.len(), e[0].field.as_str(), e[0].message.as_str()), (1, "servers", "no such server: cn-z"));
    }
}
