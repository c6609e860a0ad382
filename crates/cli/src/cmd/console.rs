//! `nereid admin vm console UUID`: a VM's serial console, through the headnode.
//!
//! ```text
//!   terminal ──stdin──► WebSocket /vms/{uuid}/console ──► headnode ──► agent ──► guest's com1
//!   terminal ◄─stdout── binary messages: recent output, then live ◄──────────────── guest
//! ```
//! On a terminal, standard input is put in raw mode (and restored on every way out, by a
//! guard) so that each key, Ctrl-C included, reaches the guest; Ctrl-] detaches. Without
//! a terminal (a pipe, a file, a test), standard input is sent as it comes and the
//! command ends once it has ended and the console has then been quiet for `--idle`
//! seconds. `--log` prints the agent's ring log of the console instead.

use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use nereid_client::{Client, enc};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::cli::VmConsoleArgs;

/// Ctrl-] (GS), the escape of telnet and `virsh console`.
const DETACH: u8 = 0x1d;

pub async fn run(c: &Client, a: &VmConsoleArgs) -> Result<()> {
    let idle = seconds("--idle", a.idle)?;
    let timeout = a.timeout.map(|t| seconds("--timeout", t)).transpose()?;
    if a.log {
        return print_log(c, &a.id).await;
    }
    attach(c, &a.id, idle, timeout).await
}

fn seconds(flag: &str, v: f64) -> Result<Duration> {
    if !v.is_finite() || !(0.0..=1e9).contains(&v) {
        bail!("{flag} takes a number of seconds (0 or more), not {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

/// The headnode's refusal as the error the other commands print.
async fn refusal(resp: reqwest::Response) -> anyhow::Error {
    let status = resp.status();
    match nereid_client::decode(resp).await {
        Err(e) => e.into(),
        Ok(v) => anyhow!("the headnode answered {status}: {v}"),
    }
}

async fn print_log(c: &Client, id: &str) -> Result<()> {
    let resp = c
        .request(reqwest::Method::GET, &format!("/vms/{}/console?log=true", enc(id)))
        .send()
        .await
        .map_err(|e| nereid_client::Error::Connect { url: c.target.url.clone(), source: e })?;
    if !resp.status().is_success() {
        return Err(refusal(resp).await);
    }
    let log = resp.bytes().await.context("reading the console log")?;
    let mut out = std::io::stdout().lock();
    out.write_all(&log)?;
    out.flush()?;
    Ok(())
}

/// The WebSocket URL of an operator API path.
fn ws_url(base: &str, path: &str) -> Result<String> {
    match base.strip_prefix("http://") {
        Some(rest) => Ok(format!("ws://{rest}{path}")),
        None => bail!("the headnode URL {base} is not http://, which is all `vm console` speaks"),
    }
}

/// The terminal in raw mode until dropped (on errors and panics too).
struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    fn enter() -> std::io::Result<Self> {
        let stdin = std::io::stdin();
        let saved = rustix::termios::tcgetattr(&stdin)?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(std::io::stdin(), rustix::termios::OptionalActions::Now, &self.saved);
    }
}

/// Standard input, chunk by chunk; the channel closes when it ends.
fn stdin_chunks() -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    // A thread of its own rather than tokio's blocking pool: a read waiting on a terminal
    // cannot be cancelled, and the runtime would wait for it when the command ends.
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 4096];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    });
    rx
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn attach(c: &Client, id: &str, idle: Duration, timeout: Option<Duration>) -> Result<()> {
    let url = ws_url(&c.target.url, &format!("/vms/{}/console", enc(id)))?;
    let mut req = url.as_str().into_client_request().with_context(|| format!("{url} is not a valid URL"))?;
    req.headers_mut().insert("authorization", format!("Bearer {}", c.target.token).parse().context("the token is not a valid header")?);
    let mut ws = match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => ws,
        Err(tungstenite::Error::Http(resp)) => return Err(refusal(reqwest::Response::from(resp.map(Option::unwrap_or_default))).await),
        Err(tungstenite::Error::Io(e)) => return Err(anyhow!("cannot reach the headnode at {}: {e}", c.target.url)),
        Err(e) => return Err(anyhow!("connecting to the console at {url}: {e}")),
    };
    let interactive = std::io::stdin().is_terminal();
    // Restores the terminal when this function returns, however it does.
    let _raw = if interactive { Some(RawMode::enter().context("putting the terminal in raw mode")?) } else { None };
    let nl = if interactive { "\r\n" } else { "\n" };
    if interactive {
        eprint!("Connected to VM {id}'s serial console; Ctrl-] detaches{nl}");
    }
    let mut keys = stdin_chunks();
    let mut stdin_open = true;
    let mut last_output = Instant::now();
    let give_up = timeout.map(|t| Instant::now() + t);
    let mut out = std::io::stdout();
    loop {
        let quiet = (!stdin_open).then(|| last_output + idle);
        tokio::select! {
            k = keys.recv(), if stdin_open => match k {
                Some(chunk) => {
                    let detach = if interactive { chunk.iter().position(|b| *b == DETACH) } else { None };
                    let send = &chunk[..detach.unwrap_or(chunk.len())];
                    if !send.is_empty() {
                        ws.send(Message::binary(send.to_vec())).await.context("sending keystrokes to the console")?;
                    }
                    if detach.is_some() {
                        let _ = ws.close(None).await;
                        eprint!("{nl}Detached from VM {id}'s console.{nl}");
                        return Ok(());
                    }
                }
                None => {
                    stdin_open = false;
                    last_output = Instant::now();
                }
            },
            m = ws.next() => match m {
                Some(Ok(Message::Binary(b))) => {
                    out.write_all(&b)?;
                    out.flush()?;
                    last_output = Instant::now();
                }
                Some(Ok(Message::Text(t))) => {
                    out.write_all(t.as_bytes())?;
                    out.flush()?;
                    last_output = Instant::now();
                }
                Some(Ok(Message::Close(f))) => {
                    let Some(f) = f else { return Ok(()) };
                    if matches!(f.code, CloseCode::Normal | CloseCode::Away) {
                        if !f.reason.is_empty() {
                            eprint!("{nl}The console closed: {}{nl}", f.reason);
                        }
                        return Ok(());
                    }
                    bail!("the console closed: {} ({})", f.reason, u16::from(f.code));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("the console connection broke: {e}"),
                None => return Ok(()),
            },
            _ = sleep_until(quiet) => {
                let _ = ws.close(None).await;
                return Ok(());
            }
            _ = sleep_until(give_up) => {
                let _ = ws.close(None).await;
                eprint!("{nl}--timeout reached: detached from VM {id}'s console.{nl}");
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_durations() {
        assert_eq!(ws_url("http://127.0.0.1:8080", "/vms/x/console").unwrap(), "ws://127.0.0.1:8080/vms/x/console");
        assert!(ws_url("https://h", "/x").is_err());
        assert_eq!(seconds("--idle", 1.5).unwrap(), Duration::from_millis(1500));
        assert!(seconds("--idle", -1.0).unwrap_err().to_string().contains("--idle"));
        assert!(seconds("--timeout", f64::NAN).is_err());
    }
}
