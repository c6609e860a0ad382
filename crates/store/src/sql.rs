//! SQL text shared by the backends: JSON field expressions, filters, ordering, indexes.
//!
//! Both backends keep every object in one `objects` table (`bucket, key, value,
//! generation, mtime`). A field is read with `json_extract(value, '$."a"."b"')` on
//! SQLite and `value #>> '{"a","b"}'` (text) / `value #> '{"a","b"}'` (typed jsonb) on
//! PostgreSQL. Index and query use the same expression text, so the planners match them.
//! Paths are validated ([`Path::validate`]) before being quoted into SQL; values are
//! always bound as parameters.

use serde_json::Value;

use crate::filter::{Filter, Path, Seg};
use crate::{Index, Kind, Sort, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// A bound parameter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Param {
    Text(String),
    Int(i64),
    Float(f64),
}

/// SQL text with its parameters, built left to right.
pub(crate) struct Sql {
    pub dialect: Dialect,
    pub text: String,
    pub params: Vec<Param>,
    /// Comparisons compile bare (no `COALESCE(…, FALSE)`): set by [`Sql::where_filter`]
    /// outside any `NOT`.
    bare: bool,
}

impl Sql {
    pub fn new(dialect: Dialect, text: &str) -> Self {
        Self { dialect, text: text.to_string(), params: Vec::new(), bare: false }
    }

    pub fn push(&mut self, s: &str) -> &mut Self {
        self.text.push_str(s);
        self
    }

    /// Appends a placeholder for `p`.
    pub fn bind(&mut self, p: Param) -> &mut Self {
        self.params.push(p);
        match self.dialect {
            Dialect::Sqlite => self.text.push('?'),
            Dialect::Postgres => {
                let n = self.params.len();
                self.text.push_str(&format!("${n}"));
            }
        }
        self
    }

    /// Appends a placeholder for a JSON value compared as jsonb (PostgreSQL).
    fn bind_jsonb(&mut self, v: &Value) -> &mut Self {
        self.bind(Param::Text(v.to_string()));
        self.text.push_str("::jsonb");
        self
    }

    /// Appends ` AND (<filter>)` with every comparison falsy-safe, as [`Sql::where_filter`]
    /// compiles them under a `NOT` (tests read that form whole).
    #[cfg(test)]
    pub fn filter(&mut self, f: &Filter) -> Result<(), StoreError> {
        self.push(" AND ");
        self.compile(f)
    }

    /// Appends ` AND (<filter>)` to a `WHERE` clause. There a NULL comparison already
    /// drops the row, so comparisons outside any `NOT` stay bare: the same expression as
    /// the bucket's indexes, which the planners then use (a `COALESCE` around it hides
    /// it from them). Under a `NOT` they keep [`Sql::filter`]'s `COALESCE`.
    pub fn where_filter(&mut self, f: &Filter) -> Result<(), StoreError> {
        self.push(" AND ");
        self.bare = true;
        let r = self.compile(f);
        self.bare = false;
        r
    }

    fn compile(&mut self, f: &Filter) -> Result<(), StoreError> {
        match f {
            Filter::True => {
                self.push("1=1");
            }
            Filter::Eq(p, Value::Null) => return self.compile(&Filter::Absent(p.clone())),
            Filter::Ne(p, Value::Null) => return self.compile(&Filter::Present(p.clone())),
            Filter::Eq(p, v) => self.compare(p, "=", v)?,
            Filter::Ne(p, v) => {
                let op = if self.dialect == Dialect::Sqlite { "IS NOT" } else { "IS DISTINCT FROM" };
                self.compare(p, op, v)?
            }
            Filter::Lt(p, v) => self.compare(p, "<", v)?,
            Filter::Le(p, v) => self.compare(p, "<=", v)?,
            Filter::Gt(p, v) => self.compare(p, ">", v)?,
            Filter::Ge(p, v) => self.compare(p, ">=", v)?,
            Filter::Glob(p, parts) => {
                p.validate()?;
                if parts.iter().any(|s| s.contains('\0')) {
                    return Err(StoreError::InvalidFilter("values may not contain NUL characters".into()));
                }
                self.falsy_open();
                match self.dialect {
                    Dialect::Sqlite => {
                        let pattern: Vec<String> = parts.iter().map(|s| glob_escape(s)).collect();
                        self.push(&format!("({} GLOB ", expr(self.dialect, p, Kind::Text)));
                        self.bind(Param::Text(pattern.join("*")));
                    }
                    Dialect::Postgres => {
                        let pattern: Vec<String> = parts.iter().map(|s| like_escape(s)).collect();
                        self.push(&format!("({} LIKE ", expr(self.dialect, p, Kind::Text)));
                        self.bind(Param::Text(pattern.join("%")));
                    }
                }
                self.push(")");
                self.falsy_close();
            }
            Filter::Has(p, v) => {
                p.validate()?;
                match self.dialect {
                    Dialect::Sqlite => {
                        self.push(&format!("EXISTS (SELECT 1 FROM json_each(objects.value, {}) AS j WHERE j.value = ", sqlite_path(p)));
                        self.bind(scalar(v)?);
                        self.push(")");
                    }
                    Dialect::Postgres => {
                        scalar(v)?;
                        self.falsy_open();
                        self.push(&format!("({} @> ", expr(self.dialect, p, Kind::Number)));
                        self.bind_jsonb(&Value::Array(vec![v.clone()]));
                        self.push(")");
                        self.falsy_close();
                    }
                }
            }
            Filter::Present(p) | Filter::Absent(p) => {
                p.validate()?;
                let ty = match self.dialect {
                    Dialect::Sqlite => format!("json_type(value, {})", sqlite_path(p)),
                    Dialect::Postgres => format!("jsonb_typeof(value #> {})", pg_path(p)),
                };
                let op = if matches!(f, Filter::Present(_)) { "<>" } else { "=" };
                self.push(&format!("(COALESCE({ty}, 'null') {op} 'null')"));
            }
            Filter::And(fs) | Filter::Or(fs) => {
                if fs.is_empty() {
                    self.push(if matches!(f, Filter::And(_)) { "1=1" } else { "1=0" });
                    return Ok(());
                }
                let join = if matches!(f, Filter::And(_)) { " AND " } else { " OR " };
                self.push("(");
                for (i, sub) in fs.iter().enumerate() {
                    if i > 0 {
                        self.push(join);
                    }
                    self.compile(sub)?;
                }
                self.push(")");
            }
            Filter::Not(inner) => {
                self.push("(NOT ");
                let bare = std::mem::replace(&mut self.bare, false);
                let r = self.compile(inner);
                self.bare = bare;
                r?;
                self.push(")");
            }
        }
        Ok(())
    }

    /// `COALESCE((…), FALSE)`: a comparison with an absent field is false, never NULL, so
    /// that `NOT` of it is true (SQL's three-valued logic would otherwise drop the row).
    fn falsy_open(&mut self) {
        if !self.bare {
            self.push("COALESCE(");
        }
    }

    fn falsy_close(&mut self) {
        if self.bare {
            return;
        }
        self.push(match self.dialect {
            Dialect::Sqlite => ", 0)",
            Dialect::Postgres => ", FALSE)",
        });
    }

    fn compare(&mut self, p: &Path, op: &str, v: &Value) -> Result<(), StoreError> {
        p.validate()?;
        let null_safe = op.starts_with("IS");
        if !null_safe {
            self.falsy_open();
        }
        match (self.dialect, v) {
            (_, Value::String(s)) => {
                scalar(v)?;
                self.push(&format!("({} {op} ", expr(self.dialect, p, Kind::Text)));
                self.bind(Param::Text(s.clone()));
            }
            (Dialect::Sqlite, _) => {
                self.push(&format!("({} {op} ", expr(self.dialect, p, Kind::Number)));
                self.bind(scalar(v)?);
            }
            (Dialect::Postgres, _) => {
                scalar(v)?;
                self.push(&format!("({} {op} ", expr(self.dialect, p, Kind::Number)));
                self.bind_jsonb(v);
            }
        }
        self.push(")");
        if !null_safe {
            self.falsy_close();
        }
        Ok(())
    }

    /// Appends ` ORDER BY …, key`.
    pub fn order(&mut self, sort: &[Sort]) -> Result<(), StoreError> {
        self.push(" ORDER BY ");
        for s in sort {
            s.path.validate()?;
            self.push(&format!("{} {}, ", expr(self.dialect, &s.path, s.kind), direction(s)));
        }
        self.push("key ASC");
        Ok(())
    }

    /// Appends `, <sort expression> AS s0, …`: the sort keys as columns of a key-only page.
    pub fn sort_columns(&mut self, sort: &[Sort]) -> Result<(), StoreError> {
        for (i, s) in sort.iter().enumerate() {
            s.path.validate()?;
            self.push(&format!(", {} AS s{i}", expr(self.dialect, &s.path, s.kind)));
        }
        Ok(())
    }

    /// Appends ` ORDER BY {page}.s0 …, {page}.k`: [`Sql::order`] over the columns of a
    /// key-only page ([`Sql::sort_columns`], the key as `k`), the same order.
    pub fn order_page(&mut self, page: &str, sort: &[Sort]) {
        self.push(" ORDER BY ");
        for (i, s) in sort.iter().enumerate() {
            self.push(&format!("{page}.s{i} {}, ", direction(s)));
        }
        self.push(&format!("{page}.k ASC"));
    }

    /// Appends ` LIMIT … OFFSET …`.
    pub fn page(&mut self, limit: Option<i64>, offset: i64) {
        match (limit, self.dialect) {
            (Some(l), _) => {
                self.push(" LIMIT ");
                self.bind(Param::Int(l));
            }
            (None, Dialect::Sqlite) if offset > 0 => {
                self.push(" LIMIT -1");
            }
            (None, _) => {}
        }
        if offset > 0 {
            self.push(" OFFSET ");
            self.bind(Param::Int(offset));
        }
    }
}

fn direction(s: &Sort) -> &'static str {
    if s.desc { "DESC NULLS LAST" } else { "ASC NULLS FIRST" }
}

/// A JSON scalar as a parameter (booleans as 0/1, as SQLite's json_extract returns them).
fn scalar(v: &Value) -> Result<Param, StoreError> {
    match v {
        Value::String(s) if s.contains('\0') => Err(StoreError::InvalidFilter("values may not contain NUL characters".into())),
        Value::String(s) => Ok(Param::Text(s.clone())),
        Value::Bool(b) => Ok(Param::Int(i64::from(*b))),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Ok(Param::Int(i)),
            None => Ok(Param::Float(n.as_f64().unwrap_or(0.0))),
        },
        other => Err(StoreError::InvalidFilter(format!("cannot compare a field with {other}: only strings, numbers and booleans"))),
    }
}

/// `'$."a"."b"[0]'` (a quoted SQL literal).
fn sqlite_path(p: &Path) -> String {
    let mut s = String::from("'$");
    for seg in &p.0 {
        match seg {
            Seg::Key(k) => s.push_str(&format!(".\"{k}\"")),
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s.push('\'');
    s
}

/// `'{"a","b","0"}'` (a quoted SQL literal of a text array).
fn pg_path(p: &Path) -> String {
    let parts: Vec<String> =
        p.0.iter()
            .map(|seg| match seg {
                Seg::Key(k) => format!("\"{k}\""),
                Seg::Index(i) => i.to_string(),
            })
            .collect();
    format!("'{{{}}}'", parts.join(","))
}

/// The expression reading a field, as both queries and indexes spell it.
pub(crate) fn expr(d: Dialect, p: &Path, kind: Kind) -> String {
    match (d, kind) {
        (Dialect::Sqlite, _) => format!("json_extract(value, {})", sqlite_path(p)),
        (Dialect::Postgres, Kind::Text) => format!("((value #>> {}) COLLATE \"C\")", pg_path(p)),
        (Dialect::Postgres, Kind::Number) => format!("(value #> {})", pg_path(p)),
    }
}

/// One declared field's index: its name and its `CREATE INDEX IF NOT EXISTS`.
///
/// The index holds the field and then the key, the order of every sorted list (sorts
/// break ties by key): a page sorted by an indexed field walks the index and stops at the
/// page's end instead of reading and sorting every row of the bucket. The name carries a
/// hash of the indexed expressions, so an index of an older shape has another name and is
/// dropped ([`stale_indexes`]) when the bucket is ensured.
pub(crate) fn create_index(d: Dialect, bucket: &str, index: &Index) -> Result<(String, String), StoreError> {
    let path = Path::keys(index.path);
    path.validate()?;
    let lit = bucket_literal(bucket)?;
    let e = expr(d, &path, index.kind);
    let mut name: String = format!("ix_{bucket}_{}", index.path.join("_"))
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
        .collect();
    name.truncate(48);
    let name = format!("{name}_{:08x}", fnv(&format!("{bucket}|{e}, key")));
    let ddl = format!("CREATE INDEX IF NOT EXISTS {name} ON objects ({e}, key) WHERE bucket = {lit}");
    Ok((name, ddl))
}

/// The query listing the names and definitions of the store's field indexes (what
/// [`stale_indexes`] reads).
pub(crate) fn field_indexes_query(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => {
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'objects' AND name LIKE 'ix\\_%' ESCAPE '\\'"
        }
        Dialect::Postgres => {
            "SELECT indexname::text, indexdef::text FROM pg_indexes WHERE schemaname = current_schema() AND tablename = 'objects' AND indexname LIKE 'ix\\_%' ESCAPE '\\'"
        }
    }
}

/// Of the field indexes found (name, definition), those of `bucket` that its declared
/// indexes (`wanted` names) no longer include: an older shape, or a field no longer
/// declared. An index belongs to the bucket by its `WHERE bucket = '…'` clause, never by
/// its name (bucket names may prefix one another).
pub(crate) fn stale_indexes(d: Dialect, bucket: &str, found: &[(String, String)], wanted: &[String]) -> Vec<String> {
    let clause = match d {
        Dialect::Sqlite => format!("WHERE bucket = '{bucket}'"),
        Dialect::Postgres => format!("WHERE (bucket = '{bucket}'::text)"),
    };
    found.iter().filter(|(name, def)| def.ends_with(&clause) && !wanted.contains(name)).map(|(name, _)| name.clone()).collect()
}

/// A bucket name as a SQL literal. Buckets are inlined (not bound) so that the planners
/// can match the per-bucket partial indexes; the name is checked to make that safe.
pub(crate) fn bucket_literal(bucket: &str) -> Result<String, StoreError> {
    if bucket.is_empty() || bucket.len() > 48 || !bucket.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_') {
        return Err(StoreError::InvalidFilter(format!("bucket name {bucket:?} must be 1-48 lowercase letters, digits and _")));
    }
    Ok(format!("'{bucket}'"))
}

fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// Escapes SQLite GLOB metacharacters.
fn glob_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '*' => out.push_str("[*]"),
            '?' => out.push_str("[?]"),
            '[' => out.push_str("[[]"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes LIKE metacharacters (backslash is PostgreSQL's default escape).
fn like_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn compiles_typed_comparisons() {
        let f = Filter::and(vec![Filter::eq("name", "a"), Filter::Ge(Path::field("ram"), json!(5)), Filter::has("owners", "u")]);
        let mut s = Sql::new(Dialect::Postgres, "SELECT 1 FROM objects WHERE bucket = 'b'");
        s.filter(&f).unwrap();
        assert_eq!(
            s.text,
            "SELECT 1 FROM objects WHERE bucket = 'b' AND (COALESCE((((value #>> '{\"name\"}') COLLATE \"C\") = $1), FALSE) AND COALESCE(((value #> '{\"ram\"}') >= $2::jsonb), FALSE) AND COALESCE(((value #> '{\"owners\"}') @> $3::jsonb), FALSE))"
        );
        assert_eq!(s.params[2], Param::Text("[\"u\"]".into()));
        let mut s = Sql::new(Dialect::Sqlite, "");
        s.filter(&Filter::Glob(Path::field("n"), vec!["a*b".into(), String::new()])).unwrap();
        assert_eq!(s.text, " AND COALESCE((json_extract(value, '$.\"n\"') GLOB ?), 0)");
        assert_eq!(s.params[0], Param::Text("a[*]b*".into()));
    }

    #[test]
    fn where_clauses_leave_comparisons_bare_outside_not() {
        let f = Filter::and(vec![
            Filter::eq("owner", "u"),
            Filter::Not(Box::new(Filter::eq("state", "x"))),
            Filter::Or(vec![Filter::Ge(Path::field("ram"), json!(5)), Filter::Not(Box::new(Filter::has("tags", "t")))]),
        ]);
        let mut s = Sql::new(Dialect::Sqlite, "");
        s.where_filter(&f).unwrap();
        assert_eq!(
            s.text,
            " AND ((json_extract(value, '$.\"owner\"') = ?) AND (NOT COALESCE((json_extract(value, '$.\"state\"') = ?), 0)) AND ((json_extract(value, '$.\"ram\"') >= ?) OR (NOT EXISTS (SELECT 1 FROM json_each(objects.value, '$.\"tags\"') AS j WHERE j.value = ?))))"
        );
        let mut s = Sql::new(Dialect::Postgres, "");
        s.where_filter(&Filter::and(vec![Filter::eq("owner", "u"), Filter::Not(Box::new(Filter::has("acl", "a")))])).unwrap();
        assert_eq!(
            s.text,
            " AND ((((value #>> '{\"owner\"}') COLLATE \"C\") = $1) AND (NOT COALESCE(((value #> '{\"acl\"}') @> $2::jsonb), FALSE)))"
        );
        // Plain filter() keeps every comparison falsy-safe.
        let mut s = Sql::new(Dialect::Sqlite, "");
        s.filter(&Filter::eq("owner", "u")).unwrap();
        assert!(s.text.contains("COALESCE"));
    }

    #[test]
    fn refuses_structured_comparisons() {
        let mut s = Sql::new(Dialect::Sqlite, "");
        assert!(s.filter(&Filter::eq("a", json!([1]))).is_err());
    }

    #[test]
    fn index_matches_query_expression() {
        let idx = Index { path: &["owner"], kind: Kind::Text };
        let (name, ddl) = create_index(Dialect::Postgres, "images", &idx).unwrap();
        assert!(ddl.contains(&format!("({}, key)", expr(Dialect::Postgres, &Path::field("owner"), Kind::Text))), "{ddl}");
        assert!(ddl.contains(&name));
        assert!(create_index(Dialect::Sqlite, "Bad-Name", &idx).is_err());
    }

    #[test]
    fn stale_indexes_are_the_buckets_own_undeclared_ones() {
        let found = |d: &str| {
            vec![
                ("ix_vm_a_old".to_string(), format!("CREATE INDEX ix_vm_a_old ON objects (x) {d}'vm'")),
                ("ix_vm_a_new".to_string(), format!("CREATE INDEX ix_vm_a_new ON objects (x, key) {d}'vm'")),
                ("ix_vms_b".to_string(), format!("CREATE INDEX ix_vms_b ON objects (y) {d}'vms'")),
            ]
        };
        let wanted = vec!["ix_vm_a_new".to_string()];
        assert_eq!(stale_indexes(Dialect::Sqlite, "vm", &found("WHERE bucket = "), &wanted), vec!["ix_vm_a_old"]);
        let pg: Vec<(String, String)> = found("WHERE (bucket = ").into_iter().map(|(n, d)| (n, format!("{d}::text)"))).collect();
        assert_eq!(stale_indexes(Dialect::Postgres, "vm", &pg, &wanted), vec!["ix_vm_a_old"]);
        assert_eq!(stale_indexes(Dialect::Postgres, "vms", &pg, &[]), vec!["ix_vms_b"]);
    }
}
