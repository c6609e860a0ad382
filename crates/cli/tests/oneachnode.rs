//! `nereid admin oneachnode` (issue 17 item 4) on three simulated servers: a command run on
//! each answers each server's own output and status; a server whose command hangs times
//! out alone while the others answer; `-n` picks servers by hostname or UUID; a file put on
//! every server is got back from each; nobody but the operator (no token, a wrong token, a
//! CloudAPI account) gets a command run; and the audit log records each request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{nereid_async, stderr, stdout};
use nereid_testkit::cloudapi::{Client as Tenant, Key, Signing};
use nereid_testkit::{Backend, Cloud, Options};
use serde_json::{Value, json};

/// The JSON lines of a `-j` run, by server UUID.
fn by_server(out: &str) -> std::collections::BTreeMap<String, Value> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            (v["server_uuid"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

both_backends!(oneachnode_runs_on_each_server_times_out_alone_moves_files_and_is_audited);

async fn oneachnode_runs_on_each_server_times_out_alone_moves_files_and_is_audited(backend: Backend) {
    let cloud = Cloud::start_with(Options { sim_servers: 3, ..Options::new(backend) }.cloudapi_http()).await.unwrap();
    let servers: Vec<(String, String)> = cloud
        .wait_servers(3)
        .await
        .unwrap()
        .iter()
        .map(|s| (s["uuid"].as_str().unwrap().to_string(), s["hostname"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(servers.len(), 3);

    // Each server's own output (the agent sets SERVER_UUID and HOSTNAME) and status.
    let o = nereid_async(&cloud, &["admin", "oneachnode", "-j", "echo \"$SERVER_UUID $HOSTNAME\"; exit 0"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let results = by_server(&stdout(&o));
    assert_eq!(results.len(), 3, "{}", stdout(&o));
    for (uuid, hostname) in &servers {
        let r = &results[uuid];
        assert_eq!(r["stdout"], format!("{uuid} {hostname}\n"), "{r}");
        assert_eq!(
            (r["hostname"].as_str(), r["exit_status"].as_i64(), r["timed_out"].as_bool()),
            (Some(hostname.as_str()), Some(0), Some(false))
        );
    }
    // Tables as sdc-oneachnode prints multi-line output; a non-zero exit fails the run.
    let o = nereid_async(&cloud, &["admin", "oneachnode", "echo hello; echo oops >&2; exit 3"]).await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("3 of 3 server(s) failed"), "{}", stderr(&o));
    for (uuid, hostname) in &servers {
        assert!(stdout(&o).contains(&format!("=== Output from {uuid} ({hostname}):\nhello\noops\n=== exit status 3\n")), "{}", stdout(&o));
    }

    // One server's command hangs: it alone times out (killed), the others answer.
    let (slow, _) = &servers[1];
    let hang = format!("if [ \"$SERVER_UUID\" = {slow} ]; then sleep 600; fi; echo done");
    let o = nereid_async(&cloud, &["admin", "oneachnode", "-j", "-t", "2", &hang]).await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("1 of 3 server(s) failed"), "{}", stderr(&o));
    let results = by_server(&stdout(&o));
    assert_eq!(results.len(), 3, "{}", stdout(&o));
    for (uuid, _) in &servers {
        let r = &results[uuid];
        if uuid == slow {
            assert_eq!((r["timed_out"].as_bool(), r.get("exit_status"), r["stdout"].as_str()), (Some(true), None, Some("")), "{r}");
        } else {
            assert_eq!(
                (r["timed_out"].as_bool(), r["exit_status"].as_i64(), r["stdout"].as_str()),
                (Some(false), Some(0), Some("done\n")),
                "{r}"
            );
        }
    }

    // -n picks servers by hostname or UUID.
    let o = nereid_async(&cloud, &["admin", "oneachnode", "-j", "-n", &servers[0].1, "-n", &servers[2].0, "echo picked"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let picked: Vec<String> = by_server(&stdout(&o)).into_keys().collect();
    let mut want = vec![servers[0].0.clone(), servers[2].0.clone()];
    want.sort();
    assert_eq!(picked, want);
    let o = nereid_async(&cloud, &["admin", "oneachnode", "-n", "no-such-server", "true"]).await;
    assert!(!o.status.success() && stderr(&o).contains("no-such-server"), "{}", stderr(&o));

    // A file put on every server, then got back from each (all three run on this host, so
    // each writes the same path: what comes back is what was put, once per server).
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("payload.txt");
    std::fs::write(&local, b"the payload\n").unwrap();
    let remote = tmp.path().join("remote");
    std::fs::create_dir(&remote).unwrap();
    let o = nereid_async(&cloud, &["admin", "oneachnode", "-j", "-p", local.to_str().unwrap(), "-d", remote.to_str().unwrap()]).await;
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(by_server(&stdout(&o)).len(), 3);
    let put = remote.join("payload.txt");
    assert_eq!(std::fs::read(&put).unwrap(), b"the payload\n");
    let got = tmp.path().join("got");
    let o = nereid_async(&cloud, &["admin", "oneachnode", "-g", put.to_str().unwrap(), "-d", got.to_str().unwrap()]).await;
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    for (uuid, _) in &servers {
        assert_eq!(std::fs::read(got.join(uuid)).unwrap(), b"the payload\n", "{uuid}");
    }
    // A file that is not there is that server's error, not the run's end.
    let o = nereid_async(&cloud, &["admin", "oneachnode", "-g", "/nonexistent/file", "-d", got.to_str().unwrap()]).await;
    assert!(stderr(&o).contains("3 of 3 server(s) failed") && stdout(&o).contains("=== error: the agent answered 404"), "{}", stdout(&o));

    // Nobody else gets a command run: no token, a wrong token, a CloudAPI account.
    let marker = tmp.path().join("marker");
    let cmd = json!({"command": format!("touch {}", marker.display())});
    let http = reqwest::Client::new();
    let url = format!("{}/oneachnode", cloud.headnode.admin_url);
    assert_eq!(http.post(&url).json(&cmd).send().await.unwrap().status(), 401);
    assert_eq!(http.post(&url).bearer_auth("not-the-token").json(&common::package("x")).send().await.unwrap().status(), 401);
    let (_alice, _bob) = common::alice_and_bob(&cloud).await;
    let alice = Tenant::new(&cloud.headnode.cloudapi.as_ref().unwrap().url, "alice", Key::from_seed(1));
    for path in ["/oneachnode", "/alice/oneachnode", "/my/oneachnode"] {
        let r = alice.send("POST", path, Some(&cmd), Signing::Good).await.unwrap();
        assert!(r.status >= 400, "CloudAPI {path}: {} {}", r.status, r.text);
    }
    assert!(!marker.exists(), "a command ran for someone who is not the operator");
    // Bad requests are refused naming the field, before any server is called.
    common::api_err(cloud.client.post("/oneachnode", &json!({"command": "true", "timeout_secs": 0})).await, 422, "InvalidParameter");
    common::api_err(cloud.client.post("/oneachnode", &json!({})).await, 422, "InvalidParameter");

    // The audit log: every operator run (200) and the refused attempt (401).
    let log = cloud.client.get("/audit?limit=1000").await.unwrap();
    let runs: Vec<&Value> =
        log.as_array().unwrap().iter().filter(|r| r["api"] == "admin" && r["method"] == "POST" && r["path"] == "/oneachnode").collect();
    let operator = nereid_headnode::app::audit::token_fingerprint(&cloud.headnode.token);
    let ok = runs.iter().filter(|r| r["status"] == 200 && r["actor"] == json!({"kind": "operator", "name": operator})).count();
    assert_eq!(ok, 7, "the seven accepted runs above: {runs:?}");
    assert_eq!(runs.iter().filter(|r| r["status"] == 401 && r["auth_failed"] == true).count(), 2, "{runs:?}");
    // Each run's record says what ran (a command by its SHA-256, never its text), which
    // file, and on which servers.
    let detail = |r: &&Value| r["detail"].clone();
    use nereid_headnode::app::oneachnode::{Action, audit_detail};
    let sha = |c: &str| audit_detail(&Action::Command(c.into()), None)["command_sha256"].clone();
    assert_eq!(sha("x").as_str().map(str::len), Some(64));
    let hello = runs.iter().find(|r| r["detail"]["command_sha256"] == sha("echo hello; echo oops >&2; exit 3")).map(detail);
    assert_eq!(hello.as_ref().map(|d| d["servers"].clone()), Some(json!("all")), "{runs:?}");
    let picked = runs.iter().find(|r| r["detail"]["command_sha256"] == sha("echo picked")).map(detail).unwrap_or_default();
    let mut named: Vec<&str> = picked["servers"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    named.sort_unstable();
    let mut want = vec![servers[0].0.as_str(), servers[2].0.as_str()];
    want.sort_unstable();
    assert_eq!(named, want, "{picked}");
    assert!(runs.iter().any(|r| r["detail"]["put"] == remote.join("payload.txt").to_str().unwrap()), "{runs:?}");
    assert!(runs.iter().any(|r| r["detail"]["get"] == "/nonexistent/file"), "{runs:?}");
    let text = serde_json::to_string(&runs).unwrap();
    assert!(!text.contains("echo picked") && !text.contains("exit 3"), "a command's text reached the audit log");
}
