//! SSH public keys as tenants upload them (cloudapi/sshkey.rs): whole OpenSSH lines
//! ([`run_line`]), and key blobs under each accepted type name ([`run_blob`]), which reach the
//! binary decoder without first having to survive base64.
//!
//! Invariants: no panic; an accepted key's canonical form parses to the same key, with the
//! same fingerprints; its key material decodes.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use nereid_headnode::cloudapi::sshkey::{self, PublicKey};

/// One real public key of each type Triton accepts (made with `ssh-keygen`).
pub const SAMPLE_KEYS: &[&str] = &[
    include_str!("../../corpus/ssh_key_line/rsa-2048"),
    include_str!("../../corpus/ssh_key_line/ecdsa-256"),
    include_str!("../../corpus/ssh_key_line/ecdsa-384"),
    include_str!("../../corpus/ssh_key_line/ecdsa-521"),
    include_str!("../../corpus/ssh_key_line/ed25519"),
];

const TYPES: &[&str] = &["ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-ed25519", "ssh-dss"];

pub const DICTIONARY: &[&[u8]] = &[
    b"ssh-rsa ",
    b"ecdsa-sha2-nistp256 ",
    b"ecdsa-sha2-nistp384 ",
    b"ecdsa-sha2-nistp521 ",
    b"ssh-ed25519 ",
    b"ssh-dss ",
    b"sk-ssh-ed25519@openssh.com ",
    b"AAAAB3NzaC1yc2EAAAADAQABAAAB",
    b"AAAAC3NzaC1lZDI1NTE5AAAAI",
    b"AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABB",
    b"-----BEGIN OPENSSH PRIVATE KEY-----",
    b"---- BEGIN SSH2 PUBLIC KEY ----",
    b"-----BEGIN PUBLIC KEY-----",
    b"PuTTY-User-Key-File-2",
    b" user@host",
    b"\n",
    b"==",
];

pub const BLOB_DICTIONARY: &[&[u8]] = &[
    b"\x00\x00\x00\x07ssh-rsa",
    b"\x00\x00\x00\x0bssh-ed25519",
    b"\x00\x00\x00\x13ecdsa-sha2-nistp256",
    b"\x00\x00\x00\x08nistp256",
    b"\x00\x00\x00\x08nistp384",
    b"\x00\x00\x00\x08nistp521",
    b"\x00\x00\x00\x03\x01\x00\x01",
    b"\x00\x00\x00\x20",
    b"\x00\x00\x00\x41\x04",
    b"\x00\x00\x01\x01\x00",
    b"\xff\xff\xff\xff",
];

fn check_accepted(key: &PublicKey) {
    let again = sshkey::parse_public_key(&key.openssh)
        .unwrap_or_else(|e| panic!("the canonical form of an accepted key is refused: {e} ({})", key.openssh));
    assert_eq!((&again.kind, &again.openssh, &again.md5, &again.sha256), (&key.kind, &key.openssh, &key.md5, &key.sha256));
    assert!(again.comment.is_empty());
    assert_eq!(key.md5.len(), 47, "{}", key.md5);
    assert!(key.sha256.starts_with("SHA256:"));
    assert!(key.material().is_ok(), "an accepted key's material does not decode: {}", key.openssh);
    assert!(key.bits() > 0);
    assert!(!key.comment.contains('\n'));
    crate::note_accepted();
}

/// One line of `authorized_keys` text.
pub fn run_line(data: &[u8]) {
    if let Ok(key) = sshkey::parse_public_key(&super::text(data)) {
        check_accepted(&key);
    }
}

/// The first byte picks a type name; the rest is the key blob.
pub fn run_blob(data: &[u8]) {
    let Some((&pick, blob)) = data.split_first() else { return };
    let kind = TYPES[usize::from(pick) % TYPES.len()];
    let line = format!("{kind} {} fuzz", STANDARD.encode(blob));
    if let Ok(key) = sshkey::parse_public_key(&line) {
        check_accepted(&key);
        assert_eq!(key.blob().ok().as_deref(), Some(blob));
    }
}
