//! PAPI: create, list, get, update, delete packages.

use nereid_store::{Cond, Filter, Kind, ListQuery, Path};
use nereid_types::package::{self, Package};
use nereid_types::query::Query;
use nereid_types::{ApiError, FieldError};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{App, RETRIES, encode, store_error};
use crate::buckets::PACKAGES;

/// Fields `GET /packages` filters on, and how their values parse.
pub const FILTERABLE: &[(&str, FieldType)] = &[
    ("uuid", FieldType::Text),
    ("name", FieldType::Text),
    ("version", FieldType::Text),
    ("active", FieldType::Bool),
    ("brand", FieldType::Text),
    ("os", FieldType::Text),
    ("group", FieldType::Text),
    ("billing_tag", FieldType::Text),
    ("default", FieldType::Bool),
    ("flexible_disk", FieldType::Bool),
    ("alloc_server_spread", FieldType::Text),
    ("max_physical_memory", FieldType::Int),
    ("max_swap", FieldType::Int),
    ("max_lwps", FieldType::Int),
    ("quota", FieldType::Int),
    ("vcpus", FieldType::Int),
    ("cpu_cap", FieldType::Int),
    ("fss", FieldType::Int),
    ("zfs_io_priority", FieldType::Int),
];

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Text,
    Int,
    Bool,
}

/// Builds the store filter for `GET /packages`: equality per field, a JSON array of
/// values meaning "any of", `*` as a wildcard in text values, and `owner_uuids=X`
/// matching packages X may use (its own and public ones).
pub fn list_filter(q: &Query) -> Result<Filter, Vec<FieldError>> {
    let mut parts = Vec::new();
    let mut errors = Vec::new();
    for (field, ty) in FILTERABLE {
        let Some(raw) = q.str(field) else { continue };
        let values: Vec<Value> = if raw.starts_with('[') {
            match serde_json::from_str::<Vec<Value>>(raw) {
                Ok(v) if !v.is_empty() => v,
                _ => {
                    errors.push(FieldError::invalid(*field, "must be a value or a non-empty JSON array of values"));
                    continue;
                }
            }
        } else {
            vec![Value::String(raw.to_string())]
        };
        let mut alts = Vec::new();
        for v in values {
            match value_filter(field, *ty, &v) {
                Ok(f) => alts.push(f),
                Err(m) => errors.push(FieldError::invalid(*field, m)),
            }
        }
        parts.push(Filter::Or(alts));
    }
    if let Some(owner) = q.str("owner_uuids") {
        match Uuid::parse_str(owner) {
            Ok(u) => parts.push(Filter::Or(vec![Filter::has("owner_uuids", u.to_string()), Filter::Absent(Path::field("owner_uuids"))])),
            Err(_) => errors.push(FieldError::invalid("owner_uuids", "must be a UUID")),
        }
    }
    if errors.is_empty() { Ok(Filter::and(parts)) } else { Err(errors) }
}

fn value_filter(field: &str, ty: FieldType, v: &Value) -> Result<Filter, String> {
    let text = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match ty {
        FieldType::Text if text.contains('*') => Ok(Filter::Glob(Path::field(field), text.split('*').map(str::to_string).collect())),
        FieldType::Text => Ok(Filter::eq(field, text)),
        FieldType::Int => text.parse::<i64>().map(|n| Filter::eq(field, n)).map_err(|_| format!("must be an integer (got {text:?})")),
        FieldType::Bool => match text.as_str() {
            "true" => Ok(Filter::eq(field, true)),
            "false" => Ok(Filter::eq(field, false)),
            _ => Err(format!("must be true or false (got {text:?})")),
        },
    }
}

/// Sorting for `GET /packages`: `sort=<field>` and `order=ASC|DESC` (default: oldest first).
pub fn list_sort(q: &Query) -> (Path, Kind, bool) {
    let field = q.str("sort").unwrap_or("created_at");
    let kind = match FILTERABLE.iter().find(|(f, _)| *f == field) {
        Some((_, FieldType::Int | FieldType::Bool)) => Kind::Number,
        _ => Kind::Text,
    };
    let desc = q.str("order").is_some_and(|o| o.eq_ignore_ascii_case("desc"));
    (Path::field(field), kind, desc)
}

impl App {
    pub async fn create_package(&self, input: &Map<String, Value>) -> Result<Package, ApiError> {
        let pkg = package::check_create(input, &nereid_types::time::now_iso())?;
        match self.write(PACKAGES.name, &pkg.uuid.to_string(), &pkg, Cond::Absent).await {
            Ok(_) => Ok(pkg),
            Err(e) if e.is_conflict() => {
                Err(ApiError::validation_409(vec![FieldError::duplicate("uuid", format!("package {} already exists", pkg.uuid))]))
            }
            Err(e) => Err(store_error(e)),
        }
    }

    /// A package; `owner` set means "as seen by that account" (404 if it may not use it).
    pub async fn get_package(&self, uuid: Uuid, owner: Option<Uuid>) -> Result<Package, ApiError> {
        let not_found = || ApiError::not_found(format!("package {uuid} does not exist"));
        let (pkg, _) = self.read::<Package>(PACKAGES.name, &uuid.to_string()).await?.ok_or_else(not_found)?;
        if let (Some(o), Some(owners)) = (owner, &pkg.owner_uuids)
            && !owners.contains(&o)
        {
            return Err(not_found());
        }
        Ok(pkg)
    }

    /// Packages matching the query, and how many match in all.
    pub async fn list_packages(&self, q: &Query) -> Result<(Vec<Package>, i64), ApiError> {
        let filter = list_filter(q).map_err(ApiError::validation_409)?;
        let (path, kind, desc) = list_sort(q);
        let lq = ListQuery::filter(filter.clone()).sort(path, kind, desc).page(q.limit(1000), q.offset());
        let items = self.list(PACKAGES.name, &lq).await?;
        let total = self.store.count(PACKAGES.name, &filter).await.map_err(store_error)?;
        Ok((items, total))
    }

    pub async fn update_package(&self, uuid: Uuid, input: &Map<String, Value>, force: bool) -> Result<Package, ApiError> {
        for _ in 0..RETRIES {
            let (current, generation) = self
                .read::<Package>(PACKAGES.name, &uuid.to_string())
                .await?
                .ok_or_else(|| ApiError::not_found(format!("package {uuid} does not exist")))?;
            let next = package::check_update(&current, input, force, &nereid_types::time::now_iso())?;
            match self.store.put(PACKAGES.name, &uuid.to_string(), encode(&next), Cond::Generation(generation)).await {
                Ok(_) => return Ok(next),
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(ApiError::conflict("ConcurrentModification", format!("package {uuid} kept changing; retry")))
    }

    /// Packages are never deleted (VMs refer to them for billing) unless forced.
    pub async fn delete_package(&self, uuid: Uuid, force: bool) -> Result<(), ApiError> {
        if !force {
            return Err(ApiError::bad_method("Packages cannot be deleted (deactivate it with active=false, or pass force=true)"));
        }
        self.get_package(uuid, None).await?;
        self.store.delete(PACKAGES.name, &uuid.to_string(), Cond::Any).await.map_err(store_error)
    }
}

/// The package as PAPI renders it.
pub fn render(p: &Package) -> Value {
    encode(p)
}

/// The `x-resource-count`-style header value.
pub fn count_header(n: i64) -> String {
    json!(n).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nereid_types::query::{Param, QKind, parse};

    fn q(pairs: &[(&str, &str)]) -> Query {
        let params: Vec<Param> = FILTERABLE
            .iter()
            .map(|(f, _)| Param::new(f, QKind::Str { max: 1024 }, ""))
            .chain([Param::new("owner_uuids", QKind::Str { max: 64 }, "")])
            .collect();
        parse(&params, &pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn filters_from_query() {
        let f = list_filter(&q(&[("name", "g1.*"), ("active", "true")])).unwrap();
        assert!(f.matches(&json!({"name": "g1.small", "active": true})));
        assert!(!f.matches(&json!({"name": "g2.small", "active": true})));
        let f = list_filter(&q(&[("name", r#"["a","b"]"#), ("max_physical_memory", "[512, 1024]")])).unwrap();
        assert!(f.matches(&json!({"name": "b", "max_physical_memory": 1024})));
        assert!(!f.matches(&json!({"name": "b", "max_physical_memory": 2048})));
        let owner = Uuid::new_v4();
        let f = list_filter(&q(&[("owner_uuids", &owner.to_string())])).unwrap();
        assert!(f.matches(&json!({"owner_uuids": [owner]})));
        assert!(f.matches(&json!({"name": "public"})));
        assert!(!f.matches(&json!({"owner_uuids": [Uuid::new_v4()]})));
        let errs = list_filter(&q(&[("quota", "big"), ("active", "yes"), ("name", "[]")])).unwrap_err();
        assert_eq!(errs.len(), 3);
    }
}
