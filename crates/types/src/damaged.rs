//! Records that do not decode: what is left of them, and how to read it without trusting it.
//!
//! A stored object can go bad in ways no write path of Nereid produces — a restore from an
//! old backup, a hand edit, a half-finished migration, a buggy tool. Reading must never
//! fail because of one such object: every read decodes objects one at a time and turns a
//! failure into a [`Damaged`] record (see the headnode's `app::read_entry`). A damaged
//! record keeps its raw JSON and the decode error; the accessors here read single fields
//! leniently so placement can still count it against its server and an operator can be
//! told which record is bad and how to repair it.

use serde_json::{Map, Value, json};
use uuid::Uuid;

/// A stored object that does not decode as its bucket's type.
#[derive(Debug, Clone, PartialEq)]
pub struct Damaged {
    pub bucket: String,
    /// The store key (for VMs, the UUID).
    pub key: String,
    /// The value as stored.
    pub raw: Value,
    /// Why it does not decode.
    pub error: String,
}

/// One stored object: decoded, or damaged.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored<T> {
    Ok(T),
    Damaged(Damaged),
}

impl<T> Stored<T> {
    pub fn ok(self) -> Option<T> {
        match self {
            Stored::Ok(t) => Some(t),
            Stored::Damaged(_) => None,
        }
    }
    pub fn damaged(&self) -> Option<&Damaged> {
        match self {
            Stored::Ok(_) => None,
            Stored::Damaged(d) => Some(d),
        }
    }
}

/// Decodes one object; a failure becomes [`Stored::Damaged`].
pub fn decode<T: serde::de::DeserializeOwned>(bucket: &str, key: &str, raw: Value) -> Stored<T> {
    match serde_json::from_value::<T>(raw.clone()) {
        Ok(t) => Stored::Ok(t),
        Err(e) => Stored::Damaged(Damaged { bucket: bucket.into(), key: key.into(), raw, error: e.to_string() }),
    }
}

impl Damaged {
    fn field(&self, k: &str) -> Option<&Value> {
        self.raw.as_object().and_then(|o| o.get(k))
    }

    /// A string field, if it is one.
    pub fn str_field(&self, k: &str) -> Option<&str> {
        self.field(k).and_then(Value::as_str)
    }

    /// A UUID field, if it parses.
    pub fn uuid_field(&self, k: &str) -> Option<Uuid> {
        self.str_field(k).and_then(|s| Uuid::parse_str(s).ok())
    }

    /// A size field read leniently: a non-negative integer, or a string spelling one.
    pub fn u64_field(&self, k: &str) -> Option<u64> {
        match self.field(k)? {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// The key as a UUID (VMs, servers, images… are keyed by theirs).
    pub fn key_uuid(&self) -> Option<Uuid> {
        Uuid::parse_str(&self.key).ok()
    }

    /// How an operator API shows it: the raw fields (an object; anything else under
    /// `value`) with the key as `uuid` when the record has none, and a `damaged` marker
    /// that says why and how to repair it.
    pub fn render(&self, repair: &str) -> Value {
        let mut out = match &self.raw {
            Value::Object(o) => o.clone(),
            other => Map::from_iter([("value".to_string(), other.clone())]),
        };
        if !out.get("uuid").is_some_and(Value::is_string) {
            out.insert("uuid".into(), json!(self.key));
        }
        out.insert("damaged".into(), json!({"error": self.error, "repair": repair}));
        Value::Object(out)
    }

    /// One line naming it, for logs, warnings and `doctor`.
    pub fn describe(&self) -> String {
        format!("stored {} record {} does not decode: {}", self.bucket, self.key, self.error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_fields_and_rendering() {
        let d = match decode::<u64>("vms", "k", json!({"ram": "1024", "cpu_cap": -1, "server_uuid": Uuid::nil(), "uuid": 5})) {
            Stored::Damaged(d) => d,
            Stored::Ok(_) => panic!("an object is not a u64"),
        };
        assert_eq!(d.u64_field("ram"), Some(1024));
        assert_eq!(d.u64_field("cpu_cap"), None);
        assert_eq!(d.uuid_field("server_uuid"), Some(Uuid::nil()));
        let r = d.render("fix it");
        assert_eq!(r["uuid"], "k", "a non-string uuid is replaced by the key");
        assert_eq!(r["damaged"]["repair"], "fix it");
        assert!(r["damaged"]["error"].as_str().unwrap().contains("u64"));
        let scalar = match decode::<Map<String, Value>>("vms", "k2", json!(7)) {
            Stored::Damaged(d) => d,
            Stored::Ok(_) => panic!("7 is not an object"),
        };
        assert_eq!(scalar.render("")["value"], 7);
    }
}
