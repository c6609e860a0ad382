//! `GET /servers/{server}/vms/{vm}/boot-disk`: the VM's boot disk flattened into one
//! standalone disk (its image base and everything the guest wrote), streamed to the
//! headnode that makes an image of it (`triton image create`).
//!
//! ```text
//!   VM stopped (and asked to stay so)? ─no─► 409 VmNotStopped
//!        │ yes
//!   backend flattens disk0 into a new file ─fails─► 500 naming why (no file left)
//!        │
//!   open it, unlink it, stream the open file (its bytes go when the stream ends,
//!   however it ends: a dropped connection leaves nothing on the server)
//! ```
//! The qemu backend answers a compressed qcow2, the sim backend a small raw disk; the
//! headnode inspects what it receives rather than trusting a header.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use tokio::io::AsyncReadExt;

use super::{ApiState, error, vm_uuid};

/// Bytes read from the file per chunk sent.
const CHUNK: usize = 1 << 20;

pub async fn boot_disk(State(s): State<ApiState>, Path((server, vm)): Path<(String, String)>) -> Response {
    let Some(n) = s.node(&server) else { return error(StatusCode::NOT_FOUND, "ResourceNotFound", "no such server") };
    let vm = match vm_uuid(&vm) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let path = match n.node.export_boot_disk(vm).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return error(StatusCode::NOT_FOUND, nereid_types::agent::VM_NOT_FOUND, format!("VM {vm} does not exist on server {server}"));
        }
        Err(e) if e.contains("exported only while it is stopped") => return error(StatusCode::CONFLICT, "VmNotStopped", e),
        Err(e) => {
            tracing::warn!(vm = %vm, error = %e, "exporting a boot disk failed");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e);
        }
    };
    let opened = tokio::fs::File::open(&path).await;
    // Unlinked at once: the open file keeps its bytes until the stream is dropped.
    let _ = tokio::fs::remove_file(&path).await;
    let file = match opened {
        Ok(f) => f,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", format!("opening the exported disk: {e}")),
    };
    let len = match file.metadata().await {
        Ok(m) => m.len(),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", format!("reading the exported disk: {e}")),
    };
    tracing::info!(vm = %vm, bytes = len, "streaming the VM's flattened boot disk");
    // A read error ends the stream (after it is sent), so the headnode sees a broken body.
    let body = stream::unfold(Some(file), |f| async move {
        let mut f = f?;
        let mut buf = vec![0u8; CHUNK];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(k) => {
                buf.truncate(k);
                Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(buf)), Some(f)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream".to_string()), (header::CONTENT_LENGTH, len.to_string())],
        Body::from_stream(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use serde_json::{Value, json};
    use uuid::Uuid;

    use crate::NodeRuntime;
    use crate::api::{ApiState, router};
    use crate::backend::sim::{Delays, Sim, sim_disk};
    use crate::supervisor::{Node, Upstream};

    struct NoUpstream;

    #[async_trait::async_trait]
    impl Upstream for NoUpstream {
        async fn metadata_write(&self, _: Uuid, _: &crate::metadata::MetadataWrite) -> Result<(), String> {
            Err("no headnode in this test".into())
        }
    }

    fn ensure(vm: Uuid, state: &str, generation: i64) -> nereid_types::agent::Ensure {
        serde_json::from_value(json!({"state": state, "definition_generation": generation, "definition": {
            "uuid": vm, "brand": "bhyve", "owner_uuid": Uuid::nil(), "ram": 256, "vcpus": 1, "disks": [], "nics": []}}))
        .unwrap()
    }

    async fn settle(node: &Node, vm: Uuid, state: &str) {
        let end = Instant::now() + Duration::from_secs(30);
        while node.get(vm).map(|s| s.state) != Some(state.to_string()) {
            assert!(Instant::now() < end, "VM never became {state}: {:?}", node.get(vm));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_stopped_vm_s_disk_streams_a_running_one_is_refused_and_an_unknown_one_is_not_here() {
        let dir = tempfile::tempdir().unwrap();
        let server = Uuid::new_v4();
        let sim = Sim::open(dir.path().join("sim.json"), Delays { create: Duration::ZERO, ..Delays::default() });
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        std::mem::forget(rx);
        let node = Node::open(server, Arc::new(sim), Arc::new(NoUpstream), dir.path().join("node"), tx).await.unwrap();
        let rt = Arc::new(NodeRuntime {
            uuid: server,
            identity: "test".into(),
            migrations: crate::migration::Migrations::open(node.clone()).unwrap(),
            node: node.clone(),
            sysinfo: Default::default(),
            paused: Default::default(),
            ram_mib: 1024,
            disk_mib: 1024,
            hwmon: Default::default(),
            smart: Default::default(),
        });
        let app = router(ApiState { nodes: Arc::new(vec![rt]), hwmon: dir.path().join("no-hwmon") });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let get = |vm: Uuid| reqwest::get(format!("{url}/servers/{server}/vms/{vm}/boot-disk"));

        let vm = Uuid::new_v4();
        node.ensure(ensure(vm, "running", 1));
        settle(&node, vm, "running").await;
        let r = get(vm).await.unwrap();
        assert_eq!(r.status(), 409);
        assert_eq!(r.json::<Value>().await.unwrap()["code"], "VmNotStopped");

        node.ensure(ensure(vm, "stopped", 1));
        settle(&node, vm, "stopped").await;
        let r = get(vm).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.content_length(), Some(sim_disk(vm).len() as u64));
        assert_eq!(r.bytes().await.unwrap().as_ref(), sim_disk(vm).as_slice());
        // Nothing is left behind on the server.
        let left: Vec<_> =
            std::fs::read_dir(dir.path()).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with("export-")).collect();
        assert!(left.is_empty(), "{left:?}");

        let r = get(Uuid::new_v4()).await.unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(r.json::<Value>().await.unwrap()["code"], nereid_types::agent::VM_NOT_FOUND);
    }
}
