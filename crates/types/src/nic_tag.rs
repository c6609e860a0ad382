//! NAPI nic tags: names for the physical (or VLAN-capable) networks servers attach to.
//!
//! Server NICs *provide* tags; VM NICs *attach* to one. On a Nereid compute node a tag
//! is a Linux bridge of the same name.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::error::{ApiError, FieldError};
use crate::spec::{self, Field, Kind, Mode};

/// The tag Triton reserves for its admin network; its MTU is fixed at 1500.
pub const ADMIN: &str = "admin";

fn check_name(s: &str) -> Result<(), String> {
    if s.len() <= 31 && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
        Ok(())
    } else {
        Err(format!("must be at most 31 letters, digits or underscores (got {:?})", spec::truncate(s, 40)))
    }
}

/// NAPI's nic tag field table.
pub const FIELDS: &[Field] = &[
    Field::new("uuid", Kind::Uuid, "Tag UUID.").read_only(),
    Field::new("name", Kind::Str { max: 31, check: Some(check_name) }, "Tag name: letters, digits and underscores, at most 31.").required(),
    Field::new(
        "mtu",
        Kind::Int { min: 1500, max: 9000, multiple_of: None, unit: Some("bytes") },
        "MTU of the physical network (1500-9000, default 1500).",
    ),
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicTag {
    pub uuid: Uuid,
    pub name: String,
    pub mtu: u32,
}

/// Validates a create body.
pub fn check_create(input: &Map<String, Value>) -> Result<NicTag, ApiError> {
    let errors = spec::check(FIELDS, input, Mode::Create, &[]);
    if !errors.is_empty() {
        return Err(ApiError::invalid_parameters(errors));
    }
    let tag = NicTag {
        uuid: Uuid::new_v4(),
        name: input.get("name").and_then(Value::as_str).unwrap_or_default().to_string(),
        mtu: input.get("mtu").and_then(Value::as_u64).unwrap_or(1500) as u32,
    };
    if tag.name == ADMIN && tag.mtu != 1500 {
        return Err(ApiError::invalid_parameters(vec![FieldError::invalid("mtu", "the admin tag's MTU must be 1500")]));
    }
    Ok(tag)
}

/// Validates an update; renames are checked against use by the caller.
pub fn check_update(current: &NicTag, input: &Map<String, Value>) -> Result<NicTag, ApiError> {
    let errors = spec::check(FIELDS, input, Mode::Update, &[]);
    if !errors.is_empty() {
        return Err(ApiError::invalid_parameters(errors));
    }
    let mut out = current.clone();
    if let Some(n) = input.get("name").and_then(Value::as_str) {
        out.name = n.to_string();
    }
    if let Some(m) = input.get("mtu").and_then(Value::as_u64) {
        out.mtu = m as u32;
    }
    if current.name == ADMIN && (out.mtu != 1500 || out.name != ADMIN) {
        return Err(ApiError::invalid_parameters(vec![FieldError::invalid("name", "the admin tag cannot be renamed or change its MTU")]));
    }
    Ok(out)
}

/// The rendered tag.
pub fn render(tag: &NicTag) -> Value {
    json!({"uuid": tag.uuid, "name": tag.name, "mtu": tag.mtu})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_names_and_admin_mtu() {
        let ok = check_create(json!({"name": "external"}).as_object().unwrap()).unwrap();
        assert_eq!(ok.mtu, 1500);
        assert!(check_create(json!({"name": "bad-name"}).as_object().unwrap()).is_err());
        assert!(check_create(json!({"name": "admin", "mtu": 9000}).as_object().unwrap()).is_err());
        let admin = check_create(json!({"name": "admin"}).as_object().unwrap()).unwrap();
        assert!(check_update(&admin, json!({"mtu": 9000}).as_object().unwrap()).is_err());
        assert_eq!(check_update(&ok, json!({"mtu": 9000}).as_object().unwrap()).unwrap().mtu, 9000);
    }
}
