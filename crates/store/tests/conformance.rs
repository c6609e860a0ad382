//! The store conformance suite: every test runs on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use nereid_store::{BucketDef, Cond, Filter, Index, Kind, ListQuery, Op, Path, Store, StoreError};
use serde_json::{Value, json};

struct Backend {
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let store = nereid_store::open(&format!("sqlite:{}", dir.path().join("s.db").display())).await.unwrap();
    Backend { store, _dir: Some(dir) }
}

async fn postgres() -> Backend {
    let url = nereid_store::testing::fresh_pg_url().await.unwrap();
    Backend { store: nereid_store::open(&url).await.unwrap(), _dir: None }
}

/// Declares `sqlite::name` and `postgres::name` running `body(store)`.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite_backend { $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)] async fn $name() { let b = super::sqlite().await; super::$name(b.store.clone()).await; } )* }
        mod postgres_backend { $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)] async fn $name() { let b = super::postgres().await; super::$name(b.store.clone()).await; } )* }
    };
}

conformance!(
    put_get_and_generations,
    conditional_writes,
    conditional_deletes,
    batch_is_all_or_nothing,
    checks_guard_a_batch,
    filters_match_in_memory_semantics,
    sort_and_pagination,
    sorted_pages_are_slices_of_the_whole_sorted_list,
    raw_lists_match_lists,
    concurrent_read_modify_write_never_loses_an_update,
    concurrent_creates_have_one_winner,
    bad_filters_are_errors,
    buckets_are_separate_and_indexes_idempotent,
    refreshes_overwrite_what_exists_and_skip_what_does_not,
    versions_list_what_raw_lists_list_and_keys_fetch_them,
);

const B: &str = "things";

async fn put_get_and_generations(s: Arc<dyn Store>) {
    assert!(s.get(B, "a").await.unwrap().is_none());
    let before = now_ms();
    assert_eq!(s.put(B, "a", json!({"n": 1, "name": "ünïcode ✓"}), Cond::Any).await.unwrap(), 1);
    assert_eq!(s.put(B, "a", json!({"n": 2, "name": "x"}), Cond::Any).await.unwrap(), 2);
    let o = s.get(B, "a").await.unwrap().unwrap();
    assert_eq!((o.key.as_str(), o.value["n"].clone(), o.generation), ("a", json!(2), 2));
    assert!(o.mtime >= before && o.mtime <= now_ms() + 1);
    let big = "x".repeat(1 << 20);
    s.put(B, "big/key with spaces", json!({"big": big}), Cond::Any).await.unwrap();
    assert_eq!(s.get(B, "big/key with spaces").await.unwrap().unwrap().value["big"].as_str().unwrap().len(), 1 << 20);
}

async fn conditional_writes(s: Arc<dyn Store>) {
    assert_eq!(s.put(B, "k", json!({"v": 1}), Cond::Absent).await.unwrap(), 1);
    let e = s.put(B, "k", json!({"v": 9}), Cond::Absent).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict { found: Some(1), expected: Cond::Absent, .. }), "{e}");
    assert_eq!(s.put(B, "k", json!({"v": 2}), Cond::Generation(1)).await.unwrap(), 2);
    let e = s.put(B, "k", json!({"v": 9}), Cond::Generation(1)).await.unwrap_err();
    assert_eq!(e.to_string(), "things/k changed: expected it at generation 1, found at generation 2");
    assert!(s.put(B, "nope", json!({}), Cond::Exists).await.unwrap_err().is_conflict());
    assert!(s.put(B, "nope", json!({}), Cond::Generation(1)).await.unwrap_err().is_conflict());
    assert!(s.get(B, "nope").await.unwrap().is_none());
    assert_eq!(s.put(B, "k", json!({"v": 3}), Cond::Exists).await.unwrap(), 3);
    assert_eq!(s.get(B, "k").await.unwrap().unwrap().value, json!({"v": 3}));
}

async fn conditional_deletes(s: Arc<dyn Store>) {
    s.put(B, "d", json!({}), Cond::Any).await.unwrap();
    assert!(s.delete(B, "d", Cond::Generation(7)).await.unwrap_err().is_conflict());
    assert!(s.get(B, "d").await.unwrap().is_some());
    s.delete(B, "d", Cond::Generation(1)).await.unwrap();
    assert!(s.get(B, "d").await.unwrap().is_none());
    s.delete(B, "d", Cond::Any).await.unwrap();
    assert!(s.delete(B, "d", Cond::Exists).await.unwrap_err().is_conflict());
    // A re-created object starts again at generation 1.
    assert_eq!(s.put(B, "d", json!({}), Cond::Absent).await.unwrap(), 1);
    // A delete that requires absence passes where nothing is, and deletes nothing where
    // something is.
    s.delete(B, "never", Cond::Absent).await.unwrap();
    let e = s.delete(B, "d", Cond::Absent).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict { expected: Cond::Absent, .. }), "{e}");
    assert!(s.get(B, "d").await.unwrap().is_some());
    s.delete(B, "d", Cond::Exists).await.unwrap();
    assert!(s.get(B, "d").await.unwrap().is_none());
}

async fn batch_is_all_or_nothing(s: Arc<dyn Store>) {
    s.put(B, "taken", json!({}), Cond::Any).await.unwrap();
    let e = s
        .batch(vec![
            Op::put(B, "x1", json!({"a": 1}), Cond::Absent),
            Op::put(B, "taken", json!({"a": 1}), Cond::Absent),
            Op::put(B, "x2", json!({"a": 1}), Cond::Any),
        ])
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict { op_index: 1, .. }));
    assert!(s.get(B, "x1").await.unwrap().is_none());
    assert!(s.get(B, "x2").await.unwrap().is_none());
    let gens = s
        .batch(vec![
            Op::put(B, "x1", json!({}), Cond::Absent),
            Op::put(B, "taken", json!({"b": 2}), Cond::Generation(1)),
            Op::delete(B, "x9", Cond::Any),
        ])
        .await
        .unwrap();
    assert_eq!(gens, vec![1, 2, 0]);
}

async fn checks_guard_a_batch(s: Arc<dyn Store>) {
    s.put(B, "guard", json!({}), Cond::Any).await.unwrap();
    s.batch(vec![Op::check(B, "guard", Cond::Generation(1)), Op::put(B, "w", json!({}), Cond::Any)]).await.unwrap();
    s.put(B, "guard", json!({}), Cond::Any).await.unwrap();
    let e = s.batch(vec![Op::check(B, "guard", Cond::Generation(1)), Op::put(B, "w", json!({"x": 1}), Cond::Any)]).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict { found: Some(2), .. }));
    assert_eq!(s.get(B, "w").await.unwrap().unwrap().generation, 1);
    assert!(s.batch(vec![Op::check(B, "missing", Cond::Absent)]).await.is_ok());
    assert!(s.batch(vec![Op::check(B, "guard", Cond::Absent)]).await.is_err());
    assert!(s.batch(vec![Op::check(B, "guard", Cond::Exists), Op::check(B, "guard", Cond::Any)]).await.is_ok());
    let e = s.batch(vec![Op::check(B, "guard", Cond::Exists), Op::check(B, "missing", Cond::Exists)]).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict { op_index: 1, found: None, expected: Cond::Exists, .. }), "{e}");
    // A batch of many ops answers each its generation, in order, keys of any text.
    let odd = "a key with 'quotes', \\ \"and\" ünïcode";
    let mut ops: Vec<Op> = (0..50).map(|i| Op::put(B, format!("many{i}"), json!({"i": i, "s": "it's"}), Cond::Absent)).collect();
    ops.push(Op::put(B, odd, json!({"k": odd}), Cond::Any));
    ops.push(Op::delete(B, "many0", Cond::Generation(1)));
    let gens = s.batch(ops).await.unwrap();
    assert_eq!(gens.len(), 52);
    assert!(gens[..51].iter().all(|g| *g == 1) && gens[51] == 0, "{gens:?}");
    assert_eq!(s.get(B, odd).await.unwrap().unwrap().value, json!({"k": odd}));
    assert!(s.get(B, "many0").await.unwrap().is_none());
}

fn dataset() -> Vec<Value> {
    let mut out = Vec::new();
    for i in 0..40 {
        let mut v = json!({
            "name": format!("{}-{i:02}", ["alpha", "beta", "gam*ma", "del_ta%"][i % 4]),
            "ram": (i % 7) * 256,
            "ratio": (i as f64) / 3.0,
            "active": i % 3 == 0,
            "owners": [format!("o{}", i % 5), format!("o{}", (i + 1) % 5)],
            "tags": {"role": if i % 2 == 0 { "os" } else { "db" }, "triton.cns.services": format!("s{}", i % 3)},
            "files": [{"sha1": format!("{:040x}", i % 6)}],
        });
        if i % 4 == 0 {
            v.as_object_mut().unwrap().remove("ram");
        }
        if i % 5 == 0 {
            v["nothing"] = Value::Null;
        }
        out.push(v);
    }
    out
}

fn filters() -> Vec<Filter> {
    let p = Path::field;
    vec![
        Filter::True,
        Filter::eq("ram", 512),
        Filter::eq("active", true),
        Filter::eq("active", false),
        Filter::Ne(p("ram"), json!(512)),
        Filter::Lt(p("ram"), json!(512)),
        Filter::Le(p("ram"), json!(512)),
        Filter::Gt(p("ratio"), json!(4.5)),
        Filter::Ge(p("name"), json!("beta")),
        Filter::Lt(p("name"), json!("beta-05")),
        Filter::prefix("name", "gam*"),
        Filter::prefix("name", "gam"),
        Filter::contains("name", "_ta%"),
        Filter::contains("name", "a-1"),
        Filter::Glob(p("name"), vec!["a".into(), "-".into(), "2".into()]),
        Filter::has("owners", "o3"),
        Filter::Present(p("ram")),
        Filter::Absent(p("ram")),
        Filter::Absent(p("nothing")),
        Filter::eq("nothing", Value::Null),
        Filter::Eq(Path::keys(&["tags", "triton.cns.services"]), json!("s1")),
        Filter::Eq(Path::field("files").index(0).key("sha1"), json!(format!("{:040x}", 3))),
        Filter::Or(vec![Filter::eq("ram", 0), Filter::has("owners", "o0")]),
        Filter::Not(Box::new(Filter::And(vec![Filter::eq("active", true), Filter::Present(p("ram"))]))),
        Filter::And(vec![]),
        Filter::Or(vec![]),
        // Negations of comparisons with absent fields: true, not NULL (Moray's NULL trap).
        Filter::Not(Box::new(Filter::eq("ram", 512))),
        Filter::Not(Box::new(Filter::Or(vec![Filter::eq("nothing", "x"), Filter::Gt(p("ram"), json!(700))]))),
        Filter::Not(Box::new(Filter::prefix("missing", "a"))),
        Filter::Not(Box::new(Filter::has("missing", "a"))),
        Filter::any_of("name", vec![json!("alpha-00"), json!("beta-01"), json!("nobody")]),
    ]
}

async fn filters_match_in_memory_semantics(s: Arc<dyn Store>) {
    let data = dataset();
    for (i, v) in data.iter().enumerate() {
        s.put(B, &format!("k{i:03}"), v.clone(), Cond::Any).await.unwrap();
    }
    s.put("other", "k000", json!({"ram": 512}), Cond::Any).await.unwrap();
    for f in filters() {
        let want: Vec<String> = data.iter().enumerate().filter(|(_, v)| f.matches(v)).map(|(i, _)| format!("k{i:03}")).collect();
        let got: Vec<String> = s.list(B, &ListQuery::filter(f.clone())).await.unwrap().into_iter().map(|o| o.key).collect();
        assert_eq!(got, want, "filter {f:?}");
        assert_eq!(s.count(B, &f).await.unwrap(), want.len() as i64, "count {f:?}");
    }
    // Sanity: the cross-check is not vacuous.
    assert_eq!(s.count(B, &Filter::eq("ram", 512)).await.unwrap(), 5);
    assert_eq!(s.count(B, &Filter::prefix("name", "gam*")).await.unwrap(), 10);
}

async fn raw_lists_match_lists(s: Arc<dyn Store>) {
    for (i, v) in dataset().iter().enumerate() {
        s.put(B, &format!("k{i:03}"), v.clone(), Cond::Any).await.unwrap();
    }
    s.put(B, "k002", json!({"name": "again", "ram": 3}), Cond::Any).await.unwrap();
    let q = ListQuery::filter(Filter::Present(Path::field("ram"))).sort(Path::field("name"), Kind::Text, true).page(20, 3);
    let objs = s.list(B, &q).await.unwrap();
    let raw = s.list_raw(B, &q).await.unwrap();
    assert!(!objs.is_empty());
    assert_eq!(raw.len(), objs.len());
    for (r, o) in raw.iter().zip(&objs) {
        assert_eq!((&r.key, r.generation, r.mtime), (&o.key, o.generation, o.mtime));
        assert_eq!(serde_json::from_str::<Value>(&r.json).unwrap(), o.value, "{}", r.key);
    }
}

async fn versions_list_what_raw_lists_list_and_keys_fetch_them(s: Arc<dyn Store>) {
    for (i, v) in dataset().iter().enumerate() {
        s.put(B, &format!("k{i:03}"), v.clone(), Cond::Any).await.unwrap();
    }
    s.put(B, "k002", json!({"name": "again", "ram": 3}), Cond::Any).await.unwrap();
    let queries = [
        ListQuery::filter(Filter::Present(Path::field("ram"))).sort(Path::field("name"), Kind::Text, true).page(20, 3),
        ListQuery::all(),
        ListQuery::all().sort(Path::field("ram"), Kind::Number, false),
        ListQuery::filter(Filter::eq("name", "nobody")),
    ];
    for q in queries {
        let raw = s.list_raw(B, &q).await.unwrap();
        let versions = s.list_versions(B, &q).await.unwrap();
        let listed: Vec<_> = versions.iter().map(|v| (v.key.clone(), v.generation, v.mtime)).collect();
        assert_eq!(listed, raw.iter().map(|r| (r.key.clone(), r.generation, r.mtime)).collect::<Vec<_>>(), "{q:?}");
        assert!(versions.iter().all(|v| v.size > 0), "{versions:?}");
    }
    // A value of another size is another version, at the same generation and time too.
    let before = s.list_versions(B, &ListQuery::all()).await.unwrap();
    let k002 = before.iter().find(|v| v.key == "k002").unwrap();
    s.put(B, "k002", json!({"name": "again, and longer than before", "ram": 3}), Cond::Any).await.unwrap();
    let after = s.list_versions(B, &ListQuery::all()).await.unwrap();
    let k002_after = after.iter().find(|v| v.key == "k002").unwrap();
    assert!(k002_after.size > k002.size && k002_after.generation == k002.generation + 1);

    // Fetched by keys: present ones whole, absent ones left out; more keys than one statement takes.
    let mut keys: Vec<String> = (0..1200).map(|i| format!("absent-{i}")).collect();
    keys.insert(600, "k002".into());
    keys.push("k000".into());
    let mut got = s.get_raw_many(B, &keys).await.unwrap();
    got.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(got.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["k000", "k002"]);
    let whole = s.get(B, "k002").await.unwrap().unwrap();
    assert_eq!((got[1].generation, got[1].mtime), (whole.generation, whole.mtime));
    assert_eq!(serde_json::from_str::<Value>(&got[1].json).unwrap(), whole.value);
    assert!(s.get_raw_many(B, &[]).await.unwrap().is_empty());
}

async fn sort_and_pagination(s: Arc<dyn Store>) {
    let data = dataset();
    for (i, v) in data.iter().enumerate() {
        s.put(B, &format!("k{i:03}"), v.clone(), Cond::Any).await.unwrap();
    }
    let keys = |objs: Vec<nereid_store::Object>| objs.into_iter().map(|o| o.key).collect::<Vec<_>>();
    // Numbers sort numerically, absent fields first when ascending, key breaks ties.
    let by_ram = keys(s.list(B, &ListQuery::all().sort(Path::field("ram"), Kind::Number, false)).await.unwrap());
    let mut want: Vec<(Option<i64>, String)> = data.iter().enumerate().map(|(i, v)| (v["ram"].as_i64(), format!("k{i:03}"))).collect();
    want.sort();
    assert_eq!(by_ram, want.iter().map(|(_, k)| k.clone()).collect::<Vec<_>>());
    let desc = keys(s.list(B, &ListQuery::all().sort(Path::field("ratio"), Kind::Number, true)).await.unwrap());
    assert_eq!(desc.first().unwrap(), "k039");
    // Text sorts byte-wise ("B" < "a"), not by locale.
    s.put("words", "1", json!({"w": "a"}), Cond::Any).await.unwrap();
    s.put("words", "2", json!({"w": "B"}), Cond::Any).await.unwrap();
    s.put("words", "3", json!({"w": "_"}), Cond::Any).await.unwrap();
    assert_eq!(keys(s.list("words", &ListQuery::all().sort(Path::field("w"), Kind::Text, false)).await.unwrap()), ["2", "3", "1"]);
    // Pages tile the whole ordered list.
    let all = keys(s.list(B, &ListQuery::all().sort(Path::field("name"), Kind::Text, false)).await.unwrap());
    let mut paged = Vec::new();
    for page in 0..5 {
        paged.extend(keys(s.list(B, &ListQuery::all().sort(Path::field("name"), Kind::Text, false).page(9, page * 9)).await.unwrap()));
    }
    assert_eq!(paged, all);
    let mut offset_only = ListQuery::all();
    offset_only.offset = 35;
    assert_eq!(s.list(B, &offset_only).await.unwrap().len(), 5);
}

/// A sorted page (keys sorted and cut first, then the rows read by key) holds exactly the
/// rows, in the order, that the whole sorted list (one plain query) has at its place:
/// ties, absent fields, both directions, several sort keys, filters, offsets past the end.
async fn sorted_pages_are_slices_of_the_whole_sorted_list(s: Arc<dyn Store>) {
    const IDX: BucketDef =
        BucketDef { name: B, indexes: &[Index { path: &["ram"], kind: Kind::Number }, Index { path: &["name"], kind: Kind::Text }] };
    s.ensure_bucket(&IDX).await.unwrap();
    for (i, v) in dataset().iter().enumerate() {
        s.put(B, &format!("k{i:03}"), v.clone(), Cond::Any).await.unwrap();
    }
    // Generations and mtimes differ between rows, so a mixed-up row shows.
    s.put(B, "k007", json!({"name": "beta-07", "ram": 0}), Cond::Any).await.unwrap();
    s.put("other", "k000", json!({"ram": 0, "name": "alpha-00"}), Cond::Any).await.unwrap();
    let p = Path::field;
    let sorts: Vec<Vec<(Path, Kind, bool)>> = vec![
        vec![(p("ram"), Kind::Number, false)],
        vec![(p("ram"), Kind::Number, true)],
        vec![(p("name"), Kind::Text, false)],
        vec![(p("name"), Kind::Text, true)],
        vec![(p("active"), Kind::Number, true), (p("ram"), Kind::Number, false)],
        vec![(Path::keys(&["tags", "role"]), Kind::Text, false), (p("ratio"), Kind::Number, true)],
        vec![(p("missing"), Kind::Text, false)],
    ];
    let filters = [
        Filter::True,
        Filter::Present(p("ram")),
        Filter::has("owners", "o3"),
        Filter::Not(Box::new(Filter::eq("active", true))),
        Filter::eq("name", "nobody"),
    ];
    let mut compared = 0;
    for sort in &sorts {
        for f in &filters {
            let mut q = ListQuery::filter(f.clone());
            for (path, kind, desc) in sort {
                q = q.sort(path.clone(), *kind, *desc);
            }
            let whole = s.list(B, &q).await.unwrap();
            let whole_raw = s.list_raw(B, &q).await.unwrap();
            for limit in [1, 7, 40, 100] {
                for offset in [0, 5, 39, 60] {
                    let page = q.clone().page(limit, offset);
                    let (from, to) = ((offset as usize).min(whole.len()), ((offset + limit) as usize).min(whole.len()));
                    assert_eq!(s.list(B, &page).await.unwrap(), whole[from..to], "{page:?}");
                    assert_eq!(s.list_raw(B, &page).await.unwrap(), whole_raw[from..to], "{page:?}");
                    compared += to - from;
                }
            }
        }
    }
    assert!(compared > 2000, "the comparison is not vacuous: {compared} rows");
}

async fn concurrent_read_modify_write_never_loses_an_update(s: Arc<dyn Store>) {
    s.put(B, "counter", json!({"n": 0}), Cond::Any).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            for _ in 0..15 {
                loop {
                    let o = s.get(B, "counter").await.unwrap().unwrap();
                    let n = o.value["n"].as_i64().unwrap();
                    match s.put(B, "counter", json!({"n": n + 1}), Cond::Generation(o.generation)).await {
                        Ok(_) => break,
                        Err(e) if e.is_conflict() => conflicts += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.unwrap();
    }
    let o = s.get(B, "counter").await.unwrap().unwrap();
    assert_eq!(o.value["n"], json!(120));
    assert_eq!(o.generation, 121);
    println!("{} conflicts detected and retried", conflicts);
}

async fn concurrent_creates_have_one_winner(s: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for i in 0..20 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move { s.put(B, "only-one", json!({"by": i}), Cond::Absent).await.is_ok() }));
    }
    let mut winners = 0;
    for t in tasks {
        winners += usize::from(t.await.unwrap());
    }
    assert_eq!(winners, 1);
}

async fn refreshes_overwrite_what_exists_and_skip_what_does_not(s: Arc<dyn Store>) {
    // 600 servers' liveness in one batch (more than one statement's run), every other one
    // absent, between ordinary ops that must still count and guard as usual.
    for i in (0..600).step_by(2) {
        s.put(B, &format!("r{i:03}"), json!({"at": 0}), Cond::Any).await.unwrap();
    }
    s.put(B, "r000", json!({"at": 0}), Cond::Any).await.unwrap();
    let mut ops = vec![Op::put(B, "first", json!(1), Cond::Absent)];
    ops.extend((0..600).map(|i| Op::refresh(B, format!("r{i:03}"), json!({"at": i}))));
    // The same key twice: the second is written after the first.
    ops.push(Op::refresh(B, "r002", json!({"at": "again"})));
    ops.push(Op::check(B, "first", Cond::Generation(1)));
    let gens = s.batch(ops).await.unwrap();
    assert_eq!(gens.len(), 603);
    assert_eq!(gens[0], 1);
    assert_eq!(gens[1], 3, "r000 was at generation 2");
    for i in 1..600 {
        assert_eq!(gens[1 + i], if i % 2 == 0 { 2 } else { 0 }, "r{i:03}");
    }
    assert_eq!(gens[601], 3, "r002 refreshed twice in one batch");
    assert_eq!(s.get(B, "r002").await.unwrap().unwrap().value, json!({"at": "again"}));
    assert_eq!(s.get(B, "r598").await.unwrap().unwrap().value, json!({"at": 598}));
    assert!(s.get(B, "r001").await.unwrap().is_none(), "an absent object stays absent");
    // A batch failing elsewhere writes none of its refreshes.
    let e = s.batch(vec![Op::refresh(B, "r004", json!({"at": "lost"})), Op::check(B, "first", Cond::Absent)]).await.unwrap_err();
    assert!(e.is_conflict(), "{e}");
    assert_eq!(s.get(B, "r004").await.unwrap().unwrap().value, json!({"at": 4}));
}

async fn bad_filters_are_errors(s: Arc<dyn Store>) {
    let bad = [
        Filter::eq("a'; DROP TABLE objects; --", 1),
        Filter::eq("x", json!({"a": 1})),
        Filter::Eq(Path(vec![]), json!(1)),
        Filter::has("x", json!([1])),
        Filter::eq("x", "nul\0byte"),
        Filter::prefix("x", "nul\0"),
    ];
    for f in bad {
        assert!(matches!(s.list(B, &ListQuery::filter(f.clone())).await, Err(StoreError::InvalidFilter(_))), "{f:?}");
    }
    assert!(matches!(s.get("Bad Bucket", "k").await, Err(StoreError::InvalidFilter(_))));
    s.put(B, "still-here", json!({}), Cond::Any).await.unwrap();
    assert!(s.get(B, "still-here").await.unwrap().is_some());
}

async fn buckets_are_separate_and_indexes_idempotent(s: Arc<dyn Store>) {
    const DEF: BucketDef = BucketDef {
        name: "idx",
        indexes: &[Index { path: &["owner"], kind: Kind::Text }, Index { path: &["tags", "a.b"], kind: Kind::Number }],
    };
    s.ensure_bucket(&DEF).await.unwrap();
    s.ensure_bucket(&DEF).await.unwrap();
    s.put("idx", "1", json!({"owner": "o"}), Cond::Any).await.unwrap();
    s.put("idy", "1", json!({"owner": "p"}), Cond::Any).await.unwrap();
    assert_eq!(s.list("idx", &ListQuery::filter(Filter::eq("owner", "o"))).await.unwrap().len(), 1);
    assert_eq!(s.list("idx", &ListQuery::filter(Filter::eq("owner", "p"))).await.unwrap().len(), 0);
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test]
async fn sqlite_survives_reopen_and_migrations_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("s.db").display());
    {
        let s = nereid_store::open(&url).await.unwrap();
        s.put(B, "kept", json!({"v": 1}), Cond::Any).await.unwrap();
    }
    let s = nereid_store::open(&url).await.unwrap();
    assert_eq!(s.get(B, "kept").await.unwrap().unwrap().value, json!({"v": 1}));
}

#[tokio::test]
async fn postgres_schemas_isolate_and_reopen() {
    let url = nereid_store::testing::fresh_pg_url().await.unwrap();
    let a = nereid_store::open(&url).await.unwrap();
    a.put(B, "kept", json!({"v": 1}), Cond::Any).await.unwrap();
    let again = nereid_store::open(&url).await.unwrap();
    assert!(again.get(B, "kept").await.unwrap().is_some());
    let other = nereid_store::open(&nereid_store::testing::fresh_pg_url().await.unwrap()).await.unwrap();
    assert!(other.get(B, "kept").await.unwrap().is_none());
}

#[tokio::test]
async fn unknown_urls_are_refused() {
    for url in ["mysql://x", "", "postgres://x/y?schema=Robert'); DROP"] {
        assert!(matches!(nereid_store::open(url).await, Err(StoreError::Config(_))), "{url}");
    }
}
