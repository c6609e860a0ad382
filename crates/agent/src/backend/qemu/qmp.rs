//! A minimal QMP (QEMU Machine Protocol) client: one connection per command.
//!
//! ```text
//!   connect → greeting {"QMP": …} → {"execute":"qmp_capabilities"} → {"return":{}}
//!           → {"execute": cmd, "arguments": …} → {"return": …} | {"error": {class, desc}}
//! ```
//! Asynchronous events (`{"event": …}`) may arrive at any time and are skipped.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// How long one QMP exchange may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs one QMP command on the VM's monitor socket and returns its `return` value.
pub async fn execute(socket: &Path, command: &str, arguments: Option<Value>) -> Result<Value, String> {
    tokio::time::timeout(TIMEOUT, exchange(socket, command, arguments))
        .await
        .map_err(|_| format!("QMP {command}: no answer within {} s", TIMEOUT.as_secs()))?
}

async fn exchange(socket: &Path, command: &str, arguments: Option<Value>) -> Result<Value, String> {
    let stream = UnixStream::connect(socket).await.map_err(|e| format!("QMP socket {}: {e}", socket.display()))?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let mut next = async || -> Result<Value, String> {
        loop {
            let line = lines.next_line().await.map_err(|e| format!("QMP: {e}"))?.ok_or("QMP: QEMU closed the monitor")?;
            let v: Value = serde_json::from_str(&line).map_err(|e| format!("QMP: unreadable message {line:?}: {e}"))?;
            if v.get("event").is_none() {
                return Ok(v);
            }
        }
    };
    let greeting = next().await?;
    if greeting.get("QMP").is_none() {
        return Err(format!("QMP: unexpected greeting {greeting}"));
    }
    let mut send = async |msg: Value| -> Result<(), String> {
        let mut bytes = serde_json::to_vec(&msg).map_err(|e| e.to_string())?;
        bytes.push(b'\n');
        write.write_all(&bytes).await.map_err(|e| format!("QMP: {e}"))
    };
    send(json!({"execute": "qmp_capabilities"})).await?;
    answer(next().await?, "qmp_capabilities")?;
    let mut msg = json!({"execute": command});
    if let Some(a) = arguments {
        msg["arguments"] = a;
    }
    send(msg).await?;
    answer(next().await?, command)
}

fn answer(v: Value, command: &str) -> Result<Value, String> {
    if let Some(r) = v.get("return") {
        return Ok(r.clone());
    }
    match v.get("error") {
        Some(e) => Err(format!(
            "QMP {command}: {} ({})",
            e.get("desc").and_then(Value::as_str).unwrap_or("failed"),
            e.get("class").and_then(Value::as_str).unwrap_or("Error")
        )),
        None => Err(format!("QMP {command}: unexpected answer {v}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A fake QEMU monitor that sends an event before each answer.
    async fn fake_monitor(dir: &Path, reply: Value) -> std::path::PathBuf {
        let path = dir.join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut lines = BufReader::new(r).lines();
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n").await.unwrap();
            while let Ok(Some(line)) = lines.next_line().await {
                let v: Value = serde_json::from_str(&line).unwrap();
                w.write_all(b"{\"event\": \"RTC_CHANGE\", \"data\": {}}\n").await.unwrap();
                let out = if v["execute"] == "qmp_capabilities" { json!({"return": {}}) } else { reply.clone() };
                w.write_all(format!("{out}\n").as_bytes()).await.unwrap();
            }
        });
        path
    }

    #[tokio::test]
    async fn returns_the_answer_and_skips_events() {
        let d = tempfile::tempdir().unwrap();
        let sock = fake_monitor(d.path(), json!({"return": {"status": "running", "running": true}})).await;
        let r = execute(&sock, "query-status", None).await.unwrap();
        assert_eq!(r["status"], "running");
    }

    #[tokio::test]
    async fn errors_name_the_command_and_cause() {
        let d = tempfile::tempdir().unwrap();
        let sock = fake_monitor(d.path(), json!({"error": {"class": "GenericError", "desc": "no such device"}})).await;
        let e = execute(&sock, "device_del", Some(json!({"id": "x"}))).await.unwrap_err();
        assert_eq!(e, "QMP device_del: no such device (GenericError)");
        let e = execute(&d.path().join("missing.sock"), "quit", None).await.unwrap_err();
        assert!(e.contains("missing.sock"), "{e}");
    }
}
