//! The OpenAPI-driven property pass: generated requests to every documented operation of
//! CloudAPI (signed as a tenant) and the operator API (bearer token), on a loopback test
//! cloud. Values come from the documents' schemas — valid ones, boundary values, wrong
//! types, missing and extra fields, overlong strings, odd unicode, real and random path ids.
//!
//! Properties: no 5xx (only where the operation documents one: 503, 507); every answer has a
//! documented status and matches the document (success schema, another documented
//! status's schema, or Triton's `{code, message}` error); the headnode stays up. A 429 from
//! a rate limit is an error answer like any other; the pass then waits as told.
//!
//! Seeded and reproducible: `NEREID_PROPERTY_SEED` (hex, printed on failure) and
//! `NEREID_PROPERTY_CASES` (requests per operation, default 24).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/openapi.rs"]
mod openapi;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use common::*;
use nereid_testkit::Options;
use nereid_testkit::cloudapi::{Client as CloudClient, Key, Signing};
use openapi::Op;
use serde_json::{Map, Value, json};

/// SplitMix64 (the same generator as crates/fuzz's driver): stable across platforms. A
/// `plain` case keeps to values a careful client would send (valid ones, real ids), so
/// that operations are also reached past their validation.
struct Rng {
    state: u64,
    plain: bool,
}

impl Rng {
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

const ODD: &[&str] = &[
    "é",
    "𝕏",
    "\u{0}",
    "\u{202e}",
    "\u{feff}",
    "\u{fffd}",
    "\n",
    "\t",
    "'",
    "\"",
    "\\",
    "/",
    "..",
    "%",
    "%00",
    "<script>",
    " ",
    "日本",
    "\u{1f600}",
    "\u{7f}",
];

/// Real ids of the test cloud, by kind, for path parameters and uuid fields.
#[derive(Default)]
struct Pools {
    uuids: Vec<String>,
    accounts: Vec<String>,
    keys: Vec<String>,
    names: Vec<String>,
    macs: Vec<String>,
    ips: Vec<String>,
    /// Real ids by the collection they are in (the path segment before them: `machines`,
    /// `vms`, `images`, `servers`…).
    by_collection: std::collections::BTreeMap<&'static str, Vec<String>>,
}

fn random_string(rng: &mut Rng, min: usize, max: usize) -> String {
    let len = match rng.below(6) {
        _ if rng.plain => (min + rng.below(8)).clamp(min.max(1), max.max(1)),
        0 => min,
        1 => max.min(min + 300),
        _ => min + rng.below((max.saturating_sub(min)).min(24) + 1),
    };
    let mut s = String::new();
    while s.chars().count() < len {
        if !rng.plain && rng.chance(12) {
            s.push_str(ODD[rng.below(ODD.len())]);
        } else {
            s.push(char::from(b"abcdefghijklmnopqrstuvwxyz0123456789-_."[rng.below(39)]));
        }
    }
    s.chars().take(len.max(min)).collect()
}

fn random_uuid(rng: &mut Rng) -> String {
    let (a, b) = (rng.next(), rng.next());
    uuid::Uuid::from_u64_pair(a, b).to_string()
}

/// A value for `schema`: usually valid, sometimes at or just past a bound.
fn generate(schema: &Value, rng: &mut Rng, pools: &Pools, depth: usize) -> Value {
    if let Some(e) = schema.get("enum").and_then(Value::as_array).filter(|e| !e.is_empty()) {
        return rng.pick(e).clone();
    }
    if depth > 4 {
        return Value::Null;
    }
    let kind = schema.get("type").and_then(Value::as_str).unwrap_or("");
    let n = |k: &str| schema.get(k).and_then(Value::as_f64);
    match kind {
        "string" => match schema.get("format").and_then(Value::as_str) {
            Some("uuid") if !pools.uuids.is_empty() && !rng.chance(4) => json!(rng.pick(&pools.uuids)),
            Some("uuid") => json!(random_uuid(rng)),
            Some("date-time") => json!("2026-12-05T10:00:00.000Z"),
            Some("ipv4") if !pools.ips.is_empty() && rng.chance(2) => json!(rng.pick(&pools.ips)),
            Some("ipv4") => json!(format!("10.{}.{}.{}", rng.below(256), rng.below(256), rng.below(256))),
            _ => {
                let min = n("minLength").unwrap_or(0.0) as usize;
                let max = n("maxLength").map_or(64, |m| m as usize);
                json!(random_string(rng, min, max))
            }
        },
        "integer" | "number" => {
            let min = n("minimum").unwrap_or(-1000.0);
            let max = n("maximum").unwrap_or(1_000_000.0);
            let v = match rng.below(7) {
                _ if rng.plain => min.max(1.0).min(max),
                0 => min,
                1 => max,
                2 => min - 1.0,
                3 => max + 1.0,
                _ => min + (rng.next() % 10_000) as f64 % (max - min + 1.0).max(1.0),
            };
            if kind == "integer" { json!(v.round() as i64) } else { json!(v) }
        }
        "boolean" => json!(rng.chance(2)),
        "array" => {
            let items = schema.get("items").cloned().unwrap_or(json!({}));
            let min = n("minItems").unwrap_or(0.0) as usize;
            let len = min + rng.below(3);
            Value::Array((0..len).map(|_| generate(&items, rng, pools, depth + 1)).collect())
        }
        "object" => {
            let mut out = Map::new();
            let required: Vec<&str> =
                schema.get("required").and_then(Value::as_array).map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, s) in props {
                    if required.contains(&k.as_str()) || rng.chance(2) {
                        out.insert(k.clone(), generate(s, rng, pools, depth + 1));
                    }
                }
            }
            if let Some(extra) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for _ in 0..rng.below(3) {
                    out.insert(random_string(rng, 1, 12), generate(extra, rng, pools, depth + 1));
                }
            }
            Value::Object(out)
        }
        _ => scalar(rng),
    }
}

fn scalar(rng: &mut Rng) -> Value {
    match rng.below(10) {
        0 => Value::Null,
        1 => json!(true),
        2 => json!(-1),
        3 => json!(u64::MAX),
        4 => json!(1e308),
        5 => json!(9_007_199_254_740_993_i64),
        6 => json!([]),
        7 => json!({}),
        8 => json!(ODD[rng.below(ODD.len())]),
        _ => json!(random_string(rng, 0, 20)),
    }
}

/// A wrong value: another type, a boundary, overlong, odd.
fn wrong(rng: &mut Rng) -> Value {
    match rng.below(6) {
        0 => json!("x".repeat(1 + rng.below(70_000))),
        1 => json!(ODD[rng.below(ODD.len())].repeat(1 + rng.below(300))),
        2 => json!(i64::MIN),
        3 => json!([[[[[[[[[[[]]]]]]]]]]]),
        4 => json!({"nested": {"deeper": [1, "two", null]}}),
        _ => scalar(rng),
    }
}

/// Breaks a valid body in one of the ways clients do.
fn mutate_body(body: Value, rng: &mut Rng) -> Value {
    let Value::Object(mut m) = body else { return if rng.chance(2) { wrong(rng) } else { body } };
    match rng.below(6) {
        0 if !m.is_empty() => {
            let k = m.keys().nth(rng.below(m.len())).unwrap().clone();
            m.remove(&k);
        }
        1 if !m.is_empty() => {
            let k = m.keys().nth(rng.below(m.len())).unwrap().clone();
            m.insert(k, wrong(rng));
        }
        2 => {
            m.insert(random_string(rng, 1, 30), wrong(rng));
        }
        3 if !m.is_empty() => {
            let k = m.keys().nth(rng.below(m.len())).unwrap().clone();
            m.insert(k, Value::Null);
        }
        4 => return wrong(rng),
        _ => {}
    }
    Value::Object(m)
}

fn encode_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~:".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A value for a path parameter: mostly a real id of a plausible kind.
fn path_value(name: &str, collection: &str, op: &Op, rng: &mut Rng, pools: &Pools, signing_key: &[String]) -> String {
    let pool: Vec<String> = match name {
        "vm" => pools.by_collection.get("vms").cloned().unwrap_or_default(),
        _ if pools.by_collection.contains_key(collection) && !rng.chance(4) => pools.by_collection[collection].clone(),
        "account" => pools.accounts.clone(),
        "mac" => pools.macs.clone(),
        "ip" => pools.ips.clone(),
        // Never delete the key the pass signs with.
        "key" if op.method == "DELETE" => pools.keys.iter().filter(|k| !signing_key.contains(k)).cloned().collect(),
        "key" => pools.keys.clone(),
        "name" => pools.names.clone(),
        _ => pools.uuids.clone(),
    };
    match rng.below(10) {
        _ if rng.plain && !pool.is_empty() => rng.pick(&pool).clone(),
        0 => random_uuid(rng),
        1 => random_string(rng, 1, 80),
        2 => rng.pick(&["00000000-0000-0000-0000-000000000000", "not-a-uuid", "..", "%2e%2e", "-1", "0"]).to_string(),
        3 => "a".repeat(1 + rng.below(5000)),
        _ if !pool.is_empty() => rng.pick(&pool).clone(),
        _ => random_uuid(rng),
    }
}

/// One generated request.
struct Req {
    method: String,
    path: String,
    body: Option<Value>,
}

fn generate_request(op: &Op, rng: &mut Rng, pools: &Pools, signing_key: &[String]) -> Req {
    rng.plain = rng.chance(3);
    let mut path = String::new();
    let mut collection = "";
    for seg in op.template.split('/').skip(1) {
        path.push('/');
        match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            // The pass signs as alice: her account in CloudAPI paths, mostly.
            Some("account") if op.api == "cloudapi" && !rng.chance(5) => path.push_str(if rng.chance(2) { "alice" } else { "my" }),
            Some(name) => path.push_str(&encode_segment(&path_value(name, collection, op, rng, pools, signing_key))),
            None => {
                path.push_str(seg);
                collection = seg;
            }
        }
    }
    let mut query = Vec::new();
    for p in op.params.iter().filter(|p| p.location == "query") {
        if !(p.required || (rng.chance(4) && !(rng.plain && p.name == "sync"))) {
            continue;
        }
        let v = if !rng.plain && rng.chance(8) { wrong(rng) } else { generate(&p.schema, rng, pools, 0) };
        let mut text = match v {
            Value::String(s) => s,
            other => other.to_string(),
        };
        // Waiting is not what is being tested: keep long-polls short.
        if p.name == "timeout" {
            text = (1 + rng.below(2)).to_string();
        }
        text.truncate(text.floor_char_boundary(4000));
        query.push(format!("{}={}", encode_segment(&p.name), encode_segment(&text)));
    }
    if !rng.plain && rng.chance(10) {
        query.push(format!("{}={}", encode_segment(&random_string(rng, 1, 10)), encode_segment(&random_string(rng, 0, 10))));
    }
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query.join("&"));
    }
    let body = match &op.request {
        Some(schema) => {
            let valid = generate(schema, rng, pools, 0);
            Some(if rng.plain || rng.chance(3) { valid } else { mutate_body(valid, rng) })
        }
        None if op.method != "GET" && !rng.plain && rng.chance(6) => Some(wrong(rng)),
        None if op.method != "GET" => Some(json!({})),
        None => None,
    };
    Req { method: op.method.clone(), path, body }
}

fn short(s: &str, n: usize) -> String {
    if s.len() <= n { s.to_string() } else { format!("{}… ({} bytes)", &s[..s.floor_char_boundary(n)], s.len()) }
}

/// One answer as the pass sees it.
struct Answer {
    status: u16,
    content_type: Option<String>,
    retry_after: Option<u64>,
    body: Vec<u8>,
}

struct Target {
    admin_url: String,
    token: String,
    http: reqwest::Client,
    capi: CloudClient,
}

impl Target {
    async fn send(&self, api: &str, r: &Req) -> Result<Answer, String> {
        if api == "cloudapi" {
            let a = self.capi.send(&r.method, &r.path, r.body.as_ref(), Signing::Good).await.map_err(|e| format!("{e:#}"))?;
            let h = |k: &str| a.headers.get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
            return Ok(Answer {
                status: a.status,
                content_type: h("content-type"),
                retry_after: h("retry-after").and_then(|v| v.parse().ok()),
                body: a.text.into_bytes(),
            });
        }
        let mut req = self
            .http
            .request(reqwest::Method::from_bytes(r.method.as_bytes()).unwrap(), format!("{}{}", self.admin_url, r.path))
            .bearer_auth(&self.token);
        if let Some(b) = &r.body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| format!("{e:#}"))?;
        let status = resp.status().as_u16();
        let h = |k: &str| resp.headers().get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
        let (content_type, retry_after) = (h("content-type"), h("retry-after").and_then(|v| v.parse().ok()));
        let body = resp.bytes().await.map_err(|e| format!("reading the body: {e:#}"))?.to_vec();
        Ok(Answer { status, content_type, retry_after, body })
    }
}

/// Operations the pass leaves out, and why.
fn excluded(op: &Op) -> Option<&'static str> {
    if op.tags.iter().any(|t| t == "Agent") {
        // Compute nodes' own calls (join, heartbeats, sysinfo, VM status…), authenticated as
        // the agent and moving to the agent's own TLS listener; every test cloud's agents
        // exercise them, and openapi_conformance checks their real answers.
        return Some("agent-facing");
    }
    match (op.api, op.template.as_str()) {
        // WebSocket upgrades.
        ("admin", "/vms/{uuid}/console" | "/vms/{uuid}/vnc") => Some("WebSocket"),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_requests_get_documented_answers() {
    let seed = std::env::var("NEREID_PROPERTY_SEED")
        .ok()
        .map(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("NEREID_PROPERTY_SEED is hex"))
        .unwrap_or(0x0afe_11ed);
    let cases: usize =
        std::env::var("NEREID_PROPERTY_CASES").ok().map(|s| s.parse().expect("NEREID_PROPERTY_CASES is a number")).unwrap_or(24);
    eprintln!("property pass: seed {seed:#x}, {cases} requests per operation (NEREID_PROPERTY_SEED / NEREID_PROPERTY_CASES)");

    let mut opts = Options::new(Backend::Sqlite).cloudapi_http();
    opts.sim_servers = 2;
    let cloud = Cloud::start_with(opts).await.unwrap();
    let seeded = cloud.seed().await.unwrap();
    let c = &cloud.client;
    let alice = c
        .post(
            "/accounts",
            &json!({"login": "alice", "email": "alice@example.com", "keys": [{"key": Key::from_seed(3).openssh(), "name": "main"}]}),
        )
        .await
        .unwrap();
    let alice_uuid = alice["uuid"].as_str().unwrap().to_string();
    c.post("/accounts", &json!({"login": "bob", "email": "bob@example.com"})).await.unwrap();
    c.post("/accounts/alice/keys", &json!({"key": Key::from_seed(4).openssh(), "name": "spare"})).await.unwrap();
    let mut body = seeded.vm_body("web-1");
    body["owner_uuid"] = json!(alice_uuid);
    let (vm, job) = cloud.create_vm(&body).await.unwrap();
    cloud.wait_job(&job).await.unwrap();
    let servers = cloud.wait_servers(2).await.unwrap();
    let vm_record = c.get(&format!("/vms/{vm}")).await.unwrap();
    let mut pools = Pools {
        uuids: vec![vm.clone(), job.clone(), seeded.image.clone(), seeded.package.clone(), seeded.network.clone(), alice_uuid],
        accounts: vec!["alice".into(), "my".into(), "bob".into(), "nobody".into()],
        keys: vec!["main".into(), Key::from_seed(3).md5(), "spare".into(), Key::from_seed(4).md5(), "user-script".into(), "role".into()],
        names: vec!["external".into(), "snap1".into(), "nope".into()],
        macs: Vec::new(),
        ips: vec!["10.77.0.10".into(), "10.77.0.11".into(), "10.77.255.255".into()],
        by_collection: std::collections::BTreeMap::from([
            ("machines", vec![vm.clone()]),
            ("vms", vec![vm.clone()]),
            ("images", vec![seeded.image.clone()]),
            ("packages", vec![seeded.package.clone()]),
            ("networks", vec![seeded.network.clone()]),
            ("jobs", vec![job.clone()]),
            ("servers", servers.iter().filter_map(|s| s["uuid"].as_str().map(str::to_string)).collect()),
        ]),
    };
    pools.uuids.extend(servers.iter().filter_map(|s| s["uuid"].as_str().map(str::to_string)));
    for nic in vm_record["nics"].as_array().into_iter().flatten() {
        pools.macs.extend(nic["mac"].as_str().map(str::to_string));
        pools.ips.extend(nic["ip"].as_str().map(str::to_string));
    }
    let signing_key = vec!["main".to_string(), Key::from_seed(3).md5()];

    let target = Target {
        admin_url: cloud.headnode.admin_url.clone(),
        token: cloud.headnode.token.clone(),
        http: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
        capi: CloudClient::new(&cloud.headnode.cloudapi.as_ref().unwrap().url, "alice", Key::from_seed(3)),
    };

    let (ops, error_schema) = openapi::operations();
    // CloudAPI first (the admin pass may change alice), reads and writes before deletes.
    let mut order: Vec<&Op> = ops.iter().filter(|o| excluded(o).is_none()).collect();
    order.sort_by_key(|o| (o.api != "cloudapi", o.method == "DELETE"));
    let skipped: Vec<String> = ops.iter().filter_map(|o| excluded(o).map(|why| format!("{} {} ({why})", o.api, o.id))).collect();
    eprintln!("{} operations, {} left out: {}", order.len(), skipped.len(), skipped.join(", "));

    // NEREID_PROPERTY_DEBUG=OperationId prints that operation's requests and answers.
    let debug = std::env::var("NEREID_PROPERTY_DEBUG").ok();
    let mut rng = Rng { state: seed, plain: false };
    let mut problems: Vec<String> = Vec::new();
    let mut sent = 0usize;
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    // Operations a generated request got a success from (the rest only ever refused).
    let mut succeeded = std::collections::BTreeSet::<String>::new();
    let started = Instant::now();
    'ops: for op in order {
        for case in 0..cases {
            let req = generate_request(op, &mut rng, &pools, &signing_key);
            let what = || {
                format!(
                    "{} {} {} (case {case}, seed {seed:#x})\n    body: {}",
                    op.api,
                    req.method,
                    short(&req.path, 300),
                    req.body.as_ref().map_or("none".into(), |b| short(&b.to_string(), 500))
                )
            };
            let answer = match target.send(op.api, &req).await {
                Ok(a) => a,
                Err(e) => {
                    // The request itself failed: is the headnode still there?
                    let ping = target.http.get(format!("{}/ping", target.admin_url)).bearer_auth(&target.token).send().await;
                    if ping.is_err() {
                        problems.push(format!("{}\n    the headnode died: {e}", what()));
                        break 'ops;
                    }
                    problems.push(format!("{}\n    no answer: {e}", what()));
                    continue;
                }
            };
            sent += 1;
            *by_status.entry(answer.status).or_default() += 1;
            let text = String::from_utf8_lossy(&answer.body);
            if debug.as_deref() == Some(op.id.as_str()) {
                eprintln!("{}\n    → {} {}", what(), answer.status, short(&text, 300));
            }
            if answer.status < 300 {
                succeeded.insert(format!("{} {}", op.api, op.id));
            }
            // A 5xx passes only where the operation documents it (a 503 for an agent that
            // cannot be called, NAPI's 507 SubnetFull).
            if answer.status >= 500 && !op.others.contains_key(&answer.status) {
                problems.push(format!("{}\n    → {} {}", what(), answer.status, short(&text, 600)));
            } else if let Err(e) = openapi::check_answer(op, &error_schema, answer.status, answer.content_type.as_deref(), &answer.body) {
                problems.push(format!("{}\n    → {}: {e}\n    answer: {}", what(), answer.status, short(&text, 400)));
            }
            if answer.status == 429 {
                tokio::time::sleep(Duration::from_secs(answer.retry_after.unwrap_or(1).min(5))).await;
            }
            if problems.len() >= 40 {
                break 'ops;
            }
        }
    }
    eprintln!("sent {sent} requests in {:.1} s; answers by status: {by_status:?}", started.elapsed().as_secs_f64());
    let never: Vec<String> =
        ops.iter().filter(|o| excluded(o).is_none()).map(|o| format!("{} {}", o.api, o.id)).filter(|k| !succeeded.contains(k)).collect();
    eprintln!(
        "{} of {} operations answered a generated request with success; never: {}",
        succeeded.len(),
        sent.min(1) * (succeeded.len() + never.len()),
        never.join(", ")
    );
    // The headnode is still healthy.
    let ping = target.http.get(format!("{}/ping", target.admin_url)).bearer_auth(&target.token).send().await.unwrap();
    assert_eq!(ping.status(), 200);
    assert!(
        problems.is_empty(),
        "{} generated requests got answers the documents do not allow (seed {seed:#x}; rerun with NEREID_PROPERTY_SEED={seed:x}):\n\n{}",
        problems.len(),
        problems.join("\n\n")
    );
}
