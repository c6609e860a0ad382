//! Accounts and their SSH keys (Triton's UFDS): create, find, update, disable; keys
//! add/list/get/remove; and the lookup CloudAPI's signature check makes.
//!
//! Logins are unique through a claim object (`account_logins/<login>`) written in the
//! same batch as the account; key names likewise (`account_key_names/<account>/<name>`).
//! A key is stored under `<account>/<MD5 fingerprint>`, the form the `triton` CLI puts in
//! its keyId, so authenticating a request is two reads.

use nereid_store::{Cond, Filter, ListQuery, Op};
use nereid_types::account::{self, Account, AccountKey};
use nereid_types::{ApiError, FieldError};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{App, encode, store_error};
use crate::buckets::{ACCOUNT_KEY_NAMES, ACCOUNT_KEYS, ACCOUNT_LOGINS, ACCOUNTS};
use crate::cloudapi::sshkey;

/// A key checked and ready to store (nothing written yet).
pub fn prepare_key(account: Uuid, name: Option<&str>, text: &str, now: &str) -> Result<AccountKey, FieldError> {
    let parsed = sshkey::parse_public_key(text).map_err(|e| FieldError::invalid("key", e.to_string()))?;
    let name = match name.map(str::trim).filter(|n| !n.is_empty()) {
        Some(n) => n.to_string(),
        None if !parsed.comment.trim().is_empty() && account::check_key_name(parsed.comment.trim()).is_ok() => {
            parsed.comment.trim().to_string()
        }
        None => parsed.md5.clone(),
    };
    account::check_key_name(&name).map_err(|m| FieldError::invalid("name", m))?;
    Ok(AccountKey {
        account_uuid: account,
        user_uuid: None,
        name,
        fingerprint: parsed.md5.clone(),
        sha256: parsed.sha256.clone(),
        key: if parsed.comment.is_empty() { parsed.openssh.clone() } else { format!("{} {}", parsed.openssh, parsed.comment) },
        kind: parsed.type_name().to_string(),
        bits: u32::try_from(parsed.bits()).unwrap_or(u32::MAX),
        created: now.to_string(),
    })
}

fn key_ops(k: &AccountKey) -> Vec<Op> {
    vec![
        Op::put(ACCOUNT_KEYS.name, format!("{}/{}", k.account_uuid, k.fingerprint), encode(k), Cond::Absent),
        Op::put(ACCOUNT_KEY_NAMES.name, format!("{}/{}", k.account_uuid, k.name), json!({"fingerprint": k.fingerprint}), Cond::Absent),
    ]
}

fn key_conflict(account: &Account, keys: &[AccountKey], existing: &[AccountKey]) -> Option<ApiError> {
    for (i, k) in keys.iter().enumerate() {
        let dup_fp = existing.iter().chain(&keys[..i]).find(|e| e.fingerprint == k.fingerprint);
        if let Some(e) = dup_fp {
            return Some(ApiError::conflict(
                "InvalidArgument",
                format!("account {} already has this key (fingerprint {}, named {:?})", account.login, k.fingerprint, e.name),
            ));
        }
        if existing.iter().chain(&keys[..i]).any(|e| e.name == k.name) {
            return Some(ApiError::conflict(
                "InvalidArgument",
                format!("account {} already has a key named {:?}; give this one another name", account.login, k.name),
            ));
        }
    }
    None
}

impl App {
    /// Creates an account, with the keys in `keys: [{name?, key}]` if given; nothing is
    /// written unless every part is valid.
    pub async fn create_account(&self, input: &Map<String, Value>) -> Result<(Account, Vec<AccountKey>), ApiError> {
        let mut input = input.clone();
        let keys_in = input.remove("keys");
        let password_in = input.remove("password");
        let now = nereid_types::time::now_iso();
        let mut acct = account::check_create(&input, &now)?;
        let mut keys = Vec::new();
        let mut errors = Vec::new();
        match keys_in {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let text = item.get("key").and_then(Value::as_str);
                    let name = item.get("name").and_then(Value::as_str);
                    match text {
                        None => errors.push(FieldError::missing(format!("keys[{i}].key"))),
                        Some(t) => match prepare_key(acct.uuid, name, t, &now) {
                            Ok(k) => keys.push(k),
                            Err(mut e) => {
                                e.field = format!("keys[{i}].{}", e.field);
                                errors.push(e);
                            }
                        },
                    }
                }
            }
            Some(_) => errors.push(FieldError::invalid("keys", "must be an array of {\"name\"?, \"key\"} objects")),
        }
        let password = match password_in {
            None | Some(Value::Null) => None,
            Some(Value::String(p)) => match account::check_password(&p) {
                Ok(()) => Some(p),
                Err(m) => {
                    errors.push(FieldError::invalid("password", m));
                    None
                }
            },
            Some(_) => {
                errors.push(FieldError::invalid("password", "must be a string"));
                None
            }
        };
        if !errors.is_empty() {
            return Err(ApiError::validation_409(errors));
        }
        if let Some(e) = key_conflict(&acct, &keys, &[]) {
            return Err(e);
        }
        let mut ops = vec![
            Op::put(ACCOUNT_LOGINS.name, &acct.login, json!({"uuid": acct.uuid}), Cond::Absent),
            Op::put(ACCOUNTS.name, acct.uuid.to_string(), encode(&acct), Cond::Absent),
        ];
        ops.extend(keys.iter().flat_map(key_ops));
        if let Some(p) = password {
            let id = acct.uuid;
            ops.push(super::passwords::blocking(move || super::passwords::password_op(id, &p)).await??);
        }
        // With --fabric-default-network the account's default fabric lands in the same
        // batch: both or neither. A conflict on its part is a drawn VNI already taken.
        let base = ops.len();
        let mut attempts = 0;
        let result = loop {
            let mut all = ops.clone();
            if self.cfg.fabric.default_for_new_accounts {
                let (fabric, network) = self.default_fabric_ops(acct.uuid).await.map_err(|e| {
                    ApiError::new(
                        e.status,
                        e.code.clone(),
                        format!(
                            "account {} was not created: new accounts get a default fabric (--fabric-default-network) and it cannot be made: {}",
                            acct.login, e.message
                        ),
                    )
                    .with_errors(e.errors.clone())
                })?;
                // As in Triton, the default fabric network is the account's default network.
                acct.default_network = Some(network);
                all[1] = Op::put(ACCOUNTS.name, acct.uuid.to_string(), encode(&acct), Cond::Absent);
                all.extend(fabric);
            }
            match self.store.batch(all).await {
                Err(nereid_store::StoreError::Conflict { op_index, .. }) if op_index >= base && attempts < super::RETRIES => {
                    attempts += 1;
                }
                other => break other,
            }
        };
        match result {
            Ok(_) => Ok((acct, keys)),
            Err(e) if e.is_conflict() => {
                let taken = self.store.get(ACCOUNT_LOGINS.name, &acct.login).await.map_err(store_error)?.is_some();
                let (field, msg) = if taken {
                    ("login", format!("login {} is taken", acct.login))
                } else {
                    ("uuid", format!("account {} already exists", acct.uuid))
                };
                Err(ApiError::validation_409(vec![FieldError::duplicate(field, msg)]))
            }
            Err(e) => Err(store_error(e)),
        }
    }

    /// Accounts, by login order; `login`/`email` filter exactly.
    pub async fn list_accounts(&self, login: Option<&str>, email: Option<&str>) -> Result<Vec<Account>, ApiError> {
        let mut parts = Vec::new();
        if let Some(l) = login {
            parts.push(Filter::eq("login", l));
        }
        if let Some(e) = email {
            parts.push(Filter::eq("email", e));
        }
        let q = ListQuery::filter(Filter::and(parts)).sort(nereid_store::Path::field("login"), nereid_store::Kind::Text, false);
        self.list(ACCOUNTS.name, &q).await
    }

    /// An account by UUID or login.
    pub async fn find_account(&self, id: &str) -> Result<(Account, i64), ApiError> {
        let not_found = || ApiError::not_found(format!("account {id} does not exist"));
        let uuid = match Uuid::parse_str(id) {
            Ok(u) => u,
            Err(_) => {
                let (claim, _) = self.read::<Value>(ACCOUNT_LOGINS.name, id).await?.ok_or_else(not_found)?;
                claim.get("uuid").and_then(Value::as_str).and_then(|s| Uuid::parse_str(s).ok()).ok_or_else(not_found)?
            }
        };
        self.read::<Account>(ACCOUNTS.name, &uuid.to_string()).await?.ok_or_else(not_found)
    }

    /// Changes an account (a conditional write: a concurrent change answers 409).
    pub async fn update_account(&self, id: &str, input: &Map<String, Value>) -> Result<Account, ApiError> {
        let (current, generation) = self.find_account(id).await?;
        let next = account::check_update(&current, input, &nereid_types::time::now_iso())?;
        self.write(ACCOUNTS.name, &next.uuid.to_string(), &next, Cond::Generation(generation)).await.map_err(store_error)?;
        if next.triton_cns_enabled != current.triton_cns_enabled || next.login != current.login {
            self.cns_notify.notify_one();
        }
        Ok(next)
    }

    /// An account's keys, oldest first.
    pub async fn list_keys(&self, account: Uuid) -> Result<Vec<AccountKey>, ApiError> {
        let q = ListQuery::filter(Filter::eq("account_uuid", account.to_string())).sort(
            nereid_store::Path::field("created"),
            nereid_store::Kind::Text,
            false,
        );
        self.list(ACCOUNT_KEYS.name, &q).await
    }

    /// Adds a key to an account.
    pub async fn add_key(&self, account: &Account, name: Option<&str>, text: &str) -> Result<AccountKey, ApiError> {
        let key = prepare_key(account.uuid, name, text, &nereid_types::time::now_iso()).map_err(|e| {
            let mut err = ApiError::new(409, "InvalidArgument", e.message.clone());
            err.errors = vec![e];
            err
        })?;
        let existing = self.list_keys(account.uuid).await?;
        if let Some(e) = key_conflict(account, std::slice::from_ref(&key), &existing) {
            return Err(e);
        }
        match self.store.batch(key_ops(&key)).await {
            Ok(_) => Ok(key),
            // Another request added the same key or name in between.
            Err(e) if e.is_conflict() => Err(ApiError::conflict(
                "InvalidArgument",
                format!("account {} already has a key with this fingerprint or the name {:?}", account.login, key.name),
            )),
            Err(e) => Err(store_error(e)),
        }
    }

    /// A key by MD5 fingerprint (as the `triton` CLI sends it), `SHA256:` fingerprint or name.
    pub async fn get_key(&self, account: Uuid, id: &str) -> Result<Option<AccountKey>, ApiError> {
        if let Some((k, _)) = self.read::<AccountKey>(ACCOUNT_KEYS.name, &format!("{account}/{}", id.to_ascii_lowercase())).await? {
            return Ok(Some(k));
        }
        if let Some((claim, _)) = self.read::<Value>(ACCOUNT_KEY_NAMES.name, &format!("{account}/{id}")).await?
            && let Some(fp) = claim.get("fingerprint").and_then(Value::as_str)
        {
            return Ok(self.read::<AccountKey>(ACCOUNT_KEYS.name, &format!("{account}/{fp}")).await?.map(|(k, _)| k));
        }
        if id.starts_with("SHA256:") {
            return Ok(self.list_keys(account).await?.into_iter().find(|k| k.sha256 == id));
        }
        Ok(None)
    }

    /// Removes a key (by fingerprint or name); 404 when the account has no such key.
    pub async fn delete_key(&self, account: &Account, id: &str) -> Result<AccountKey, ApiError> {
        let key = self
            .get_key(account.uuid, id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("account {} has no key {id}", account.login)))?;
        self.store
            .batch(vec![
                Op::delete(ACCOUNT_KEYS.name, format!("{}/{}", account.uuid, key.fingerprint), Cond::Any),
                Op::delete(ACCOUNT_KEY_NAMES.name, format!("{}/{}", account.uuid, key.name), Cond::Any),
            ])
            .await
            .map_err(store_error)?;
        Ok(key)
    }

    /// The enabled account `login` and its key `key_id` (fingerprint or name), for
    /// signature checks; `None` for any miss, so the caller cannot tell which part missed.
    pub async fn signing_key(&self, login: &str, key_id: &str) -> Result<Option<(Account, AccountKey)>, ApiError> {
        if account::check_login(login).is_err() {
            return Ok(None);
        }
        let acct = match self.find_account(login).await {
            Ok((a, _)) if !a.disabled => a,
            Ok(_) => return Ok(None),
            Err(e) if e.status == 404 => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(self.get_key(acct.uuid, key_id).await?.map(|k| (acct, k)))
    }
}
