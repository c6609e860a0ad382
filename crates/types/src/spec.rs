//! Field tables: one declaration per resource that validates input *and* documents it.
//!
//! A resource (package, image manifest, network, …) lists its fields once as a
//! `&[Field]`: name, kind, whether create requires it, whether update may change it,
//! and a line of documentation. [`check`] walks a JSON object against the table and
//! returns every problem at once (Triton lists all bad fields, not the first), and
//! [`object_schema`] renders the same table as an OpenAPI schema, so the checked-in
//! API document can never disagree with what the server accepts.
//!
//! Cross-field rules (ranges inside a subnet, `max_swap >= ram`, …) live next to the
//! resource that needs them; this module only knows about single fields.

use serde_json::{Map, Value, json};

use crate::error::FieldError;

/// A further check on a string value; the error says what was expected.
pub type StrCheck = fn(&str) -> Result<(), String>;

/// What a field holds and which values are acceptable.
#[derive(Clone, Copy)]
pub enum Kind {
    /// A string of at most `max` bytes (at least 1), optionally checked further.
    Str {
        max: usize,
        check: Option<StrCheck>,
    },
    /// A UUID in its canonical hyphenated form.
    Uuid,
    Bool,
    /// An integer in `[min, max]`, optionally a multiple of something, with a unit for messages.
    Int {
        min: i64,
        max: i64,
        multiple_of: Option<i64>,
        unit: Option<&'static str>,
    },
    /// One of a fixed set of strings.
    Enum(&'static [&'static str]),
    /// An array of UUIDs.
    UuidList,
    /// An array of strings, each at most `max_item` bytes.
    StrList {
        max_item: usize,
    },
    /// A dotted-quad IPv4 address.
    Ipv4,
    /// An array of IPv4 addresses.
    Ipv4List,
    /// An IPv4 CIDR block such as `10.0.0.0/24` (host bits must be zero).
    Cidr,
    /// Any JSON object.
    Object,
    /// Anything else: a checker and the schema that documents it.
    Custom {
        check: fn(&Value) -> Result<(), String>,
        schema: fn() -> Value,
    },
}

/// One field of a resource.
#[derive(Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
    /// Create fails without it.
    pub required: bool,
    /// Update may change it without `force=true`.
    pub mutable: bool,
    /// Set by the server; accepted on input only where the resource says so.
    pub read_only: bool,
    pub doc: &'static str,
}

impl Field {
    pub const fn new(name: &'static str, kind: Kind, doc: &'static str) -> Self {
        Self { name, kind, required: false, mutable: true, read_only: false, doc }
    }
    pub const fn required(mut self) -> Self {
        self.required = true;
        self
    }
    pub const fn immutable(mut self) -> Self {
        self.mutable = false;
        self
    }
    pub const fn read_only(mut self) -> Self {
        self.read_only = true;
        self.mutable = false;
        self
    }
}

/// How an input object is being used.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// A new resource: required fields must be present, nulls are refused.
    Create,
    /// A change: nothing is required, `null` asks to remove a mutable, optional field.
    Update,
}

/// Checks `input` against `fields`; returns every problem found.
///
/// Unknown keys are refused. Read-only fields are refused unless listed in `allow_read_only`
/// (e.g. an import keeps a given `uuid`).
pub fn check(fields: &[Field], input: &Map<String, Value>, mode: Mode, allow_read_only: &[&str]) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for key in input.keys() {
        match fields.iter().find(|f| f.name == key) {
            None => errors.push(FieldError::unknown(key.clone())),
            Some(f) if f.read_only && !allow_read_only.contains(&f.name) => {
                errors.push(FieldError::invalid(key.clone(), "is set by the server and cannot be given"))
            }
            Some(_) => {}
        }
    }
    for f in fields {
        match input.get(f.name) {
            None if mode == Mode::Create && f.required => errors.push(FieldError::missing(f.name)),
            None => {}
            Some(Value::Null) => match mode {
                Mode::Create => errors.push(FieldError::invalid(f.name, "must not be null")),
                Mode::Update if f.required => errors.push(FieldError::invalid(f.name, "is required and cannot be removed")),
                Mode::Update => {}
            },
            Some(v) => {
                if let Err(msg) = check_value(&f.kind, v) {
                    errors.push(FieldError::invalid(f.name, msg));
                }
            }
        }
    }
    errors
}

/// Checks one value against a kind; the message says what was expected.
pub fn check_value(kind: &Kind, v: &Value) -> Result<(), String> {
    match kind {
        Kind::Str { max, check } => {
            let s = v.as_str().ok_or_else(|| format!("must be a string, not {}", type_name(v)))?;
            if s.is_empty() {
                return Err("must not be empty".into());
            }
            if s.len() > *max {
                return Err(format!("must be at most {max} characters long"));
            }
            if let Some(check) = check {
                check(s)?;
            }
            Ok(())
        }
        Kind::Uuid => {
            let s = v.as_str().ok_or_else(|| format!("must be a UUID string, not {}", type_name(v)))?;
            check_uuid(s)
        }
        Kind::Bool => v.as_bool().map(|_| ()).ok_or_else(|| format!("must be a boolean, not {}", type_name(v))),
        Kind::Int { min, max, multiple_of, unit } => {
            let n = v.as_i64().ok_or_else(|| format!("must be an integer, not {}", type_name(v)))?;
            let unit = unit.map(|u| format!(" ({u})")).unwrap_or_default();
            if n < *min {
                return Err(format!("must be at least {min}{unit}"));
            }
            if n > *max {
                return Err(format!("must be at most {max}{unit}"));
            }
            if let Some(m) = multiple_of
                && n % m != 0
            {
                return Err(format!("must be a multiple of {m}{unit}"));
            }
            Ok(())
        }
        Kind::Enum(allowed) => {
            let s = v.as_str().ok_or_else(|| format!("must be one of {}, not {}", allowed.join(", "), type_name(v)))?;
            if allowed.contains(&s) { Ok(()) } else { Err(format!("must be one of {} (got {s:?})", allowed.join(", "))) }
        }
        Kind::UuidList => each(v, |item| {
            let s = item.as_str().ok_or("items must be UUID strings")?;
            check_uuid(s)
        }),
        Kind::StrList { max_item } => each(v, |item| {
            let s = item.as_str().ok_or("items must be strings")?;
            if s.is_empty() || s.len() > *max_item {
                return Err(format!("items must be 1 to {max_item} characters long"));
            }
            Ok(())
        }),
        Kind::Ipv4 => {
            let s = v.as_str().ok_or_else(|| format!("must be an IPv4 address string, not {}", type_name(v)))?;
            crate::ipv4::parse_addr(s).map(|_| ())
        }
        Kind::Ipv4List => each(v, |item| {
            let s = item.as_str().ok_or("items must be IPv4 address strings")?;
            crate::ipv4::parse_addr(s).map(|_| ())
        }),
        Kind::Cidr => {
            let s = v.as_str().ok_or_else(|| format!("must be a CIDR string, not {}", type_name(v)))?;
            crate::ipv4::Subnet::parse(s).map(|_| ())
        }
        Kind::Object => v.as_object().map(|_| ()).ok_or_else(|| format!("must be an object, not {}", type_name(v))),
        Kind::Custom { check, .. } => check(v),
    }
}

fn each(v: &Value, f: impl Fn(&Value) -> Result<(), String>) -> Result<(), String> {
    let items = v.as_array().ok_or_else(|| format!("must be an array, not {}", type_name(v)))?;
    for (i, item) in items.iter().enumerate() {
        f(item).map_err(|e| format!("item {i}: {e}"))?;
    }
    Ok(())
}

/// Accepts the canonical 8-4-4-4-12 form (either case).
pub fn check_uuid(s: &str) -> Result<(), String> {
    if s.len() == 36 && uuid::Uuid::try_parse(s).is_ok() {
        Ok(())
    } else {
        Err(format!("must be a UUID like 2b4c5a9e-8f0d-4a43-9d8f-6c1e0a7f3b21 (got {:?})", truncate(s, 60)))
    }
}

/// The JSON type of a value, for messages.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Shortens user input quoted back in messages.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The fields of `input` that differ from `current` and may not change without `force`.
pub fn immutable_changes(fields: &[Field], current: &Map<String, Value>, input: &Map<String, Value>) -> Vec<FieldError> {
    input
        .iter()
        .filter(|(k, v)| fields.iter().any(|f| f.name == k.as_str() && !f.mutable && !f.read_only) && current.get(k.as_str()) != Some(v))
        .map(|(k, _)| FieldError::immutable(k.clone()))
        .collect()
}

/// Merges an update into a stored object: `null` removes a key, anything else replaces it.
pub fn merge(current: &mut Map<String, Value>, input: &Map<String, Value>) {
    for (k, v) in input {
        if v.is_null() {
            current.remove(k);
        } else {
            current.insert(k.clone(), v.clone());
        }
    }
}

/// The OpenAPI (3.0) schema of one kind.
pub fn kind_schema(kind: &Kind) -> Value {
    match kind {
        Kind::Str { max, .. } => json!({"type": "string", "minLength": 1, "maxLength": max}),
        Kind::Uuid => json!({"type": "string", "format": "uuid"}),
        Kind::Bool => json!({"type": "boolean"}),
        Kind::Int { min, max, multiple_of, .. } => {
            let mut s = json!({"type": "integer", "minimum": min, "maximum": max});
            if let Some(m) = multiple_of {
                s["multipleOf"] = json!(m);
            }
            s
        }
        Kind::Enum(allowed) => json!({"type": "string", "enum": allowed}),
        Kind::UuidList => json!({"type": "array", "items": {"type": "string", "format": "uuid"}}),
        Kind::StrList { max_item } => json!({"type": "array", "items": {"type": "string", "maxLength": max_item}}),
        Kind::Ipv4 => json!({"type": "string", "format": "ipv4"}),
        Kind::Ipv4List => json!({"type": "array", "items": {"type": "string", "format": "ipv4"}}),
        Kind::Cidr => json!({"type": "string", "pattern": "^[0-9.]+/[0-9]+$"}),
        Kind::Object => json!({"type": "object"}),
        Kind::Custom { schema, .. } => schema(),
    }
}

/// The OpenAPI schema of a whole field table, for input in `mode` or for output.
pub fn object_schema(fields: &[Field], usage: Usage) -> Value {
    let mut props = Map::new();
    let mut required = Vec::new();
    for f in fields {
        if f.read_only && usage != Usage::Output {
            continue;
        }
        let mut s = kind_schema(&f.kind);
        let mut doc = f.doc.to_string();
        if usage == Usage::Update && !f.mutable {
            doc.push_str(" Immutable: changing it needs force=true.");
        }
        s["description"] = Value::String(doc);
        props.insert(f.name.to_string(), s);
        if f.required && usage == Usage::Create {
            required.push(f.name);
        }
    }
    let mut schema = json!({"type": "object", "properties": props});
    if usage != Usage::Output {
        schema["additionalProperties"] = json!(false);
    }
    if !required.is_empty() {
        schema["required"] = json!(required);
    }
    schema
}

/// What a rendered schema describes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Usage {
    Create,
    Update,
    Output,
}

/// A one-line-per-field description of a table, for `--help` texts.
pub fn describe(fields: &[Field]) -> String {
    let mut out = String::new();
    for f in fields.iter().filter(|f| !f.read_only) {
        let req = if f.required { " (required)" } else { "" };
        out.push_str(&format!("  {:<22}{}{}\n", f.name, f.doc, req));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: &[Field] = &[
        Field::new("name", Kind::Str { max: 8, check: None }, "a name").required().immutable(),
        Field::new("ram", Kind::Int { min: 64, max: 1 << 20, multiple_of: None, unit: Some("MiB") }, "RAM"),
        Field::new("quota", Kind::Int { min: 1024, max: 1 << 30, multiple_of: Some(1024), unit: Some("MiB") }, "disk"),
        Field::new("uuid", Kind::Uuid, "id").read_only(),
        Field::new("owners", Kind::UuidList, "owners"),
    ];

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn reports_every_problem_with_units() {
        let errs = check(FIELDS, &obj(json!({"ram": 10, "quota": 1500, "bogus": 1, "owners": ["x"]})), Mode::Create, &[]);
        let by: Vec<(&str, &str)> = errs.iter().map(|e| (e.field.as_str(), e.code.as_str())).collect();
        assert!(by.contains(&("bogus", "UnknownParameter")));
        assert!(by.contains(&("name", "MissingParameter")));
        assert!(errs.iter().any(|e| e.field == "ram" && e.message == "must be at least 64 (MiB)"));
        assert!(errs.iter().any(|e| e.field == "quota" && e.message == "must be a multiple of 1024 (MiB)"));
        assert!(errs.iter().any(|e| e.field == "owners" && e.message.starts_with("item 0: must be a UUID")));
    }

    #[test]
    fn wrong_types_are_named() {
        let errs = check(FIELDS, &obj(json!({"name": 5, "ram": "lots"})), Mode::Create, &[]);
        assert_eq!(errs[0].message, "must be a string, not a number");
        assert_eq!(errs[1].message, "must be an integer, not a string");
    }

    #[test]
    fn read_only_fields_need_permission() {
        let input = obj(json!({"name": "a", "uuid": "2b4c5a9e-8f0d-4a43-9d8f-6c1e0a7f3b21"}));
        assert_eq!(check(FIELDS, &input, Mode::Create, &[]).len(), 1);
        assert!(check(FIELDS, &input, Mode::Create, &["uuid"]).is_empty());
    }

    #[test]
    fn update_allows_null_on_optional_fields_only() {
        assert!(check(FIELDS, &obj(json!({"ram": null})), Mode::Update, &[]).is_empty());
        assert_eq!(check(FIELDS, &obj(json!({"name": null})), Mode::Update, &[]).len(), 1);
        assert_eq!(check(FIELDS, &obj(json!({"ram": null})), Mode::Create, &[]).len(), 2);
    }

    #[test]
    fn immutable_changes_ignore_equal_values() {
        let cur = obj(json!({"name": "a", "ram": 64}));
        assert!(immutable_changes(FIELDS, &cur, &obj(json!({"name": "a", "ram": 128}))).is_empty());
        assert_eq!(immutable_changes(FIELDS, &cur, &obj(json!({"name": "b"})))[0].field, "name");
    }

    #[test]
    fn merge_removes_nulls() {
        let mut cur = obj(json!({"name": "a", "ram": 64}));
        merge(&mut cur, &obj(json!({"ram": null, "quota": 2048})));
        assert_eq!(Value::Object(cur), json!({"name": "a", "quota": 2048}));
    }

    #[test]
    fn schema_marks_required_and_closes_inputs() {
        let s = object_schema(FIELDS, Usage::Create);
        assert_eq!(s["required"], json!(["name"]));
        assert_eq!(s["additionalProperties"], json!(false));
        assert!(s["properties"].get("uuid").is_none());
        assert_eq!(s["properties"]["quota"]["multipleOf"], json!(1024));
        assert!(object_schema(FIELDS, Usage::Output)["properties"].get("uuid").is_some());
    }
}
