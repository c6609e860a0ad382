//! Account passwords, for signing in to the web console: set by operators
//! (`nereid admin account create --password-file`, `nereid admin account passwd`), stored
//! only as argon2id hashes (PHC strings, a random salt each) in their own bucket, and
//! checked in constant time. CloudAPI never takes a password: it authenticates by key.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use nereid_store::{Cond, Op};
use nereid_types::account::{self, Account};
use nereid_types::{ApiError, FieldError};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{App, encode, store_error};
use crate::buckets::ACCOUNT_PASSWORDS;

/// What is stored for an account with a password.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredPassword {
    /// `$argon2id$v=19$m=…,t=…,p=…$salt$hash`.
    pub hash: String,
    pub updated: String,
}

/// The argon2id hash of a password (OWASP's parameters: 19 MiB, 2 passes, 1 lane).
pub fn hash(password: &str) -> Result<String, ApiError> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| ApiError::internal(format!("password salt: {e}")))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::internal(format!("hashing a password: {e}")))
}

/// Whether `password` matches a stored hash (false for a hash that cannot be read).
pub fn verify(stored: &str, password: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// The store write that sets an account's password (checked and hashed; nothing written).
pub fn password_op(account: Uuid, password: &str) -> Result<Op, ApiError> {
    account::check_password(password).map_err(|m| ApiError::validation_409(vec![FieldError::invalid("password", m)]))?;
    let stored = StoredPassword { hash: hash(password)?, updated: nereid_types::time::now_iso() };
    Ok(Op::put(ACCOUNT_PASSWORDS.name, account.to_string(), encode(&stored), Cond::Any))
}

/// Hashing is deliberately slow: off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(format!("password worker: {e}")))
}

impl App {
    /// Sets (or replaces) the password of the account with this UUID or login.
    pub async fn set_account_password(&self, id: &str, password: &str) -> Result<Account, ApiError> {
        let (acct, _) = self.find_account(id).await?;
        let pw = password.to_string();
        let op = blocking(move || password_op(acct.uuid, &pw)).await??;
        self.store.batch(vec![op]).await.map_err(store_error)?;
        tracing::info!(account = %acct.login, "password set");
        Ok(acct)
    }

    /// The account a login and password sign in as; `None` for a wrong login, a wrong
    /// password, an account without one, or a disabled account — alike, and in about
    /// the same time (an unknown login still costs one hash check).
    pub async fn check_account_password(&self, login: &str, password: &str) -> Result<Option<Account>, ApiError> {
        let acct = match self.find_account(login).await {
            Ok((a, _)) if a.login == login => Some(a),
            Ok(_) => None,
            Err(e) if e.status == 404 => None,
            Err(e) => return Err(e),
        };
        let stored = match &acct {
            Some(a) => self.read::<StoredPassword>(ACCOUNT_PASSWORDS.name, &a.uuid.to_string()).await?.map(|(s, _)| s.hash),
            None => None,
        };
        // Without a hash to check, check one that cannot match, so timing says nothing.
        let known = stored.is_some();
        let hash = stored.unwrap_or_else(|| DECOY.to_string());
        let pw = password.to_string();
        let ok = blocking(move || verify(&hash, &pw)).await?;
        Ok(acct.filter(|a| ok && known && !a.disabled))
    }
}

/// The hash an unknown login is checked against (of a random password no one knows).
const DECOY: &str = "$argon2id$v=19$m=19456,t=2,p=1$bmVyZWlkLWRlY295LXNhbHQ$Jm7uXHxLZhxR3mAA4kO4PO9fY0lqKx2S2oN4m7Hq0Ws";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_salted_and_verify() {
        let a = hash("correct horse battery").unwrap();
        let b = hash("correct horse battery").unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert_ne!(a, b, "every hash has its own salt");
        assert!(!a.contains("correct horse"));
        assert!(verify(&a, "correct horse battery") && verify(&b, "correct horse battery"));
        assert!(!verify(&a, "correct horse batterY") && !verify(&a, ""));
        assert!(!verify("not a hash", "correct horse battery"));
        assert!(PasswordHash::new(DECOY).is_ok(), "the decoy must be a real hash, or unknown logins answer faster");
        assert!(!verify(DECOY, "") && !verify(DECOY, "password"));
    }

    #[test]
    fn a_bad_password_is_refused_before_hashing() {
        let e = password_op(Uuid::nil(), "short").unwrap_err();
        assert_eq!(e.status, 409);
        assert!(password_op(Uuid::nil(), "long enough").is_ok());
    }
}
