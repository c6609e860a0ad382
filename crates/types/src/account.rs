//! Accounts and their SSH keys: what UFDS holds for Triton.
//!
//! An account owns VMs, images and networks (its `uuid` is their `owner_uuid`) and signs
//! CloudAPI requests with one of its SSH keys. An `operator` account sees every tenant's
//! resources through CloudAPI, as Triton's operators group does. Sub-users (RBAC) are not
//! implemented yet; the model leaves room for them: a key belongs to an account and,
//! later, optionally to one of its users (`user_uuid`).
//!
//! Records are stored in snake_case; CloudAPI renders the account in its camelCase form
//! ([`cloudapi_name`] maps between the two).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::error::{ApiError, FieldError};
use crate::spec::{self, Field, Kind, Mode};

/// The account's field table (admin API input and documentation).
pub const FIELDS: &[Field] = &[
    Field::new("uuid", Kind::Uuid, "Account UUID (the owner_uuid of its resources); generated when absent.").immutable(),
    Field::new("login", Kind::Str { max: 32, check: Some(check_login) }, "Login: a letter, then letters, digits, `_`, `.` or `@` (3–32).")
        .required()
        .immutable(),
    Field::new("email", Kind::Str { max: 256, check: Some(check_email) }, "Email address.").required(),
    Field::new("first_name", Kind::Str { max: 128, check: None }, "Given name (CloudAPI `firstName`)."),
    Field::new("last_name", Kind::Str { max: 128, check: None }, "Surname (CloudAPI `lastName`)."),
    Field::new("company_name", Kind::Str { max: 256, check: None }, "Company (CloudAPI `companyName`)."),
    Field::new("address", Kind::Str { max: 512, check: None }, "Postal address."),
    Field::new("postal_code", Kind::Str { max: 32, check: None }, "Postal code (CloudAPI `postalCode`)."),
    Field::new("city", Kind::Str { max: 128, check: None }, "City."),
    Field::new("state", Kind::Str { max: 128, check: None }, "State or province."),
    Field::new("country", Kind::Str { max: 128, check: None }, "Country."),
    Field::new("phone", Kind::Str { max: 64, check: None }, "Phone number."),
    Field::new("triton_cns_enabled", Kind::Bool, "Whether CNS publishes DNS names for this account's instances."),
    Field::new("default_network", Kind::Uuid, "Network new instances go on when none is named (CloudAPI's config)."),
    Field::new("operator", Kind::Bool, "Operators see and act on every account's resources through CloudAPI."),
    Field::new("disabled", Kind::Bool, "A disabled account cannot authenticate; its instances keep running."),
    Field::new("created", Kind::Str { max: 40, check: None }, "Creation time (ISO 8601).").read_only(),
    Field::new("updated", Kind::Str { max: 40, check: None }, "Last update time (ISO 8601).").read_only(),
];

/// The fields a tenant may change on its own account (CloudAPI UpdateAccount), in
/// CloudAPI's spelling.
pub const TENANT_UPDATABLE: &[&str] =
    &["email", "companyName", "firstName", "lastName", "address", "postalCode", "city", "state", "country", "phone", "triton_cns_enabled"];

/// An account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub uuid: Uuid,
    pub login: String,
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default)]
    pub triton_cns_enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_network: Option<Uuid>,
    #[serde(default)]
    pub operator: bool,
    #[serde(default)]
    pub disabled: bool,
    pub created: String,
    pub updated: String,
}

/// An SSH public key of an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountKey {
    pub account_uuid: Uuid,
    /// Reserved for RBAC sub-users: the user the key belongs to (none = the account's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_uuid: Option<Uuid>,
    /// Unique per account; defaults to the key's comment, else its MD5 fingerprint.
    pub name: String,
    /// MD5 fingerprint, lowercase colon hex: what the `triton` CLI puts in its keyId.
    pub fingerprint: String,
    /// `SHA256:<base64>`, as `ssh-keygen -l` prints it.
    pub sha256: String,
    /// The OpenSSH public key line.
    pub key: String,
    /// `rsa`, `ecdsa` or `ed25519`.
    #[serde(rename = "type")]
    pub kind: String,
    pub bits: u32,
    pub created: String,
}

/// The CloudAPI spelling of a stored account field (and back, with `reverse`).
pub fn cloudapi_name(stored: &str) -> &str {
    match stored {
        "first_name" => "firstName",
        "last_name" => "lastName",
        "company_name" => "companyName",
        "postal_code" => "postalCode",
        other => other,
    }
}

/// The stored name of a CloudAPI account field.
pub fn stored_name(cloudapi: &str) -> &str {
    match cloudapi {
        "firstName" => "first_name",
        "lastName" => "last_name",
        "companyName" => "company_name",
        "postalCode" => "postal_code",
        other => other,
    }
}

/// Logins as UFDS takes them: a letter first, then letters, digits, `_`, `.`, `@`; 3–32
/// characters. `my` is refused: CloudAPI paths use it for "the caller's account".
pub fn check_login(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    let ok = (3..=32).contains(&b.len())
        && b[0].is_ascii_alphabetic()
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'@'));
    if !ok {
        return Err(format!(
            "must be 3 to 32 characters, start with a letter and use only letters, digits, _ . @ (got {:?})",
            spec::truncate(s, 40)
        ));
    }
    if s.eq_ignore_ascii_case("my") {
        return Err("\"my\" is reserved: CloudAPI paths use /my for the caller's own account".into());
    }
    Ok(())
}

fn check_email(s: &str) -> Result<(), String> {
    match s.split_once('@') {
        Some((user, host)) if !user.is_empty() && host.contains('.') && !host.starts_with('.') && !s.contains(char::is_whitespace) => {
            Ok(())
        }
        _ => Err(format!("must be an email address like alice@example.com (got {:?})", spec::truncate(s, 60))),
    }
}

/// Validates a new account and returns it.
pub fn check_create(input: &Map<String, Value>, now: &str) -> Result<Account, ApiError> {
    let errors = spec::check(FIELDS, input, Mode::Create, &[]);
    if !errors.is_empty() {
        return Err(ApiError::validation_409(errors));
    }
    let mut obj = input.clone();
    obj.entry("uuid").or_insert_with(|| json!(Uuid::new_v4()));
    obj.insert("created".into(), json!(now));
    obj.insert("updated".into(), json!(now));
    serde_json::from_value(Value::Object(obj)).map_err(|e| ApiError::internal(format!("account did not decode: {e}")))
}

/// Validates a change to an account and returns the new record (`null` clears an
/// optional field; login and uuid never change).
pub fn check_update(current: &Account, input: &Map<String, Value>, now: &str) -> Result<Account, ApiError> {
    let Ok(Value::Object(mut obj)) = serde_json::to_value(current) else {
        return Err(ApiError::internal("account did not serialize to an object"));
    };
    let mut errors = spec::check(FIELDS, input, Mode::Update, &[]);
    for f in ["login", "uuid"] {
        if input.get(f).is_some_and(|v| Some(v) != obj.get(f)) {
            errors.push(FieldError::immutable(f));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::validation_409(errors));
    }
    spec::merge(&mut obj, input);
    obj.insert("updated".into(), json!(now));
    serde_json::from_value(Value::Object(obj)).map_err(|e| ApiError::validation_409(vec![FieldError::invalid("account", e.to_string())]))
}

/// A key name: 1–128 printable characters without `/` (it appears in URL paths).
pub fn check_key_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 128 || s.contains('/') || s.chars().any(char::is_control) {
        return Err(format!("must be 1 to 128 printable characters without '/' (got {:?})", spec::truncate(s, 40)));
    }
    Ok(())
}

/// Longest password accepted (bytes): long passphrases fit, a request cannot make the
/// headnode hash megabytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// A password: 8 or more characters (at most [`MAX_PASSWORD_BYTES`] bytes), not only
/// spaces, no control characters. The message never repeats it.
pub fn check_password(s: &str) -> Result<(), String> {
    if s.chars().count() < 8 {
        return Err("must be at least 8 characters".into());
    }
    if s.len() > MAX_PASSWORD_BYTES {
        return Err(format!("must be at most {MAX_PASSWORD_BYTES} bytes"));
    }
    if s.trim().is_empty() || s.chars().any(char::is_control) {
        return Err("must be printable characters, not only spaces".into());
    }
    Ok(())
}

/// The account as CloudAPI's GetAccount renders it: unset (or empty) contact fields are
/// left out, as sdc-cloudapi leaves them out, so `triton account get` prints no `null`s.
pub fn render_cloudapi(a: &Account) -> Value {
    let mut out = Map::new();
    out.insert("id".into(), json!(a.uuid));
    out.insert("login".into(), json!(a.login));
    out.insert("email".into(), json!(a.email));
    for (name, v) in [
        ("companyName", &a.company_name),
        ("firstName", &a.first_name),
        ("lastName", &a.last_name),
        ("address", &a.address),
        ("postalCode", &a.postal_code),
        ("city", &a.city),
        ("state", &a.state),
        ("country", &a.country),
        ("phone", &a.phone),
    ] {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            out.insert(name.into(), json!(v));
        }
    }
    out.insert("created".into(), json!(a.created));
    out.insert("updated".into(), json!(a.updated));
    out.insert("triton_cns_enabled".into(), json!(a.triton_cns_enabled));
    Value::Object(out)
}

/// A key as CloudAPI's ListKeys/GetKey render it.
pub fn render_key_cloudapi(k: &AccountKey) -> Value {
    json!({"name": k.name, "fingerprint": k.fingerprint, "key": k.key})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn logins() {
        for ok in ["alice", "bob.smith", "a_b@corp", "Zed"] {
            assert!(check_login(ok).is_ok(), "{ok}");
        }
        for bad in ["", "ab", "1abc", "a b", "my", "MY", "a/b", &"x".repeat(33)] {
            assert!(check_login(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn create_and_update() {
        let a = check_create(&input(json!({"login": "alice", "email": "alice@example.com", "first_name": "Alice"})), "t0").unwrap();
        assert_eq!((a.login.as_str(), a.operator, a.disabled, a.created.as_str()), ("alice", false, false, "t0"));
        let e = check_create(&input(json!({"login": "alice"})), "t0").unwrap_err();
        assert_eq!(e.errors[0].field, "email");
        let e = check_create(&input(json!({"login": "alice", "email": "nope"})), "t0").unwrap_err();
        assert!(e.errors[0].message.contains("email address"), "{e:?}");
        let b = check_update(&a, &input(json!({"first_name": null, "phone": "555"})), "t1").unwrap();
        assert_eq!((b.first_name, b.phone.as_deref(), b.updated.as_str()), (None, Some("555"), "t1"));
        let e = check_update(&a, &input(json!({"login": "mallory"})), "t1").unwrap_err();
        assert_eq!(e.errors[0].field, "login");
        assert!(check_update(&a, &input(json!({"login": "alice"})), "t1").is_ok());
    }

    #[test]
    fn cloudapi_rendering() {
        let a = check_create(&input(json!({"login": "alice", "email": "a@example.com", "company_name": "ACME"})), "t0").unwrap();
        let v = render_cloudapi(&a);
        assert_eq!(v["companyName"], "ACME");
        assert!(v.get("firstName").is_none(), "unset fields are left out: {v}");
        assert_eq!(v["id"], json!(a.uuid));
        for f in TENANT_UPDATABLE {
            assert!(FIELDS.iter().any(|x| x.name == stored_name(f)), "{f}");
            assert_eq!(cloudapi_name(stored_name(f)), *f);
        }
    }

    #[test]
    fn passwords_are_long_enough_and_printable() {
        assert!(check_password("correct horse").is_ok());
        assert!(check_password("short").is_err());
        assert!(check_password("        ").is_err());
        assert!(check_password("tab\tinside!").is_err());
        assert!(check_password(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
        // Eight characters, counted as characters, not bytes.
        assert!(check_password("ééééééé").is_err() && check_password("éééééééé").is_ok());
        assert!(!check_password("hunter1").unwrap_err().contains("hunter1"));
    }
}
