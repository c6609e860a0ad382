//! Query-string parameter tables: strict parsing of list filters and flags.
//!
//! Like [`crate::spec`] for bodies, each endpoint declares its parameters once; the
//! table validates the request (unknown parameters and bad values are refused with a
//! field error naming them) and documents the endpoint in the OpenAPI document.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::error::FieldError;
use crate::spec::truncate;

/// What a query parameter holds.
#[derive(Clone, Copy)]
pub enum QKind {
    /// Any non-empty string up to `max` bytes.
    Str {
        max: usize,
    },
    /// `true` or `false`.
    Bool,
    /// An integer in `[min, max]`.
    Int {
        min: i64,
        max: i64,
    },
    Uuid,
    Enum(&'static [&'static str]),
}

/// One query parameter; a `prefix` parameter matches every name starting with `name` (`tag.`).
#[derive(Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub kind: QKind,
    pub prefix: bool,
    pub doc: &'static str,
}

impl Param {
    pub const fn new(name: &'static str, kind: QKind, doc: &'static str) -> Self {
        Self { name, kind, prefix: false, doc }
    }
    pub const fn prefix(name: &'static str, doc: &'static str) -> Self {
        Self { name, kind: QKind::Str { max: 1024 }, prefix: true, doc }
    }
}

/// The common `limit`/`offset` pair of Triton list endpoints.
pub const LIMIT: Param = Param::new("limit", QKind::Int { min: 1, max: 1000 }, "Page size (1-1000, default 1000).");
pub const OFFSET: Param = Param::new("offset", QKind::Int { min: 0, max: i64::MAX }, "Number of items to skip.");

/// Validated query parameters.
#[derive(Debug, Default, Clone)]
pub struct Query {
    values: BTreeMap<String, String>,
    /// Prefix parameters as (full name, value), in request order.
    pub prefixed: Vec<(String, String)>,
}

impl Query {
    pub fn str(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }
    pub fn bool(&self, name: &str) -> Option<bool> {
        self.str(name).map(|v| v == "true")
    }
    /// True when the flag is given as `true`.
    pub fn flag(&self, name: &str) -> bool {
        self.bool(name).unwrap_or(false)
    }
    pub fn int(&self, name: &str) -> Option<i64> {
        self.str(name).and_then(|v| v.parse().ok())
    }
    /// `limit`, defaulting to `default`.
    pub fn limit(&self, default: i64) -> i64 {
        self.int("limit").unwrap_or(default)
    }
    pub fn offset(&self) -> i64 {
        self.int("offset").unwrap_or(0)
    }
}

/// Parses decoded `pairs` against `params`; returns every problem found.
pub fn parse(params: &[Param], pairs: &[(String, String)]) -> Result<Query, Vec<FieldError>> {
    let mut q = Query::default();
    let mut errors = Vec::new();
    for (name, value) in pairs {
        if name.contains('\0') || value.contains('\0') {
            errors.push(FieldError::invalid(truncate(&name.replace('\0', "\\0"), 60), "may not contain NUL characters"));
            continue;
        }
        if let Some(p) = params.iter().find(|p| p.prefix && name.starts_with(p.name) && name.len() > p.name.len()) {
            q.prefixed.push((name.clone(), value.clone()));
            let _ = p;
            continue;
        }
        let Some(p) = params.iter().find(|p| !p.prefix && p.name == name) else {
            errors.push(FieldError::unknown(truncate(name, 60)));
            continue;
        };
        if q.values.contains_key(name) {
            errors.push(FieldError::invalid(name.clone(), "is given more than once"));
            continue;
        }
        match check(&p.kind, value) {
            Ok(()) => {
                q.values.insert(name.clone(), value.clone());
            }
            Err(msg) => errors.push(FieldError::invalid(name.clone(), msg)),
        }
    }
    if errors.is_empty() { Ok(q) } else { Err(errors) }
}

fn check(kind: &QKind, v: &str) -> Result<(), String> {
    match kind {
        QKind::Str { max } => {
            if v.is_empty() {
                Err("must not be empty".into())
            } else if v.len() > *max {
                Err(format!("must be at most {max} characters long"))
            } else {
                Ok(())
            }
        }
        QKind::Bool => match v {
            "true" | "false" => Ok(()),
            _ => Err(format!("must be true or false (got {:?})", truncate(v, 40))),
        },
        QKind::Int { min, max } => match v.parse::<i64>() {
            Ok(n) if n < *min => Err(format!("must be at least {min}")),
            Ok(n) if n > *max => Err(format!("must be at most {max}")),
            Ok(_) => Ok(()),
            Err(_) => Err(format!("must be an integer (got {:?})", truncate(v, 40))),
        },
        QKind::Uuid => crate::spec::check_uuid(v),
        QKind::Enum(allowed) => {
            if allowed.contains(&v) {
                Ok(())
            } else {
                Err(format!("must be one of {} (got {:?})", allowed.join(", "), truncate(v, 40)))
            }
        }
    }
}

/// OpenAPI parameter objects for a table.
pub fn openapi_params(params: &[Param]) -> Vec<Value> {
    params
        .iter()
        .map(|p| {
            let schema = match p.kind {
                QKind::Str { max } => json!({"type": "string", "maxLength": max}),
                QKind::Bool => json!({"type": "boolean"}),
                QKind::Int { min, max } => json!({"type": "integer", "minimum": min, "maximum": max}),
                QKind::Uuid => json!({"type": "string", "format": "uuid"}),
                QKind::Enum(allowed) => json!({"type": "string", "enum": allowed}),
            };
            let name = if p.prefix { format!("{}<key>", p.name) } else { p.name.to_string() };
            json!({"name": name, "in": "query", "required": false, "description": p.doc, "schema": schema})
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &[Param] =
        &[Param::new("name", QKind::Str { max: 10 }, ""), Param::new("active", QKind::Bool, ""), LIMIT, Param::prefix("tag.", "")];

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn parses_known_and_prefixed() {
        let q = parse(P, &pairs(&[("name", "a"), ("active", "true"), ("limit", "5"), ("tag.role", "os")])).unwrap();
        assert_eq!(q.str("name"), Some("a"));
        assert_eq!(q.bool("active"), Some(true));
        assert_eq!(q.limit(1000), 5);
        assert_eq!(q.prefixed, pairs(&[("tag.role", "os")]));
    }

    #[test]
    fn refuses_unknown_duplicate_and_bad_values() {
        let errs =
            parse(P, &pairs(&[("nmae", "a"), ("active", "yes"), ("limit", "0"), ("name", "a"), ("name", "b"), ("tag.", "x")])).unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["nmae", "active", "limit", "name", "tag."]);
        assert_eq!(errs[2].message, "must be at least 1");
    }
}
