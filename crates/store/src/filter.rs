//! Filters over the JSON values of a bucket, compiled to SQL by each backend.
//!
//! Comparisons take their type from the value they compare with: a string compares as
//! text (byte order, on both backends), a number or boolean as a number. A field that is
//! absent (or JSON `null`) matches nothing but [`Filter::Absent`] and [`Filter::Ne`] —
//! unlike Moray, where `(!(state=destroyed))` quietly matched empty records.

use serde_json::Value;

use crate::StoreError;

/// A path into an object: keys, and indexes into arrays.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Path(pub Vec<Seg>);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Seg {
    Key(String),
    Index(usize),
}

impl Path {
    /// A top-level field.
    pub fn field(name: &str) -> Self {
        Path(vec![Seg::Key(name.to_string())])
    }
    /// Nested keys, e.g. `["tags", "triton.cns.services"]` (dots inside a key are literal).
    pub fn keys(keys: &[&str]) -> Self {
        Path(keys.iter().map(|k| Seg::Key((*k).to_string())).collect())
    }
    pub fn index(mut self, i: usize) -> Self {
        self.0.push(Seg::Index(i));
        self
    }
    pub fn key(mut self, k: &str) -> Self {
        self.0.push(Seg::Key(k.to_string()));
        self
    }

    /// Refuses paths that cannot be quoted safely into SQL.
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        if self.0.is_empty() || self.0.len() > 8 {
            return Err(StoreError::InvalidFilter("a field path has 1 to 8 parts".into()));
        }
        for s in &self.0 {
            if let Seg::Key(k) = s
                && (k.is_empty()
                    || k.len() > 200
                    || k.chars().any(|c| c == '"' || c == '\\' || c == '\'' || c.is_control() || c == '{' || c == '}' || c == ','))
            {
                return Err(StoreError::InvalidFilter(format!(
                    "field name {k:?} is empty, too long, or contains quotes, braces, commas or control characters"
                )));
            }
        }
        Ok(())
    }
}

/// A predicate over objects.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    True,
    Eq(Path, Value),
    /// Different from, or absent.
    Ne(Path, Value),
    Lt(Path, Value),
    Le(Path, Value),
    Gt(Path, Value),
    Ge(Path, Value),
    /// A string field matching literal pieces separated by wildcards:
    /// `["ab", ""]` is "starts with ab", `["", "ab", ""]` "contains ab".
    Glob(Path, Vec<String>),
    /// An array field with an element equal to the value.
    Has(Path, Value),
    /// Present and not null.
    Present(Path),
    /// Absent or null.
    Absent(Path),
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
}

impl Filter {
    pub fn eq(field: &str, v: impl Into<Value>) -> Self {
        Filter::Eq(Path::field(field), v.into())
    }
    pub fn has(field: &str, v: impl Into<Value>) -> Self {
        Filter::Has(Path::field(field), v.into())
    }
    pub fn prefix(field: &str, p: &str) -> Self {
        Filter::Glob(Path::field(field), vec![p.to_string(), String::new()])
    }
    pub fn contains(field: &str, s: &str) -> Self {
        Filter::Glob(Path::field(field), vec![String::new(), s.to_string(), String::new()])
    }
    /// Conjunction, flattening `True`s away.
    pub fn and(filters: Vec<Filter>) -> Self {
        let fs: Vec<Filter> = filters.into_iter().filter(|f| *f != Filter::True).collect();
        match fs.len() {
            0 => Filter::True,
            1 => fs.into_iter().next().unwrap_or(Filter::True),
            _ => Filter::And(fs),
        }
    }
    /// `field` equal to any of `values`.
    pub fn any_of(field: &str, values: Vec<Value>) -> Self {
        Filter::Or(values.into_iter().map(|v| Filter::Eq(Path::field(field), v)).collect())
    }

    /// Applies the filter to a JSON value in memory, with the same semantics as the SQL
    /// backends (used by tests to cross-check them).
    pub fn matches(&self, v: &Value) -> bool {
        let get = |p: &Path| {
            let mut cur = v;
            for s in &p.0 {
                cur = match s {
                    Seg::Key(k) => cur.get(k.as_str())?,
                    Seg::Index(i) => cur.get(*i)?,
                };
            }
            if cur.is_null() { None } else { Some(cur) }
        };
        let cmp = |p: &Path, x: &Value| -> Option<std::cmp::Ordering> {
            let f = get(p)?;
            match (f, x) {
                (Value::String(a), Value::String(b)) => Some(a.as_bytes().cmp(b.as_bytes())),
                (a, b) => num(a)?.partial_cmp(&num(b)?),
            }
        };
        use std::cmp::Ordering::*;
        match self {
            Filter::True => true,
            Filter::Eq(p, Value::Null) => get(p).is_none(),
            Filter::Ne(p, Value::Null) => get(p).is_some(),
            Filter::Eq(p, x) => cmp(p, x) == Some(Equal),
            Filter::Ne(p, x) => cmp(p, x) != Some(Equal),
            Filter::Lt(p, x) => cmp(p, x) == Some(Less),
            Filter::Le(p, x) => matches!(cmp(p, x), Some(Less | Equal)),
            Filter::Gt(p, x) => cmp(p, x) == Some(Greater),
            Filter::Ge(p, x) => matches!(cmp(p, x), Some(Greater | Equal)),
            Filter::Glob(p, parts) => get(p).and_then(Value::as_str).is_some_and(|s| glob_match(parts, s)),
            Filter::Has(p, x) => {
                get(p).and_then(Value::as_array).is_some_and(|a| a.iter().any(|e| e == x || (num(e).is_some() && num(e) == num(x))))
            }
            Filter::Present(p) => get(p).is_some(),
            Filter::Absent(p) => get(p).is_none(),
            Filter::And(fs) => fs.iter().all(|f| f.matches(v)),
            Filter::Or(fs) => fs.iter().any(|f| f.matches(v)),
            Filter::Not(f) => !f.matches(v),
        }
    }
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        _ => None,
    }
}

fn glob_match(parts: &[String], s: &str) -> bool {
    match parts {
        [] => s.is_empty(),
        [only] => s == only,
        [first, rest @ ..] => {
            let Some(mut tail) = s.strip_prefix(first.as_str()) else { return false };
            let (last, middle) = rest.split_last().map(|(l, m)| (l.as_str(), m)).unwrap_or(("", &[]));
            for m in middle {
                match tail.find(m.as_str()) {
                    Some(i) => tail = &tail[i + m.len()..],
                    None => return false,
                }
            }
            tail.len() >= last.len() && tail.ends_with(last)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn in_memory_semantics() {
        let v = json!({"name": "alpha-1", "ram": 512, "on": true, "tags": {"a.b": "x"}, "owners": ["u1", "u2"], "nothing": null});
        assert!(Filter::eq("ram", 512).matches(&v));
        assert!(Filter::eq("on", true).matches(&v));
        assert!(Filter::Ge(Path::field("ram"), json!(500)).matches(&v));
        assert!(Filter::prefix("name", "alp").matches(&v));
        assert!(Filter::contains("name", "ha-").matches(&v));
        assert!(!Filter::contains("name", "zz").matches(&v));
        assert!(Filter::Eq(Path::keys(&["tags", "a.b"]), json!("x")).matches(&v));
        assert!(Filter::has("owners", "u2").matches(&v));
        assert!(Filter::Absent(Path::field("nothing")).matches(&v));
        assert!(Filter::Ne(Path::field("missing"), json!(1)).matches(&v));
        assert!(!Filter::Eq(Path::field("missing"), json!(1)).matches(&v));
        assert!(Filter::Glob(Path::field("name"), vec!["a".into(), "-".into(), "1".into()]).matches(&v));
    }

    #[test]
    fn unsafe_paths_are_refused() {
        assert!(Path::field("a'b").validate().is_err());
        assert!(Path::field("").validate().is_err());
        assert!(Path::keys(&["tags", "triton.cns.services"]).validate().is_ok());
    }
}
