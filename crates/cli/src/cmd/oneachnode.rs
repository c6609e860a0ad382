//! `nereid admin oneachnode`: a command, or a file put (`-p FILE -d DIR`) or got (`-g FILE
//! -d DIR`), on every running server or those named with `-n` — Triton's `sdc-oneachnode`,
//! through `POST /oneachnode`. Each server's result is printed as it arrives, as
//! sdc-oneachnode prints multi-line output (`=== Output from UUID (HOSTNAME):`), or one JSON
//! object per line with `-j`/`--json`. Exit status 0 only when every server exited 0.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use base64::Engine;
use clap::Args;
use nereid_client::Client;
use nereid_types::oneachnode::{FILE_CAP, OUTPUT_CAP};
use serde_json::{Value, json};

#[derive(Args, Debug)]
pub struct OnEachNodeArgs {
    /// A server to run on (UUID or hostname; repeatable) [default: every running server]
    #[arg(short = 'n', long = "node", value_name = "SERVER")]
    pub nodes: Vec<String>,
    /// Seconds each server has before its command is killed
    #[arg(short = 't', long = "timeout", default_value_t = 60, value_name = "S")]
    pub timeout: u64,
    /// Seconds added to the wait for each server's agent to answer
    #[arg(short = 'T', long = "connect-timeout", default_value_t = 10, value_name = "S")]
    pub connect_timeout: u64,
    /// One JSON object per server per line, as they arrive
    #[arg(short = 'j')]
    pub json_lines: bool,
    /// Put this local file on each server, into -d DIR
    #[arg(short = 'p', long = "put", value_name = "FILE", requires = "dir", conflicts_with_all = ["get", "command"])]
    pub put: Option<PathBuf>,
    /// Get this file (an absolute path) from each server, into local -d DIR as DIR/<server uuid>
    #[arg(short = 'g', long = "get", value_name = "FILE", requires = "dir", conflicts_with = "command")]
    pub get: Option<String>,
    /// With -p: the directory on each server; with -g: the local directory
    #[arg(short = 'd', long = "dir", value_name = "DIR")]
    pub dir: Option<String>,
    /// The command (for /bin/sh -c on each server, with SERVER_UUID and HOSTNAME set)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// The request body the flags make.
pub fn request(a: &OnEachNodeArgs) -> Result<Value> {
    let mut body = json!({"timeout_secs": a.timeout, "connect_timeout_secs": a.connect_timeout});
    if !a.nodes.is_empty() {
        body["servers"] = json!(a.nodes);
    }
    let dir = a.dir.as_deref().unwrap_or_default().trim_end_matches('/');
    match (&a.put, &a.get) {
        (Some(local), _) => {
            let size = std::fs::metadata(local).with_context(|| format!("reading {}", local.display()))?.len();
            if size > FILE_CAP {
                bail!("{} is {size} bytes: a file put is at most {FILE_CAP} bytes", local.display());
            }
            let bytes = std::fs::read(local).with_context(|| format!("reading {}", local.display()))?;
            let name = local.file_name().map(|n| n.to_string_lossy().into_owned()).context("-p needs a file name")?;
            let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(local)?.permissions()) & 0o7777;
            body["put"] = json!({"path": format!("{dir}/{name}"), "content_base64": base64::engine::general_purpose::STANDARD.encode(bytes), "mode": mode});
        }
        (None, Some(remote)) => body["get"] = json!({"path": remote}),
        (None, None) if !a.command.is_empty() => body["command"] = json!(a.command.join(" ")),
        (None, None) => bail!("give a command, or -p FILE -d DIR, or -g FILE -d DIR"),
    }
    Ok(body)
}

/// One server's result as sdc-oneachnode prints multi-line output, and whether it succeeded.
pub fn render(r: &Value) -> (String, bool) {
    let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or_default();
    let mut out = format!("=== Output from {} ({}):\n", s("server_uuid"), s("hostname"));
    for k in ["stdout", "stderr"] {
        out.push_str(s(k));
        if !s(k).is_empty() && !s(k).ends_with('\n') {
            out.push('\n');
        }
        if r.get(format!("{k}_truncated")).and_then(Value::as_bool) == Some(true) {
            out.push_str(&format!("=== ({k} truncated at {} MiB)\n", OUTPUT_CAP >> 20));
        }
    }
    let status = r.get("exit_status").and_then(Value::as_i64);
    let ok = status == Some(0) && r.get("error").is_none();
    if let Some(e) = r.get("error").and_then(Value::as_str) {
        out.push_str(&format!("=== error: {e}\n"));
    } else if r.get("timed_out").and_then(Value::as_bool) == Some(true) {
        out.push_str("=== timed out (killed)\n");
    } else if let Some(n) = status.filter(|n| *n != 0) {
        out.push_str(&format!("=== exit status {n}\n"));
    } else if status.is_none() {
        out.push_str(&format!("=== killed by signal {}\n", r.get("signal").and_then(Value::as_i64).unwrap_or_default()));
    }
    (out, ok)
}

/// Saves a got file as `dir/<server uuid>`.
fn save(dir: &Path, r: &Value) -> Result<()> {
    let (Some(uuid), Some(b64)) = (r.get("server_uuid").and_then(Value::as_str), r.get("content_base64").and_then(Value::as_str)) else {
        return Ok(());
    };
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).context("the file's content is not base64")?;
    let to = dir.join(uuid);
    std::fs::write(&to, bytes).with_context(|| format!("writing {}", to.display()))
}

pub async fn run(c: &Client, a: OnEachNodeArgs, json: bool) -> Result<()> {
    let body = request(&a)?;
    let resp = c
        .request(reqwest::Method::POST, "/oneachnode")
        .json(&body)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the headnode at {}: {e}", c.target.url))?;
    if resp.status().as_u16() >= 400 {
        return Err(nereid_client::decode(resp).await.err().map(anyhow::Error::from).unwrap_or_else(|| anyhow::anyhow!("failed")));
    }
    let get_dir = a.get.as_ref().and(a.dir.as_deref()).map(PathBuf::from);
    if let Some(d) = &get_dir {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let (mut total, mut failed) = (0usize, 0usize);
    let mut resp = resp;
    let mut buf: Vec<u8> = Vec::new();
    let mut done = false;
    while !done {
        match resp.chunk().await.context("reading the results")? {
            Some(c) => buf.extend_from_slice(&c),
            None => {
                done = true;
                buf.push(b'\n');
            }
        }
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let Ok(r) = serde_json::from_slice::<Value>(&line) else { continue };
            total += 1;
            if let Some(d) = &get_dir {
                save(d, &r)?;
            }
            let (text, ok) = render(&r);
            failed += usize::from(!ok);
            if json || a.json_lines {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                print!("{text}");
            }
            use std::io::Write;
            let _ = std::io::stdout().flush();
        }
    }
    if failed > 0 {
        bail!("{failed} of {total} server(s) failed");
    }
    if total == 0 {
        eprintln!("no servers are running");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_print_as_sdc_oneachnode_and_only_a_zero_exit_succeeds() {
        let ok = json!({"server_uuid": "u1", "hostname": "cn1", "exit_status": 0, "stdout": "hi\n", "stderr": "", "timed_out": false});
        assert_eq!(render(&ok), ("=== Output from u1 (cn1):\nhi\n".to_string(), true));
        let hung = json!({"server_uuid": "u2", "hostname": "cn2", "signal": 9, "stdout": "", "stderr": "", "timed_out": true});
        assert_eq!(render(&hung), ("=== Output from u2 (cn2):\n=== timed out (killed)\n".to_string(), false));
        let bad = json!({"server_uuid": "u3", "hostname": "cn3", "exit_status": 2, "stdout": "", "stderr": "no", "timed_out": false});
        assert_eq!(render(&bad).0, "=== Output from u3 (cn3):\nno\n=== exit status 2\n");
        let gone = json!({"server_uuid": "u4", "hostname": "cn4", "stdout": "", "stderr": "", "timed_out": false, "error": "unreachable"});
        assert_eq!(render(&gone), ("=== Output from u4 (cn4):\n=== error: unreachable\n".to_string(), false));
    }
}
