//! Shared helpers for the integration tests: run a body on both store backends, call the CLI.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Output;

#[allow(unused_imports)]
pub use nereid_testkit::{Backend, Cloud};
use serde_json::Value;

/// Declares `<name>_sqlite` and `<name>_postgres` tests running `body(Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite_backend { $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)] async fn $name() { super::$name(nereid_testkit::Backend::Sqlite).await; } )* }
        mod postgres_backend { $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)] async fn $name() { super::$name(nereid_testkit::Backend::Postgres).await; } )* }
    };
}

/// Runs the `nereid` binary against a cloud (found through NEREID_URL/NEREID_TOKEN).
pub fn nereid(cloud: &Cloud, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_nereid"))
        .args(args)
        .env("NEREID_URL", &cloud.headnode.admin_url)
        .env("NEREID_TOKEN", &cloud.headnode.token)
        .env_remove("NEREID_DATA_DIR")
        .output()
        .expect("running nereid")
}

/// Like [`nereid`], but off the async runtime's threads.
pub async fn nereid_async(cloud: &Cloud, args: &[&str]) -> Output {
    let (url, token) = (cloud.headnode.admin_url.clone(), cloud.headnode.token.clone());
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_nereid"))
            .args(&args)
            .env("NEREID_URL", url)
            .env("NEREID_TOKEN", token)
            .env_remove("NEREID_DATA_DIR")
            .output()
            .expect("running nereid")
    })
    .await
    .unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts an API error's status and code, returning its body.
pub fn api_err(r: Result<Value, nereid_client::Error>, status: u16, code: &str) -> Value {
    match r {
        Err(nereid_client::Error::Api { status: s, code: c, body, .. }) => {
            assert_eq!((s, c.as_str()), (status, code), "body: {body}");
            *body
        }
        other => panic!("expected {status} {code}, got {other:?}"),
    }
}

/// A deterministic pseudo-random buffer (incompressible enough, reproducible).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha1_hex(data: &[u8]) -> String {
    use sha1::Digest;
    hex::encode(sha1::Sha1::digest(data))
}

pub fn write(path: &Path, data: &[u8]) {
    std::fs::write(path, data).unwrap();
}

/// A package body with the minimum a package needs.
pub fn package(name: &str) -> Value {
    serde_json::json!({"name": name, "version": "1.0.0", "max_physical_memory": 1024, "quota": 10240})
}

/// Reads what `nereid up` prints until it says how to stop it: the text, and the
/// `nereid admin … vm create …` example in it.
pub fn up_banner(stdout: impl std::io::Read) -> (String, Option<String>) {
    use std::io::BufRead;
    let mut text = String::new();
    let mut create = None;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        text.push_str(&line);
        text.push('\n');
        if line.trim_start().starts_with("nereid admin") && line.contains("vm create") {
            create = Some(line.trim().to_string());
        }
        if line.contains("Ctrl-C") {
            break;
        }
    }
    (text, create)
}

/// A free port whose next port is free too (for the headnode's agent listener).
pub fn free_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// The agent listener's port of the headnode whose operator API is on `port`.
pub fn agent_port(port: u16) -> u16 {
    port + 1
}

/// Creates the tenants `alice` and `bob` through the admin API, with CloudAPI signing
/// keys from seeds 1 and 2; their UUIDs.
pub async fn alice_and_bob(cloud: &Cloud) -> (String, String) {
    let mut ids = Vec::new();
    for (login, k) in [("alice", 1u8), ("bob", 2)] {
        let body = serde_json::json!({"login": login, "email": format!("{login}@example.com"), "keys": [{"key": nereid_testkit::cloudapi::Key::from_seed(k).openssh()}]});
        let a = cloud.client.post("/accounts", &body).await.unwrap();
        ids.push(a["uuid"].as_str().unwrap().to_string());
    }
    (ids[0].clone(), ids[1].clone())
}
