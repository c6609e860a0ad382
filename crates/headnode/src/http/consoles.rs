//! VM consoles: `/vms/{uuid}/console` (serial; WebSocket, or `?log=true` for the log) and
//! `/vms/{uuid}/vnc` (graphical; WebSocket carrying raw RFB, as noVNC speaks it).
//!
//! The handlers find the VM's agent and connect to it through `app::consoles` (so a
//! refusal is a JSON error before any upgrade), then pump messages between the two
//! WebSockets until either side closes. Pings are answered hop by hop, not forwarded.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, header};
use axum::response::IntoResponse;
use futures_util::{SinkExt, StreamExt};
use nereid_types::ApiError;
use nereid_types::query::{Param, QKind};
use tokio_tungstenite::tungstenite::Message as AgentMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame as AgentCloseFrame;

use super::{Api, AppState, BodyDoc, Doc, HttpError, HttpResult, RespDoc, Route, parse_query, path_uuid};
use crate::app::consoles::{AgentSocket, ConsoleKind};

const CONSOLE_PARAMS: &[Param] = &[Param::new(
    "log",
    QKind::Bool,
    "true: answer the VM's whole serial console log (the last 1 MiB of output, raw bytes) instead of attaching.",
)];

pub fn routes() -> Vec<Route> {
    let doc = |id, summary, query, response| Doc { id, tag: "VMAPI", summary, query, body: BodyDoc::None, response };
    vec![
        Route::new(
            Method::GET,
            "/vms/{uuid}/console",
            doc(
                "GetVmConsole",
                "The VM's serial console (com1). As a WebSocket (101): the recent output, then live output, as binary messages; binary or text messages sent are keystrokes to the guest; several operators may attach at once. With log=true and no upgrade: the whole console log as application/octet-stream. A plain request is 400; a VM on a simulated server has no console (409 NoConsole).",
                CONSOLE_PARAMS,
                RespDoc::Binary,
            ),
            console,
        ),
        Route::new(
            Method::GET,
            "/vms/{uuid}/vnc",
            doc(
                "GetVmVnc",
                "The VM's graphical console as a WebSocket (101) carrying raw RFB (VNC) in binary messages both ways, as noVNC speaks it (the \"binary\" subprotocol is accepted). Only while the VM runs (else 409 VmNotRunning); a VM on a simulated server has none (409 NoConsole); a plain request is 400.",
                &[],
                RespDoc::Empty(101),
            ),
            vnc,
        ),
    ]
}

fn needs_upgrade(hint: &str) -> HttpError {
    HttpError(ApiError::bad_request(format!("this endpoint needs a WebSocket upgrade{hint}")))
}

async fn console(
    State(s): State<AppState>,
    Path(uuid): Path<String>,
    RawQuery(raw): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> HttpResult {
    let q = parse_query(Api::Papi, CONSOLE_PARAMS, raw.as_deref())?;
    let uuid = path_uuid(Api::Papi, "uuid", &uuid)?;
    let target = s.app.console_target(uuid).await?;
    if q.flag("log") {
        let log = s.app.console_log(&target).await?;
        return Ok(([(header::CONTENT_TYPE, "application/octet-stream")], log).into_response());
    }
    let ws = ws.map_err(|_| needs_upgrade(" (or ?log=true for the console log)"))?;
    let agent = s.app.console_connect(&target, ConsoleKind::Serial).await?;
    Ok(ws.on_upgrade(move |client| proxy(client, agent)))
}

async fn vnc(
    State(s): State<AppState>,
    Path(uuid): Path<String>,
    RawQuery(raw): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> HttpResult {
    parse_query(Api::Papi, &[], raw.as_deref())?;
    let uuid = path_uuid(Api::Papi, "uuid", &uuid)?;
    let target = s.app.console_target(uuid).await?;
    let ws = ws.map_err(|_| needs_upgrade(""))?;
    let agent = s.app.console_connect(&target, ConsoleKind::Vnc).await?;
    Ok(ws.protocols(["binary"]).on_upgrade(move |client| proxy(client, agent)))
}

/// Pumps messages between the operator's WebSocket and the agent's until either closes;
/// a close frame (and its reason) is passed on. The web console's console pages use it too.
pub(crate) async fn proxy(mut client: WebSocket, mut agent: AgentSocket) {
    loop {
        tokio::select! {
            m = client.recv() => {
                let out = match m {
                    Some(Ok(Message::Binary(b))) => AgentMessage::Binary(b),
                    Some(Ok(Message::Text(t))) => AgentMessage::text(t.as_str()),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(f))) => {
                        let f = f.map(|f| AgentCloseFrame { code: f.code.into(), reason: f.reason.as_str().into() });
                        let _ = agent.close(f).await;
                        return;
                    }
                    Some(Err(_)) | None => {
                        let _ = agent.close(None).await;
                        return;
                    }
                };
                if agent.send(out).await.is_err() {
                    return lost(&mut client).await;
                }
            }
            m = agent.next() => {
                let out = match m {
                    Some(Ok(AgentMessage::Binary(b))) => Message::Binary(b),
                    Some(Ok(AgentMessage::Text(t))) => Message::Text(t.as_str().into()),
                    Some(Ok(AgentMessage::Close(f))) => {
                        let f = f.map(|f| CloseFrame { code: f.code.into(), reason: f.reason.as_str().into() });
                        let _ = client.send(Message::Close(f)).await;
                        return;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return lost(&mut client).await,
                };
                if client.send(out).await.is_err() {
                    let _ = agent.close(None).await;
                    return;
                }
            }
        }
    }
}

/// The connection to the agent broke: tell the operator.
async fn lost(client: &mut WebSocket) {
    let reason = "the connection to the VM's server was lost";
    let _ = client.send(Message::Close(Some(CloseFrame { code: 1011, reason: reason.into() }))).await;
}
