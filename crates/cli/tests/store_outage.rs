//! The store goes away under load and comes back: requests during the outage answer 503
//! with a clear message, service resumes by itself (no restart), and no write the API
//! acknowledged is lost. PostgreSQL is cut off by a TCP proxy the test controls (it drops
//! every connection and refuses new ones), which is what a database restart looks like
//! from the headnode.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use nereid_testkit::Options;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy to `target` that can be switched off (all connections dropped).
struct Proxy {
    port: u16,
    down: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (d, c) = (down.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = l.accept().await else { return };
                if d.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let h = tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                c.lock().unwrap().push(h.abort_handle());
            }
        });
        Proxy { port, down, conns }
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            for h in self.conns.lock().unwrap().drain(..) {
                h.abort();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_cut_off_under_load_answers_503_and_recovers_without_losing_acknowledged_writes() {
    let real = nereid_store::testing::fresh_pg_url().await.unwrap();
    let mut url = reqwest::Url::parse(&real).unwrap();
    let target = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    let proxy = Proxy::start(target).await;
    url.set_host(Some("127.0.0.1")).unwrap();
    url.set_port(Some(proxy.port)).unwrap();
    let cloud = Cloud::start_with(Options { store_url: Some(url.to_string()), ..Options::new(Backend::Postgres) }).await.unwrap();
    let c = cloud.client.clone();
    let writer = tokio::spawn(async move {
        let (mut acked, mut refused) = (Vec::new(), Vec::new());
        let end = Instant::now() + Duration::from_secs(9);
        let mut i = 0;
        while Instant::now() < end {
            let name = format!("p{i}");
            match c.post("/packages", &json!({"name": name, "version": "1.0.0", "max_physical_memory": 128, "quota": 1024})).await {
                Ok(_) => acked.push(name),
                Err(e) => refused.push((e.status(), e.to_string())),
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (acked, refused)
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.set_down(true);
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.set_down(false);
    let (acked, refused) = writer.await.unwrap();
    assert!(!refused.is_empty(), "the outage was seen");
    for (status, message) in &refused {
        assert_eq!(*status, Some(503), "{message}");
        assert!(message.contains("state store is unavailable"), "{message}");
    }
    // It came back by itself: the last writes were acknowledged.
    assert!(acked.last().is_some_and(|n| n.trim_start_matches('p').parse::<usize>().unwrap() > refused.len()), "{acked:?}");
    let listed = cloud.client.get("/packages?limit=1000").await.unwrap();
    let names: std::collections::HashSet<&str> = listed.as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
    for n in &acked {
        assert!(names.contains(n.as_str()), "acknowledged package {n} was lost");
    }
}
