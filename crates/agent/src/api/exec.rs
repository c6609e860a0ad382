//! Running a command on the server and putting or getting a file, for the operator's
//! `nereid admin oneachnode` (Triton's `sdc-oneachnode` through `ur`).
//!
//! Only the headnode reaches these endpoints: the agent API admits only headnodes'
//! client certificates (see [`super`]), and the headnode forwards only operator-token
//! requests. An operator who wants none of it starts the agent with `--no-exec`
//! ([`crate::Config::no_exec`], per agent): every endpoint here then answers 403.
//!
//! ```text
//!   POST /servers/{server}/exec       {command, timeout_secs}  → /bin/sh -c, own process group,
//!                                      SERVER_UUID and HOSTNAME set; killed whole at the timeout
//!   POST /servers/{server}/files/put  {path, content_base64, mode?}  → written atomically
//!   POST /servers/{server}/files/get  {path}  → {content_base64, size, mode}
//! ```

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use base64::Engine;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};
use uuid::Uuid;

use super::{error, ok};
use crate::NodeRuntime;

/// The sizes, shared with the headnode and the CLI: most of each stream (stdout, stderr)
/// kept (the rest is read and dropped); the largest file put or got; the longest a command
/// may run; the largest request body (a put's file in base64 in JSON).
pub use nereid_types::oneachnode::{FILE_CAP, MAX_TIMEOUT_SECS, OUTPUT_CAP, REQUEST_CAP};

#[derive(Clone)]
struct ExecState {
    nodes: Arc<Vec<Arc<NodeRuntime>>>,
    enabled: bool,
}

/// The endpoints, for the servers in `nodes`; `enabled: false` answers 403 to all.
pub fn router(nodes: Arc<Vec<Arc<NodeRuntime>>>, enabled: bool) -> Router {
    Router::new()
        .route("/servers/{server}/exec", post(exec))
        .route("/servers/{server}/files/put", post(put_file))
        .route("/servers/{server}/files/get", post(get_file))
        // A put of the largest file fits; nothing larger is read.
        .layer(axum::extract::DefaultBodyLimit::max(REQUEST_CAP as usize))
        .with_state(ExecState { nodes, enabled })
}

/// A command to run.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    pub command: String,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

fn default_timeout() -> u64 {
    60
}

/// How it went.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct ExecResult {
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// The exit status; none when a signal ended it (or the timeout did).
    pub exit_status: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub duration_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutFile {
    path: String,
    content_base64: String,
    #[serde(default)]
    mode: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GetFile {
    path: String,
}

fn lookup(s: &ExecState, server: &str) -> Result<Arc<NodeRuntime>, Box<Response>> {
    if !s.enabled {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "NotAuthorized",
            "this agent was started with --no-exec: it runs no commands and moves no files for the operator",
        )));
    }
    let id = Uuid::parse_str(server).ok();
    s.nodes
        .iter()
        .find(|n| Some(n.uuid) == id)
        .cloned()
        .ok_or_else(|| Box::new(error(StatusCode::NOT_FOUND, "ResourceNotFound", format!("this agent does not run server {server}"))))
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Box<Response>> {
    serde_json::from_slice(body)
        .map_err(|e| Box::new(error(StatusCode::UNPROCESSABLE_ENTITY, "InvalidParameters", format!("the {what} does not parse: {e}"))))
}

async fn exec(State(s): State<ExecState>, Path(server): Path<String>, body: Bytes) -> Response {
    let n = match lookup(&s, &server) {
        Ok(n) => n,
        Err(r) => return *r,
    };
    let req: ExecRequest = match parse(&body, "command request") {
        Ok(r) => r,
        Err(r) => return *r,
    };
    if req.command.trim().is_empty() || req.command.contains('\0') {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "InvalidParameters", "command: must be a non-empty string without NUL");
    }
    if req.timeout_secs == 0 || req.timeout_secs > MAX_TIMEOUT_SECS {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "InvalidParameters", format!("timeout_secs: must be 1 to {MAX_TIMEOUT_SECS}"));
    }
    let hostname = n.sysinfo.get("Hostname").and_then(|h| h.as_str()).unwrap_or_default().to_string();
    // The command may hold secrets: its digest identifies it in the log.
    let digest = command_digest(&req.command);
    tracing::info!(server = %n.uuid, command_sha256 = %digest, timeout_secs = req.timeout_secs, "running an operator's command");
    match run(&req.command, &[("SERVER_UUID", n.uuid.to_string()), ("HOSTNAME", hostname)], Duration::from_secs(req.timeout_secs)).await {
        Ok(r) => ok(&r),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", format!("starting /bin/sh: {e}")),
    }
}

/// The first 16 hex digits of a command's SHA-256: what the agent's log names it by.
pub fn command_digest(command: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(command.as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The search path operator commands get (the agent's own environment, which may hold
/// its join token, is not passed on).
const COMMAND_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long the output streams may stay open after the command ended or was killed
/// (something that left the process group can hold them open forever).
const DRAIN: Duration = Duration::from_secs(2);

/// Runs `/bin/sh -c command` in its own process group with a clean environment (`PATH`,
/// `HOME`, `LANG` and `env`), capturing at most [`OUTPUT_CAP`] of each stream; at
/// `timeout` the whole group is killed.
pub async fn run(command: &str, env: &[(&str, String)], timeout: Duration) -> std::io::Result<ExecResult> {
    let started = Instant::now();
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c").arg(command).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).kill_on_drop(true);
    cmd.env_clear().env("PATH", COMMAND_PATH).env("HOME", std::env::var_os("HOME").unwrap_or_else(|| "/".into())).env("LANG", "C.UTF-8");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn()?;
    let pgid = child.id();
    let (out, err) = (Captured::default(), Captured::default());
    let out_task = tokio::spawn(capture(child.stdout.take(), out.clone()));
    let err_task = tokio::spawn(capture(child.stderr.take(), err.clone()));
    let (status, timed_out) = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(st) => (Some(st?), false),
        Err(_) => {
            kill_group(pgid);
            let _ = child.wait().await;
            (None, true)
        }
    };
    // Whatever the command left running in its group holds the pipes open: end it too.
    kill_group(pgid);
    let (stdout, stdout_truncated) = drain(out_task, &out).await;
    let (stderr, stderr_truncated) = drain(err_task, &err).await;
    use std::os::unix::process::ExitStatusExt;
    Ok(ExecResult {
        stdout,
        stderr,
        stdout_truncated,
        stderr_truncated,
        exit_status: status.and_then(|s| s.code()),
        signal: if timed_out { Some(rustix::process::Signal::KILL.as_raw()) } else { status.and_then(|s| s.signal()) },
        timed_out,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

/// What a stream's capture has kept so far, and whether it dropped any.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<(Vec<u8>, bool)>>);

impl Captured {
    fn take(&self) -> (String, bool) {
        let g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        (String::from_utf8_lossy(&g.0).into_owned(), g.1)
    }
}

/// A stream's capture, waited for at most [`DRAIN`]: if the stream is still held open
/// then, what it read so far is the answer, marked truncated.
async fn drain(task: tokio::task::JoinHandle<()>, kept: &Captured) -> (String, bool) {
    let abort = task.abort_handle();
    let ended = tokio::time::timeout(DRAIN, task).await.is_ok();
    abort.abort();
    let (text, truncated) = kept.take();
    (text, truncated || !ended)
}

fn kill_group(pgid: Option<u32>) {
    // process_group(0) made the command's pid its group's id.
    if let Some(id) = pgid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
        let _ = rustix::process::kill_process_group(id, rustix::process::Signal::KILL);
    }
}

/// Reads a stream to its end into `kept`, keeping the first [`OUTPUT_CAP`] bytes.
async fn capture(r: Option<impl AsyncRead + Unpin>, kept: Captured) {
    let Some(mut r) = r else { return };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut g = kept.0.lock().unwrap_or_else(|p| p.into_inner());
                let room = OUTPUT_CAP.saturating_sub(g.0.len());
                g.0.extend_from_slice(&buf[..n.min(room)]);
                g.1 |= n > room;
            }
        }
    }
}

fn absolute(path: &str) -> Result<std::path::PathBuf, Box<Response>> {
    let p = std::path::PathBuf::from(path);
    if !p.is_absolute() || path.contains('\0') || p.file_name().is_none() {
        return Err(Box::new(error(StatusCode::UNPROCESSABLE_ENTITY, "InvalidParameters", "path: must be an absolute path to a file")));
    }
    Ok(p)
}

async fn put_file(State(s): State<ExecState>, Path(server): Path<String>, body: Bytes) -> Response {
    let n = match lookup(&s, &server) {
        Ok(n) => n,
        Err(r) => return *r,
    };
    let req: PutFile = match parse(&body, "file") {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let path = match absolute(&req.path) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(req.content_base64.as_bytes()) else {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "InvalidParameters", "content_base64: is not base64");
    };
    if bytes.len() as u64 > FILE_CAP {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "RequestTooLarge", format!("files are at most {FILE_CAP} bytes"));
    }
    let mode = req.mode.map(|m| m & 0o7777);
    let (p, size) = (path.clone(), bytes.len());
    let written =
        tokio::task::spawn_blocking(move || write_atomically(&p, &bytes, mode)).await.unwrap_or_else(|e| Err(std::io::Error::other(e)));
    match written {
        Ok(mode) => {
            tracing::info!(server = %n.uuid, path = %path.display(), bytes = size, "an operator's file was put");
            ok(&serde_json::json!({"path": req.path, "size": size, "mode": mode}))
        }
        Err(e) => error(StatusCode::CONFLICT, "WriteFailed", format!("writing {}: {e}", path.display())),
    }
}

/// Writes a sibling temporary file, syncs it and renames it over `path`; answers the
/// mode the file got. The temporary file is readable by its owner only until it has its
/// mode, so a secret is never readable by others on the way. Without `mode`, a file that
/// exists keeps its mode and owner; a new one gets 0644.
fn write_atomically(path: &std::path::Path, bytes: &[u8], mode: Option<u32>) -> std::io::Result<u32> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let dir = path.parent().unwrap_or(std::path::Path::new("/"));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", Uuid::new_v4().simple()));
    let existing = std::fs::metadata(path).ok().filter(|m| m.is_file());
    let mode = mode.or(existing.as_ref().map(|m| m.mode() & 0o7777)).unwrap_or(0o644);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(bytes)?;
        if let Some(m) = &existing {
            std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()))?;
        }
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(mode)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

async fn get_file(State(s): State<ExecState>, Path(server): Path<String>, body: Bytes) -> Response {
    if let Err(r) = lookup(&s, &server) {
        return *r;
    }
    let req: GetFile = match parse(&body, "file request") {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let path = match absolute(&req.path) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let p = path.clone();
    let read = tokio::task::spawn_blocking(move || read_capped(&p)).await.unwrap_or_else(|e| Err(Got::Failed(e.to_string())));
    match read {
        Ok((bytes, meta)) => ok(&serde_json::json!({
            "path": req.path,
            "size": bytes.len(),
            "mode": meta.permissions().mode() & 0o7777,
            "content_base64": base64::engine::general_purpose::STANDARD.encode(&bytes),
        })),
        Err(Got::NotAFile) => {
            error(StatusCode::UNPROCESSABLE_ENTITY, "InvalidParameters", format!("{} is not a regular file", path.display()))
        }
        Err(Got::Missing(e)) => error(StatusCode::NOT_FOUND, "ResourceNotFound", format!("{}: {e}", path.display())),
        Err(Got::TooLarge) => {
            error(StatusCode::PAYLOAD_TOO_LARGE, "RequestTooLarge", format!("{} is larger than {FILE_CAP} bytes", path.display()))
        }
        Err(Got::Failed(e)) => error(StatusCode::CONFLICT, "ReadFailed", format!("reading {}: {e}", path.display())),
    }
}

/// Why a file could not be got.
enum Got {
    NotAFile,
    Missing(std::io::Error),
    TooLarge,
    Failed(String),
}

/// A regular file's bytes (at most [`FILE_CAP`], however much it grows while read) and
/// its metadata.
fn read_capped(path: &std::path::Path) -> Result<(Vec<u8>, std::fs::Metadata), Got> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(Got::Missing)?;
    let meta = f.metadata().map_err(|e| Got::Failed(e.to_string()))?;
    if !meta.is_file() {
        return Err(Got::NotAFile);
    }
    let mut bytes = Vec::new();
    f.take(FILE_CAP + 1).read_to_end(&mut bytes).map_err(|e| Got::Failed(e.to_string()))?;
    if bytes.len() as u64 > FILE_CAP {
        return Err(Got::TooLarge);
    }
    Ok((bytes, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_command_answers_its_output_and_status_and_a_hung_one_is_killed_at_the_timeout() {
        let r = run("echo out; echo err >&2; echo $SERVER_UUID; exit 3", &[("SERVER_UUID", "u-1".into())], Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((r.stdout.as_str(), r.stderr.as_str(), r.exit_status, r.timed_out), ("out\nu-1\n", "err\n", Some(3), false));
        // A child that outlives the shell in the background is ended with it (no hang on the pipe).
        let r = run("echo before; sleep 300 & sleep 300", &[], Duration::from_secs(1)).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(r.timed_out, "{r:?}");
        assert_eq!((r.stdout.as_str(), r.exit_status, r.signal), ("before\n", None, Some(9)));
    }

    #[tokio::test]
    async fn output_past_the_cap_is_dropped_and_said_so() {
        let r = run("head -c 3000000 /dev/zero", &[], Duration::from_secs(30)).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((r.stdout.len(), r.stdout_truncated, r.stderr_truncated, r.exit_status), (OUTPUT_CAP, true, false, Some(0)));
    }

    #[tokio::test]
    async fn an_agent_started_with_no_exec_refuses_commands_and_files() {
        let app = router(Arc::new(Vec::new()), false);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let url = format!("http://{}", listener.local_addr().unwrap_or_else(|e| panic!("{e}")));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let c = reqwest::Client::new();
        for path in ["exec", "files/put", "files/get"] {
            let r = c
                .post(format!("{url}/servers/{}/{path}", Uuid::new_v4()))
                .body(r#"{"command": "touch /nonexistent-marker"}"#)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(r.status(), 403, "{path}");
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            assert!(body["message"].as_str().unwrap_or("").contains("--no-exec"), "{body}");
        }
    }

    #[test]
    fn files_are_written_whole_with_their_mode() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("f");
        let mode_of = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0);
        assert_eq!(write_atomically(&p, b"zero", None).unwrap_or_else(|e| panic!("{e}")), 0o644, "a new file without a mode");
        write_atomically(&p, b"one", Some(0o600)).unwrap_or_else(|e| panic!("{e}"));
        write_atomically(&p, b"two", Some(0o640)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::read(&p).unwrap_or_default(), b"two");
        assert_eq!(mode_of(&p), 0o640);
        // Without a mode, the file keeps the one it has.
        assert_eq!(write_atomically(&p, b"three", None).unwrap_or_else(|e| panic!("{e}")), 0o640);
        assert_eq!(mode_of(&p), 0o640);
        assert_eq!(std::fs::read_dir(dir.path()).map(|d| d.count()).unwrap_or(0), 1, "no temporary file is left");
    }

    #[test]
    fn gets_are_capped_and_name_what_they_are_not() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(read_capped(&p), Ok((b, _)) if b == b"abc"));
        assert!(matches!(read_capped(dir.path()), Err(Got::NotAFile)));
        assert!(matches!(read_capped(&dir.path().join("none")), Err(Got::Missing(_))));
        let big = std::fs::File::create(&p).unwrap_or_else(|e| panic!("{e}"));
        big.set_len(FILE_CAP + 1).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(read_capped(&p), Err(Got::TooLarge)));
    }

    #[tokio::test]
    async fn a_command_gets_a_clean_environment_and_a_pipe_held_open_ends_the_wait() {
        // Some variable of the agent's own environment (the test runner has plenty) is not
        // passed on.
        let (theirs, _) = std::env::vars()
            .find(|(k, _)| {
                !["PATH", "HOME", "LANG", "SERVER_UUID"].contains(&k.as_str()) && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            })
            .unwrap_or_else(|| panic!("the test runner has an environment"));
        let probe = format!("echo \"$PATH|${{{theirs}:-unset}}|$SERVER_UUID\"");
        let r = run(&probe, &[("SERVER_UUID", "u".into())], Duration::from_secs(30)).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.stdout, format!("{COMMAND_PATH}|unset|u\n"), "{theirs}");
        // A grandchild in a session of its own (given half a second to get there) keeps
        // stdout open past the shell's exit: the answer still comes, after DRAIN, marked
        // truncated.
        let r = run("setsid sleep 5 & sleep 0.5; echo started", &[], Duration::from_secs(30)).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((r.exit_status, r.stdout.as_str(), r.stdout_truncated), (Some(0), "started\n", true), "{r:?}");
    }
}
