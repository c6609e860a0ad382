//! The serving layer end to end on loopback: a full listener makes room by closing its
//! longest-idle connection, and a stalled request body ends in a 408 and a close.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};
use nereid_serve::{Limits, Tcp, bind, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(limits: Limits) -> SocketAddr {
    let router = Router::new()
        .route("/ping", get(|| async { "pong" }))
        .route("/echo", post(|body: axum::body::Bytes| async move { format!("{} bytes", body.len()) }));
    let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(Tcp::new(listener, "test"), router, limits, std::future::pending()));
    addr
}

/// One keep-alive `GET /ping` on `c`; its answer.
async fn ping(c: &mut TcpStream) -> String {
    c.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await.unwrap().unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Whether the server closed `c` within `wait`.
async fn closed_within(c: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(wait, c.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

#[tokio::test]
async fn a_full_listener_closes_its_longest_idle_connection_for_a_newcomer() {
    let addr = start(Limits { max_connections: 4, ..Limits::default() }).await;
    let mut conns = Vec::new();
    for _ in 0..4 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        assert!(ping(&mut c).await.ends_with("pong"));
        conns.push(c);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The first is now the longest idle; use it again so the second is.
    assert!(ping(&mut conns[0]).await.ends_with("pong"));
    let mut fresh = TcpStream::connect(addr).await.unwrap();
    assert!(ping(&mut fresh).await.ends_with("pong"), "a fresh client is served");
    assert!(closed_within(&mut conns[1], Duration::from_secs(2)).await, "the longest-idle connection made room");
    for i in [0, 2, 3] {
        assert!(!closed_within(&mut conns[i], Duration::from_millis(100)).await, "connection {i} is kept");
    }
}

#[tokio::test]
async fn a_stalled_body_gets_408_and_a_close() {
    let addr = start(Limits { body_read_timeout: Duration::from_millis(500), ..Limits::default() }).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let t = Instant::now();
    c.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345").await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_string(&mut answer)).await.unwrap().unwrap();
    assert!(t.elapsed() >= Duration::from_millis(500), "{:?}", t.elapsed());
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(answer.contains("\"code\":\"RequestTimeout\""), "{answer}");
    // A body that keeps coming is read in full.
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nConnection: close\r\n\r\n12345").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.write_all(b"67890").await.unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 ") && answer.ends_with("10 bytes"), "{answer}");
}

#[tokio::test]
async fn idle_and_slow_heads_are_closed_after_their_timeouts() {
    let limits = Limits { idle_timeout: Duration::from_millis(600), header_read_timeout: Duration::from_millis(400), ..Limits::default() };
    let addr = start(limits).await;
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let t = Instant::now();
    assert!(closed_within(&mut idle, Duration::from_secs(3)).await);
    assert!(t.elapsed() >= Duration::from_millis(600), "{:?}", t.elapsed());
    // A head trickled a byte every 100 ms is cut off 400 ms after its first byte.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let t = Instant::now();
    let mut closed = false;
    for b in b"GET /ping HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
        if slow.write_all(&[*b]).await.is_err() || closed_within(&mut slow, Duration::from_millis(100)).await {
            closed = true;
            break;
        }
    }
    assert!(closed, "the slow head was cut off");
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(400) && took < Duration::from_millis(1500), "{took:?}");
}
