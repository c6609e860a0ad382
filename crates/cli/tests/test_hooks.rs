//! The fault-injection hooks the saga and crash tests drive (`NEREID_TEST_FAIL_AT`,
//! `NEREID_TEST_PAUSE_AT`) exist only in builds with the headnode's `test-hooks`
//! feature. These tests hold that line: the binary an operator builds (`cargo build`,
//! `cargo install`, `scripts/up` — no dev-dependencies) resolves the headnode without the
//! feature, and only the tests' own dependency edge turns it on.

use std::process::Command;

/// The features cargo resolves for `nereid-headnode` under `nereid` with these edge kinds.
fn headnode_features(edges: &str) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["tree", "--locked", "-p", "nereid", "-e", edges, "--prefix", "none", "-f", "{p} {f}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("running cargo tree: {e}"));
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines().find(|l| l.starts_with("nereid-headnode ")).unwrap_or_else(|| panic!("no nereid-headnode in:\n{text}")).to_string()
}

#[test]
fn the_binary_an_operator_builds_has_no_test_hooks() {
    let line = headnode_features("normal,build");
    assert!(!line.contains("test-hooks"), "a release build of nereid enables the test hooks: {line}");
}

#[test]
fn the_tests_build_turns_the_hooks_on() {
    // Without this the crash tests could not pause a job; with it only here, the hooks
    // ship nowhere else.
    let line = headnode_features("normal,build,dev");
    assert!(line.contains("test-hooks"), "the tests' build lost the hooks: {line}");
}
