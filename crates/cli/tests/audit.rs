//! The audit log (issue 17 item 5): a package created on the operator API, a machine
//! deleted through CloudAPI and one deleted from the web console are recorded with who did
//! it and the job it started; failed logins (a bad CloudAPI signature, an unknown key, a
//! wrong operator token, a wrong web console password) are recorded as failed with the
//! name they tried; reads are not recorded; `since` and `account` filter; and no API —
//! operator, CloudAPI or web console — can change or delete a record.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{nereid_async, stderr, stdout};
use nereid_testkit::cloudapi::{Client as Tenant, Key, Signing};
use nereid_testkit::{Backend, Cloud, Options};
use serde_json::{Value, json};

/// Every record, newest first.
async fn all(cloud: &Cloud) -> Vec<Value> {
    cloud.client.get("/audit?limit=1000").await.unwrap().as_array().unwrap().clone()
}

/// The one record matching `f` (fails naming the log when there is none or several).
fn one<'a>(log: &'a [Value], what: &str, f: impl Fn(&Value) -> bool) -> &'a Value {
    let found: Vec<&Value> = log.iter().filter(|r| f(r)).collect();
    assert_eq!(found.len(), 1, "{what}: {} records match in {}", found.len(), serde_json::to_string_pretty(log).unwrap());
    found[0]
}

fn is(r: &Value, api: &str, method: &str, path: &str) -> bool {
    r["api"] == api && r["method"] == method && r["path"] == path
}

/// The uuid of the `task` job of VM `vm`.
async fn job_of(cloud: &Cloud, vm: &str, task: &str) -> String {
    let jobs = cloud.client.get(&format!("/jobs?vm_uuid={vm}&task={task}")).await.unwrap();
    let jobs = jobs.as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    jobs[0]["uuid"].as_str().unwrap().to_string()
}

both_backends!(audit_log_records_changes_and_failed_logins_and_cannot_be_edited);

async fn audit_log_records_changes_and_failed_logins_and_cannot_be_edited(backend: Backend) {
    use nereid_testkit::web::{PASSWORD, csrf_token, http_client, post_login, sign_in_cookie};
    let cloud = Cloud::start_with(Options { sim_servers: 1, ..Options::new(backend) }.cloudapi_http().web_http()).await.unwrap();
    let seed = cloud.seed().await.unwrap();
    let (alice_uuid, _bob) = common::alice_and_bob(&cloud).await;
    let operator = nereid_headnode::app::audit::token_fingerprint(&cloud.headnode.token);
    let cloud_url = cloud.headnode.cloudapi.as_ref().unwrap().url.clone();
    let alice = Tenant::new(&cloud_url, "alice", Key::from_seed(1));

    // A package created on the operator API: the operator, no job.
    let pkg = cloud.client.post("/packages", &common::package("audited")).await.unwrap();
    // Reads change nothing and are not recorded.
    cloud.client.get("/packages").await.unwrap();
    cloud.client.get(&format!("/packages/{}", pkg["uuid"].as_str().unwrap())).await.unwrap();
    let a = alice.send("GET", "/my/machines", None, Signing::Good).await.unwrap();
    assert_eq!(a.status, 200, "{}", a.text);

    // A machine of alice's deleted by alice through CloudAPI (signed): the destroy job.
    let mut body = seed.vm_body("doomed");
    body["owner_uuid"] = json!(alice_uuid);
    let (vm, job) = cloud.create_vm(&body).await.unwrap();
    assert_eq!(cloud.wait_job(&job).await.unwrap()["execution"], "succeeded");
    let del = alice.send("DELETE", &format!("/my/machines/{vm}"), None, Signing::Good).await.unwrap();
    assert_eq!(del.status, 204, "{}", del.text);
    let destroy = job_of(&cloud, &vm, "destroy").await;

    // Failed logins: a corrupt signature, a key nobody has, a wrong operator token, a wrong password.
    let bad = alice.send("GET", "/my/machines", None, Signing::Corrupt).await.unwrap();
    assert_eq!(bad.status, 401, "{}", bad.text);
    let mallory = Tenant::new(&cloud_url, "mallory", Key::from_seed(7));
    let bad = mallory.send("POST", "/my/machines", Some(&json!({"package": seed.package})), Signing::Good).await.unwrap();
    assert_eq!(bad.status, 401, "{}", bad.text);
    let wrong = cloud.client_with_token("not-the-token").get("/packages").await;
    common::api_err(wrong, 401, "Unauthorized");
    let web = cloud.web_url().unwrap();
    let http = http_client(&cloud).unwrap();
    let r = post_login(&http, &web, "carol", "not the password").await.unwrap();
    assert_eq!(r.status(), 401);

    // The web console: carol signs in and deletes her machine from its page.
    let carol = cloud.web_account("carol", false).await.unwrap();
    let mut body = seed.vm_body("carols");
    body["owner_uuid"] = carol["uuid"].clone();
    let (carols, job) = cloud.create_vm(&body).await.unwrap();
    assert_eq!(cloud.wait_job(&job).await.unwrap()["execution"], "succeeded");
    let cookie = sign_in_cookie(&http, &web, "carol", PASSWORD).await.unwrap();
    let csrf = csrf_token(&http, &web, &cookie).await.unwrap();
    let r = http
        .post(format!("{web}/machines/{carols}/delete"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection(), "{}: {}", r.status(), r.text().await.unwrap());
    let carols_destroy = job_of(&cloud, &carols, "destroy").await;

    let log = all(&cloud).await;
    let ids: Vec<&str> = log.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(ids, sorted, "newest first");

    // The seed made a package too: this test's is the newer.
    let creates: Vec<&Value> = log.iter().filter(|r| is(r, "admin", "POST", "/packages") && r["status"] == 201).collect();
    assert_eq!(creates.len(), 2, "{creates:?}");
    let created = creates[0];
    assert_eq!(created["actor"], json!({"kind": "operator", "name": operator}));
    assert_eq!((created["result"].as_str(), created.get("job_uuid"), created["auth_failed"].as_bool()), (Some("ok"), None, Some(false)));
    assert!(created["remote"].as_str().is_some_and(|r| r == "127.0.0.1"), "{created}");
    assert!(!log.iter().any(|r| r["method"] == "GET" && r["status"] != 401), "reads are not recorded");

    let deleted = one(&log, "the CloudAPI delete", |r| is(r, "cloudapi", "DELETE", &format!("/my/machines/{vm}")));
    assert_eq!(deleted["actor"], json!({"kind": "account", "name": "alice", "key": Key::from_seed(1).md5()}));
    assert_eq!((deleted["account"].as_str(), deleted["status"].as_u64()), (Some("alice"), Some(204)));
    assert_eq!(deleted["job_uuid"].as_str(), Some(destroy.as_str()), "the job the delete started");

    let corrupt = one(&log, "the corrupt signature", |r| is(r, "cloudapi", "GET", "/my/machines"));
    assert_eq!(
        (corrupt["status"].as_u64(), corrupt["result"].as_str(), corrupt["auth_failed"].as_bool()),
        (Some(401), Some("InvalidCredentials"), Some(true))
    );
    assert_eq!(corrupt["actor"]["name"], "alice", "the login it tried");
    let unknown = one(&log, "the unknown key", |r| r["actor"]["name"] == "mallory");
    assert_eq!(
        (unknown["method"].as_str(), unknown["status"].as_u64(), unknown["auth_failed"].as_bool()),
        (Some("POST"), Some(401), Some(true))
    );
    let token = one(&log, "the wrong token", |r| is(r, "admin", "GET", "/packages"));
    assert_eq!((token["status"].as_u64(), token["auth_failed"].as_bool()), (Some(401), Some(true)));
    let tried = token["actor"]["name"].as_str().unwrap();
    assert_eq!(tried, nereid_headnode::app::audit::token_fingerprint("not-the-token"));
    assert_ne!(tried, operator);
    let failed = one(&log, "the wrong password", |r| is(r, "web", "POST", "/login") && r["status"] == 401);
    assert_eq!((failed["actor"]["name"].as_str(), failed["auth_failed"].as_bool()), (Some("carol"), Some(true)));
    let signed_in = one(&log, "carol's sign-in", |r| is(r, "web", "POST", "/login") && r["status"] == 303);
    assert_eq!((signed_in["account"].as_str(), signed_in["result"].as_str()), (Some("carol"), Some("ok")));
    let web_delete = one(&log, "the web console delete", |r| is(r, "web", "POST", &format!("/machines/{carols}/delete")));
    assert_eq!(web_delete["actor"], json!({"kind": "web_session", "name": "carol"}));
    assert_eq!(web_delete["job_uuid"].as_str(), Some(carols_destroy.as_str()), "the job the page started");
    assert!(
        !log.iter().any(|r| r["path"] == format!("/my/machines/{carols}")),
        "the page's in-process CloudAPI call is not recorded twice"
    );
    let text = serde_json::to_string(&log).unwrap();
    for secret in [cloud.headnode.token.as_str(), "not-the-token", "not the password", PASSWORD] {
        assert!(!text.contains(secret), "a secret reached the audit log");
    }

    // Filters: by account, and by time.
    let alices = cloud.client.get("/audit?account=alice").await.unwrap();
    let alices = alices.as_array().unwrap();
    assert!(alices.iter().all(|r| r["account"] == "alice"), "{alices:?}");
    assert_eq!(alices.len(), log.iter().filter(|r| r["account"] == "alice").count());
    assert!(alices.iter().any(|r| r["id"] == deleted["id"]) && alices.iter().any(|r| r["id"] == corrupt["id"]));
    let since = deleted["time"].as_str().unwrap();
    let later = cloud.client.get(&format!("/audit?since={}", nereid_client::enc(since))).await.unwrap();
    let later: Vec<&str> = later.as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    let expected: Vec<&str> = log.iter().filter(|r| r["time"].as_str().unwrap() >= since).map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(later, expected);
    assert!(later.contains(&deleted["id"].as_str().unwrap()) && !later.contains(&created["id"].as_str().unwrap()));
    let page = cloud.client.get(&format!("/audit?limit=2&marker={}", ids[1])).await.unwrap();
    let page: Vec<&str> = page.as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(page, ids[2..4].to_vec(), "the page after the marker");
    common::api_err(cloud.client.get("/audit?since=yesterday").await, 422, "InvalidParameter");

    // No API edits it: other methods are refused on the operator API, CloudAPI and the
    // web console have no route to it, and the records stay as they were.
    let raw = reqwest::Client::new();
    let id = deleted["id"].as_str().unwrap();
    for (method, path) in [
        ("PUT", "/audit".to_string()),
        ("POST", "/audit".into()),
        ("DELETE", "/audit".into()),
        ("PUT", format!("/audit/{id}")),
        ("POST", format!("/audit/{id}")),
        ("DELETE", format!("/audit/{id}")),
        ("PATCH", format!("/audit/{id}")),
    ] {
        let r = raw
            .request(method.parse().unwrap(), format!("{}{path}", cloud.headnode.admin_url))
            .bearer_auth(&cloud.headnode.token)
            .json(&json!({"status": 200, "actor": {"kind": "anonymous"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{method} {path}");
        let r = alice.send(method, &path, Some(&json!({"status": 200})), Signing::Good).await.unwrap();
        // Refused one way or another: no such route (404/405), `audit` taken as an account
        // alice may not act on (403), or PUT on any path as SetRoleTags, not implemented (501).
        assert!(matches!(r.status, 403 | 404 | 405 | 501), "CloudAPI {method} {path}: {} {}", r.status, r.text);
        let r = http
            .request(method.parse().unwrap(), format!("{web}{path}"))
            .header("cookie", &cookie)
            .form(&[("csrf", csrf.as_str())])
            .send()
            .await
            .unwrap();
        assert!(matches!(r.status().as_u16(), 404 | 405), "web {method} {path}: {}", r.status());
    }
    for path in ["/audit", "/my/audit"] {
        let a = alice.send("GET", path, None, Signing::Good).await.unwrap();
        assert!(matches!(a.status, 403 | 404) && !a.body.is_array(), "CloudAPI has no audit log: GET {path}: {} {}", a.status, a.text);
    }
    assert_eq!(&cloud.client.get(&format!("/audit/{id}")).await.unwrap(), deleted, "the record is unchanged");
    let after = all(&cloud).await;
    for r in &log {
        assert!(after.contains(r), "record {} changed or went", r["id"]);
    }
    let refused = one(&after, "the refused PUT", |r| is(r, "admin", "PUT", &format!("/audit/{id}")));
    assert_eq!((refused["status"].as_u64(), refused["result"].as_str()), (Some(405), Some("BadMethod")), "attempts are recorded too");

    // The CLI lists them: a table for people, JSON with the filters.
    let o = nereid_async(&cloud, &["admin", "audit", "list"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    assert!(table.starts_with("TIME") && table.lines().next().unwrap().contains("JOB"), "{table}");
    let row = table.lines().find(|l| l.contains(&format!("/my/machines/{vm}"))).unwrap_or_else(|| panic!("{table}"));
    for want in ["cloudapi", "account alice", "DELETE", "204", destroy.as_str()] {
        assert!(row.contains(want), "{want} missing from {row}");
    }
    assert!(table.lines().any(|l| l.contains("/login") && l.contains("401 Unauthorized")), "{table}");
    let o = nereid_async(&cloud, &["admin", "audit", "list", "--json", "--account", "alice", "--since", "1h", "--limit", "1"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let listed: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["account"], "alice", "{listed}");

    // Retention: the pruner deletes the records made before its cutoff, and only those.
    let before = all(&cloud).await;
    let ms = |r: &Value| r["id"].as_str().unwrap()[..13].parse::<i64>().unwrap();
    let cut = ms(deleted);
    let kept: Vec<Value> = before.iter().filter(|r| ms(r) >= cut).cloned().collect();
    assert!(kept.len() < before.len() && kept.iter().any(|r| r["id"] == deleted["id"]));
    let gone = cloud.headnode.app.prune_audit(cut).await.unwrap();
    assert_eq!(gone, before.len() - kept.len());
    assert_eq!(all(&cloud).await, kept);

    // Nothing failed to write.
    let metrics = raw
        .get(format!("{}/metrics", cloud.headnode.admin_url))
        .bearer_auth(&cloud.headnode.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.lines().any(|l| l == "nereid_audit_write_failures 0"), "{metrics}");

    // A flood of bad credentials from one address: ten records a minute, then one summary
    // (the last attempt, with how many went unrecorded); every attempt is accounted for.
    let flood_start = nereid_types::time::now_ms();
    let started = std::time::Instant::now();
    for _ in 0..50 {
        let r = raw.get(format!("{}/packages", cloud.headnode.admin_url)).bearer_auth("flood").send().await.unwrap();
        assert_eq!(r.status(), 401);
    }
    let minutes = started.elapsed().as_secs() / 60 + 1;
    let log = all(&cloud).await;
    let flood: Vec<&Value> =
        log.iter().filter(|r| r["id"].as_str().unwrap()[..13].parse::<i64>().unwrap() >= flood_start && r["auth_failed"] == true).collect();
    assert!(flood.iter().all(|r| r["result"] == "Unauthorized" && r["remote"] == "127.0.0.1"), "{flood:?}");
    assert!(flood.len() as u64 <= 11 * minutes, "{} records for 50 attempts in {minutes} minute(s): {flood:?}", flood.len());
    let summaries: Vec<u64> = flood.iter().filter_map(|r| r["suppressed"].as_u64()).collect();
    assert!(!summaries.is_empty(), "the count is present: {flood:?}");
    let accounted = (flood.len() - summaries.len()) as u64 + summaries.iter().sum::<u64>();
    assert_eq!(accounted, 50, "recorded + suppressed: {flood:?}");
}

/// The retention is a headnode flag, 90 days unless told.
#[test]
fn retention_is_a_headnode_flag() {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_nereid")).args(["headnode", "--help"]).output().unwrap();
    let help = stdout(&o);
    let line = help
        .lines()
        .skip_while(|l| !l.contains("--audit-retention-days <DAYS>"))
        .take(3)
        .flat_map(str::split_whitespace)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(line.contains("0 keeps them forever") && line.contains("[default: 90]"), "{help}");
}
