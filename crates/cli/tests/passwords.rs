//! Account passwords (the web console's sign-in, issue 12): set with `nereid admin account
//! create --password-file` and `nereid admin account passwd`, stored only as argon2id
//! hashes apart from the account record, checked by `App::check_account_password`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use nereid_testkit::{Backend, Cloud, Options};

async fn cloud() -> Cloud {
    Cloud::start_with(Options { sim_servers: 0, ..Options::new(Backend::Sqlite) }).await.unwrap()
}

/// `nereid admin account passwd ACCOUNT` with `input` on standard input (not a terminal).
async fn passwd_stdin(cloud: &Cloud, account: &str, input: &str) -> std::process::Output {
    let (url, token, account, input) =
        (cloud.headnode.admin_url.clone(), cloud.headnode.token.clone(), account.to_string(), input.to_string());
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_nereid"))
            .args(["admin", "account", "passwd", &account])
            .env("NEREID_URL", url)
            .env("NEREID_TOKEN", token)
            .env_remove("NEREID_DATA_DIR")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_are_set_by_operators_and_stored_only_as_argon2id_hashes() {
    let cloud = cloud().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "first secret words\nsecond line is ignored\n").unwrap();
    let out = nereid_async(
        &cloud,
        &["admin", "account", "create", "--login", "alice", "--email", "a@example.com", "--password-file", file.to_str().unwrap()],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let app = &cloud.headnode.app;
    let alice = app.check_account_password("alice", "first secret words").await.unwrap().expect("the password signs in");
    assert_eq!(alice.login, "alice");
    for wrong in ["first secret word", "First secret words", "", "second line is ignored"] {
        assert!(app.check_account_password("alice", wrong).await.unwrap().is_none(), "{wrong:?} signed in");
    }
    assert!(app.check_account_password("nobody", "first secret words").await.unwrap().is_none());

    // Stored apart from the account, as a salted argon2id hash; no answer carries it.
    let stored = app.store.get("account_passwords", &alice.uuid.to_string()).await.unwrap().unwrap().value;
    let hash = stored["hash"].as_str().unwrap();
    assert!(hash.starts_with("$argon2id$v=19$"), "{stored}");
    let record = app.store.get("accounts", &alice.uuid.to_string()).await.unwrap().unwrap().value.to_string();
    let shown = stdout(&nereid_async(&cloud, &["admin", "account", "get", "alice", "--json"]).await);
    for text in [&record, &shown] {
        assert!(!text.contains("first secret") && !text.contains("argon2"), "{text}");
    }

    // passwd from standard input replaces it; the old one stops working.
    let out = passwd_stdin(&cloud, "alice", "a new passphrase\n").await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(app.check_account_password("alice", "a new passphrase").await.unwrap().is_some());
    assert!(app.check_account_password("alice", "first secret words").await.unwrap().is_none());
    let again = app.store.get("account_passwords", &alice.uuid.to_string()).await.unwrap().unwrap().value;
    assert_ne!(again["hash"], stored["hash"]);

    // A disabled account does not sign in, whatever its password.
    assert!(nereid_async(&cloud, &["admin", "account", "disable", "alice"]).await.status.success());
    assert!(app.check_account_password("alice", "a new passphrase").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_passwords_are_refused_and_change_nothing() {
    let cloud = cloud().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "short\n").unwrap();
    let out = nereid_async(
        &cloud,
        &["admin", "account", "create", "--login", "bob", "--email", "b@example.com", "--password-file", file.to_str().unwrap()],
    )
    .await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("password") && stderr(&out).contains("at least 8"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("short"), "the password is never repeated: {}", stderr(&out));
    let r = cloud.client.get("/accounts/bob").await;
    api_err(r, 404, "ResourceNotFound");

    assert!(nereid_async(&cloud, &["admin", "account", "create", "--login", "bob", "--email", "b@example.com"]).await.status.success());
    assert!(cloud.headnode.app.check_account_password("bob", "").await.unwrap().is_none(), "no password, no sign-in");
    // Empty standard input, a short one, and a missing file: refused, nothing stored.
    for input in ["", "1234567\n"] {
        let out = passwd_stdin(&cloud, "bob", input).await;
        assert!(!out.status.success(), "{input:?} was accepted");
    }
    let out = nereid_async(&cloud, &["admin", "account", "passwd", "bob", "--password-file", "/nonexistent/pw"]).await;
    assert!(!out.status.success() && stderr(&out).contains("/nonexistent/pw"), "{}", stderr(&out));
    let bob = cloud.client.get("/accounts/bob").await.unwrap();
    assert!(cloud.headnode.app.store.get("account_passwords", bob["uuid"].as_str().unwrap()).await.unwrap().is_none());
    // The API says which field is wrong.
    let r = cloud.client.put("/accounts/bob/password", &serde_json::json!({"password": 12345678})).await;
    let e = api_err(r, 409, "ValidationFailed");
    assert_eq!(e["errors"][0]["field"], "password", "{e}");
    let r = cloud.client.put("/accounts/nobody/password", &serde_json::json!({"password": "long enough"})).await;
    api_err(r, 404, "ResourceNotFound");
}
