//! PostgreSQL batches in one round trip: a batch goes to the server as one JSON document
//! and one statement, `SELECT nereid_batch_v1(ops, now)`, a PL/pgSQL function that applies
//! the ops in order with the very statements [`crate::ops::batch`] sends one by one (so the
//! semantics are the same: READ COMMITTED, each conditional write re-checked on the latest
//! row version, checks locking their row until commit). A statement outside a transaction
//! block is its own transaction, so the batch is all or nothing. A condition that does not
//! hold raises SQLSTATE [`CONFLICT_STATE`] naming the op and the generation found, which
//! becomes [`StoreError::Conflict`].
//!
//! Sent one by one, a batch of N ops took N + 2 round trips (BEGIN, each op, COMMIT),
//! each a wake-up of a server process and of ours: the job runner's two-op progress
//! writes made up most of a provision's PostgreSQL traffic.
//!
//! Refreshes (written many at once by one `UPDATE … FROM (VALUES …)`) keep the
//! statement-by-statement path. The function's name carries a version: a change to its
//! body is a new name, so headnodes of two versions on one database each call their own.

use serde_json::Value;

use crate::sql::bucket_literal;
use crate::{Cond, Op, Result, StoreError};

/// The function's name (see the module doc on versions).
pub(crate) const FUNCTION: &str = "nereid_batch_v1";

/// The SQLSTATE a condition that does not hold raises (class `NR`, unused by PostgreSQL).
pub(crate) const CONFLICT_STATE: &str = "NRC01";

/// Creates the function where the search path puts new objects (the store's schema);
/// run at open, under the DDL lock, when it is missing.
pub(crate) const CREATE: &str = r#"
CREATE FUNCTION nereid_batch_v1(ops jsonb, now_ms bigint) RETURNS bigint[]
LANGUAGE plpgsql AS $body$
DECLARE
    op jsonb;
    i int := 0;
    kind text;
    b text;
    k text;
    c text;
    want bigint;
    g bigint;
    n bigint;
    out bigint[] := '{}';
BEGIN
    FOR op IN SELECT t.elem FROM jsonb_array_elements(ops) WITH ORDINALITY AS t(elem, ord) ORDER BY t.ord LOOP
        kind := op->>'o';
        b := op->>'b';
        k := op->>'k';
        c := op->>'c';
        want := (op->>'g')::bigint;
        g := NULL;
        n := NULL;
        IF kind = 'put' THEN
            IF c = 'any' THEN
                INSERT INTO objects AS o (bucket, key, value, generation, mtime) VALUES (b, k, op->'v', 1, now_ms)
                    ON CONFLICT (bucket, key) DO UPDATE SET value = excluded.value, generation = o.generation + 1, mtime = excluded.mtime
                    RETURNING o.generation INTO g;
            ELSIF c = 'absent' THEN
                INSERT INTO objects AS o (bucket, key, value, generation, mtime) VALUES (b, k, op->'v', 1, now_ms)
                    ON CONFLICT (bucket, key) DO NOTHING
                    RETURNING o.generation INTO g;
            ELSE
                UPDATE objects AS o SET value = op->'v', generation = o.generation + 1, mtime = now_ms
                    WHERE o.bucket = b AND o.key = k AND (c = 'exists' OR o.generation = want)
                    RETURNING o.generation INTO g;
            END IF;
        ELSIF kind = 'delete' THEN
            DELETE FROM objects AS o WHERE o.bucket = b AND o.key = k AND (c <> 'generation' OR o.generation = want);
            GET DIAGNOSTICS n = ROW_COUNT;
            IF c = 'any' OR (c = 'absent' AND n = 0) OR (c IN ('exists', 'generation') AND n > 0) THEN
                g := 0;
            END IF;
        ELSIF kind = 'check' THEN
            SELECT o.generation INTO n FROM objects AS o WHERE o.bucket = b AND o.key = k FOR UPDATE;
            IF c = 'any' OR (c = 'absent' AND n IS NULL) OR (c = 'exists' AND n IS NOT NULL) OR (c = 'generation' AND n = want) THEN
                g := 0;
            END IF;
        ELSE
            RAISE EXCEPTION 'nereid_batch_v1: unknown op %', kind;
        END IF;
        IF g IS NULL THEN
            SELECT o.generation INTO n FROM objects AS o WHERE o.bucket = b AND o.key = k;
            RAISE EXCEPTION USING ERRCODE = 'NRC01', MESSAGE = 'a condition of the batch does not hold',
                DETAIL = json_build_object('op', i, 'found', n)::text;
        END IF;
        out := out || g;
        i := i + 1;
    END LOOP;
    RETURN out;
END
$body$
"#;

/// Whether the function can write `ops` (refreshes go the statement-by-statement way).
pub(crate) fn applies(ops: &[Op]) -> bool {
    !ops.iter().any(|o| matches!(o, Op::Refresh { .. }))
}

/// The ops as the function's JSON document, one object per op (`o` the op, `b` and `k`
/// its bucket and key, `c` its condition, `g` the generation it names, `v` the value it
/// puts); bucket names are checked as every other statement checks them.
pub(crate) fn document(ops: &[Op]) -> Result<String> {
    let encode = |e: serde_json::Error| StoreError::InvalidFilter(format!("a batch does not encode: {e}"));
    let mut doc = Vec::with_capacity(128 * ops.len());
    doc.push(b'[');
    for (i, op) in ops.iter().enumerate() {
        let (bucket, key, cond) = op.target();
        bucket_literal(bucket)?;
        let (o, v) = match op {
            Op::Put { value, .. } => ("put", Some(value)),
            Op::Delete { .. } => ("delete", None),
            Op::Check { .. } => ("check", None),
            Op::Refresh { .. } => return Err(StoreError::InvalidFilter("a refresh is not written by the batch function".into())),
        };
        let (c, g) = match cond {
            Cond::Any => ("any", None),
            Cond::Absent => ("absent", None),
            Cond::Exists => ("exists", None),
            Cond::Generation(g) => ("generation", Some(g)),
        };
        if i > 0 {
            doc.push(b',');
        }
        // (Op kinds, conditions and checked bucket names need no escaping.)
        doc.extend_from_slice(format!(r#"{{"o":"{o}","b":"{bucket}","c":"{c}","k":"#).as_bytes());
        serde_json::to_writer(&mut doc, key).map_err(encode)?;
        if let Some(g) = g {
            doc.extend_from_slice(format!(r#","g":{g}"#).as_bytes());
        }
        if let Some(v) = v {
            doc.extend_from_slice(br#","v":"#);
            serde_json::to_writer(&mut doc, v).map_err(encode)?;
        }
        doc.push(b'}');
    }
    doc.push(b']');
    String::from_utf8(doc).map_err(|e| StoreError::InvalidFilter(format!("a batch does not encode: {e}")))
}

/// The function's refusal as the [`StoreError::Conflict`] of the op it names; any other
/// error as it is.
pub(crate) fn conflict(ops: &[Op], e: sqlx::Error) -> StoreError {
    let named = match &e {
        sqlx::Error::Database(d) if d.code().as_deref() == Some(CONFLICT_STATE) => d
            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .and_then(|p| p.detail())
            .and_then(|t| serde_json::from_str::<Value>(t).ok())
            .and_then(|v| Some((v.get("op")?.as_u64()? as usize, v.get("found").and_then(Value::as_i64)))),
        _ => None,
    };
    match named.and_then(|(i, found)| ops.get(i).map(|op| (i, op.target(), found))) {
        Some((op_index, (bucket, key, expected), found)) => {
            StoreError::Conflict { bucket: bucket.to_string(), key: key.to_string(), expected, found, op_index }
        }
        None => StoreError::Backend(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_document_names_each_op_its_condition_and_value() {
        let ops = vec![
            Op::put("vms", "a", json!({"x": "it's"}), Cond::Generation(3)),
            Op::delete("nics", "m", Cond::Any),
            Op::check("job_leases", "j", Cond::Absent),
        ];
        let doc: Value = serde_json::from_str(&document(&ops).unwrap()).unwrap();
        assert_eq!(
            doc,
            json!([
                {"o": "put", "b": "vms", "k": "a", "c": "generation", "g": 3, "v": {"x": "it's"}},
                {"o": "delete", "b": "nics", "k": "m", "c": "any"},
                {"o": "check", "b": "job_leases", "k": "j", "c": "absent"},
            ])
        );
        assert!(document(&[Op::put("Bad-Name", "k", json!({}), Cond::Any)]).is_err(), "bucket names are checked");
        assert!(!applies(&[Op::refresh("servers", "s", json!({}))]) && applies(&ops));
    }
}
