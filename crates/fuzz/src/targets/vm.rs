//! VM payloads (types/vm.rs): CreateVm's field checks (the table the headnode's CreateVm
//! runs first, with the metadata size bound), UpdateVm's, PutVm's `check_put`, and
//! decoding a stored record with everything the headnode derives from it.
//!
//! Invariants: no panic; a decoded record re-encoded decodes to the same VM; a record that
//! decodes renders, and its agent definition (when it has one) serialises.

use nereid_types::damaged::Stored;
use nereid_types::spec::{self, Mode};
use nereid_types::vm::{self, CREATE_FIELDS, UPDATE_FIELDS};
use serde_json::Value;

pub const DICTIONARY: &[&[u8]] = &[
    b"\"uuid\":\"6c0a4f2e-96a4-4b0e-9a43-7b0d3c3f2f11\"",
    b"\"owner_uuid\":\"930896af-bf8c-48d4-885c-6573a94b1853\"",
    b"\"server_uuid\":\"564d4a1b-0000-0000-0000-000000000001\"",
    b"\"billing_id\":",
    b"\"image_uuid\":",
    b"\"brand\":\"bhyve\"",
    b"\"brand\":\"joyent\"",
    b"\"ram\":1024",
    b"\"max_physical_memory\":",
    b"\"vcpus\":2",
    b"\"cpu_cap\":50",
    b"\"quota\":10",
    b"\"alias\":\"web-1\"",
    b"\"hostname\":",
    b"\"networks\":[{\"uuid\":\"6c0a4f2e-96a4-4b0e-9a43-7b0d3c3f2f11\",\"ip\":\"10.88.0.10\",\"primary\":true}]",
    b"\"disks\":[{\"image_uuid\":\"2f56ab18-f3e1-4e1a-bdb4-1d6d6b1c3e9a\",\"boot\":true},{\"size\":10240}]",
    b"\"media\":\"cdrom\"",
    b"\"path\":\"/etc/shadow\"",
    b"\"nics\":[{\"mac\":\"90:b8:d0:00:00:01\",\"ip\":\"10.88.0.10\",\"netmask\":\"255.255.255.0\",\"nic_tag\":\"external\"}]",
    b"\"customer_metadata\":{\"user-script\":\"#!/bin/sh\"}",
    b"\"internal_metadata\":{\"root_pw\":\"x\"}",
    b"\"tags\":{\"role\":\"web\"}",
    b"\"locality\":{\"strict\":true,\"near\":[]}",
    b"\"state\":\"running\"",
    b"\"bootrom\":\"uefi\"",
    b"\"resolvers\":[\"8.8.8.8\"]",
    b"\"routes\":{\"10.0.0.0/8\":\"10.88.0.1\"}",
    b"\"firewall_enabled\":true",
    b"\"autoboot\":true",
    b"\"destroyed\":",
    b"\"create_timestamp\":\"2026-12-05T10:00:00.000Z\"",
    b"18446744073709551615",
    b"1073741825",
    b"-1",
    b"null",
];

pub fn run(data: &[u8]) {
    if let Ok(raw) = serde_json::from_slice::<Value>(data) {
        let key = raw.get("uuid").and_then(Value::as_str).unwrap_or("6c0a4f2e-96a4-4b0e-9a43-7b0d3c3f2f11").to_string();
        check_record(&key, raw);
    }
    let Some(input) = super::json_object(data) else { return };
    let mut errors = spec::check(CREATE_FIELDS, &input, Mode::Create, &[]);
    let map = |k: &str| input.get(k).and_then(Value::as_object);
    if let Err(e) = vm::check_metadata_total(map("customer_metadata"), map("internal_metadata"), map("tags")) {
        errors.push(e);
    }
    if errors.is_empty() {
        crate::note_accepted();
    }
    for e in &errors {
        assert!(!e.message.is_empty(), "{e:?}");
    }
    let _ = spec::check(UPDATE_FIELDS, &input, Mode::Update, &[]);
    for largest in [None, Some((262_144, 4_194_304)), Some((0, 0))] {
        for e in vm::check_put(&input, largest) {
            assert!(!e.message.is_empty(), "{e:?}");
        }
    }
    if let Some(Value::String(alias)) = input.get("alias") {
        let _ = vm::check_alias(alias);
    }
}

fn check_record(key: &str, raw: Value) {
    let Stored::Ok(vm) = vm::decode(key, raw) else { return };
    crate::note_accepted();
    let again = serde_json::to_value(&vm).expect("a VM serialises");
    match vm::decode(key, again) {
        Stored::Ok(back) => assert_eq!(back, vm, "a decoded VM re-encoded decodes differently"),
        Stored::Damaged(d) => panic!("a decoded VM re-encoded is damaged: {}", d.error),
    }
    let _ = vm::render(&vm);
    let _ = vm.cap();
    let _ = (vm.ram_mib(), vm.disk_mib(), vm.is_active(), vm.is_complete(), vm.snapshot_names());
    if let Ok(def) = vm.definition() {
        serde_json::to_value(&def).expect("a definition serialises");
        let _ = vm.ensure(nereid_types::agent::Desired::Running, Some(1));
    }
    let mut destroyed = vm.clone();
    destroyed.mark_destroyed("2026-12-05T10:00:00.000Z");
    assert!(!destroyed.is_active());
}
