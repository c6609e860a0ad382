//! The operator account `nereid up` creates on an empty store, and the `triton` CLI
//! profile it can write for it, so a first `triton` command works in the first minute.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use nereid_headnode::app::App;
use nereid_types::account::Account;
use serde_json::{Value, json};

/// The operator's login (Triton's operator account is `admin` too).
pub const OPERATOR_LOGIN: &str = "admin";

/// The public half of `keyfile` (itself if it ends in `.pub`, else `<keyfile>.pub`).
pub fn public_key_path(keyfile: &Path) -> PathBuf {
    if keyfile.extension().is_some_and(|e| e == "pub") {
        keyfile.to_path_buf()
    } else {
        let mut p = keyfile.as_os_str().to_owned();
        p.push(".pub");
        PathBuf::from(p)
    }
}

/// The user's default SSH public key, if any (ed25519, ecdsa, rsa: the order ssh tries).
fn default_public_key() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from)?;
    ["id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"].iter().map(|f| home.join(".ssh").join(f)).find(|p| p.is_file())
}

/// What `ensure` did.
pub struct Operator {
    pub account: Account,
    /// The key the profile uses: its MD5 fingerprint and file.
    pub key: Option<(String, PathBuf)>,
    pub created: bool,
}

/// Creates the operator account on a store without accounts, and adds `keyfile`'s public
/// key (or, for a new account, the user's default key) to it.
pub async fn ensure(app: &App, keyfile: Option<&Path>) -> Result<Option<Operator>> {
    let existing = app.list_accounts(None, None).await?;
    let created = existing.is_empty();
    let account = match existing.iter().find(|a| a.login == OPERATOR_LOGIN) {
        Some(a) => a.clone(),
        None if created => {
            let input = json!({"login": OPERATOR_LOGIN, "email": "admin@nereid.invalid", "operator": true, "first_name": "Operator"});
            app.create_account(input.as_object().unwrap_or(&Default::default())).await?.0
        }
        None => {
            if keyfile.is_some() {
                bail!(
                    "--triton-profile: this store has accounts but none named {OPERATOR_LOGIN}; add the key with `nereid admin account key add LOGIN FILE`"
                );
            }
            return Ok(None);
        }
    };
    let pub_path = match keyfile {
        Some(k) => Some(public_key_path(k)),
        None if created => default_public_key(),
        None => None,
    };
    let key = match pub_path {
        None => None,
        Some(p) => {
            let text = std::fs::read_to_string(&p).with_context(|| format!("reading the public key {}", p.display()))?;
            let parsed = nereid_headnode::cloudapi::sshkey::parse_public_key(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            if app.get_key(account.uuid, &parsed.md5).await?.is_none() {
                app.add_key(&account, None, &text)
                    .await
                    .with_context(|| format!("adding {} to the {OPERATOR_LOGIN} account", p.display()))?;
            }
            Some((parsed.md5, p))
        }
    };
    Ok(Some(Operator { account, key, created }))
}

/// The profile the `triton` CLI reads (`~/.triton/profiles.d/<name>.json`). It has no
/// `name` field: the CLI takes the name from the file and refuses extraneous fields.
pub fn profile(url: &str, account: &str, fingerprint: &str, insecure: bool) -> Value {
    let mut p = json!({"url": url, "account": account, "keyId": fingerprint});
    if insecure {
        p["insecure"] = json!(true);
    }
    p
}

/// Writes the profile `name` under `home` and returns its path.
pub fn write_profile(home: &Path, name: &str, profile: &Value) -> Result<PathBuf> {
    let dir = home.join(".triton").join("profiles.d");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{name}.json"));
    let text = serde_json::to_string_pretty(profile)? + "\n";
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_paths() {
        assert_eq!(public_key_path(Path::new("/h/.ssh/id_ed25519")), PathBuf::from("/h/.ssh/id_ed25519.pub"));
        assert_eq!(public_key_path(Path::new("/h/.ssh/id_ed25519.pub")), PathBuf::from("/h/.ssh/id_ed25519.pub"));
    }

    #[test]
    fn profiles() {
        let p = profile("https://127.0.0.1:8443", "admin", "aa:bb", true);
        assert_eq!(p, json!({"url": "https://127.0.0.1:8443", "account": "admin", "keyId": "aa:bb", "insecure": true}));
        let dir = tempfile::tempdir().unwrap();
        let path = write_profile(dir.path(), "nereid", &p).unwrap();
        assert!(path.ends_with(".triton/profiles.d/nereid.json"));
        let back: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(back, p);
    }
}
