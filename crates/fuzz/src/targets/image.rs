//! Image manifests (types/image.rs): IMGAPI's CreateImage and AdminImportImage validation,
//! UpdateImage on an accepted image, and decoding a stored record.
//!
//! Invariants: no panic; validation never fails with a server error (a 5xx would mean a
//! manifest the checks let through but the record cannot hold); an accepted manifest's
//! record round-trips through JSON, and its rendering, imported again under its UUID, is
//! accepted (an exported manifest re-imports).

use nereid_types::image::{self, Image, Origin};
use serde_json::Value;
use uuid::Uuid;

pub const DICTIONARY: &[&[u8]] = &[
    b"\"name\":",
    b"\"version\":",
    b"\"type\":\"zvol\"",
    b"\"type\":\"zone-dataset\"",
    b"\"os\":\"linux\"",
    b"\"owner\":\"930896af-bf8c-48d4-885c-6573a94b1853\"",
    b"\"uuid\":\"2f56ab18-f3e1-4e1a-bdb4-1d6d6b1c3e9a\"",
    b"\"published_at\":\"2026-11-25T14:54:03Z\"",
    b"\"requirements\":{\"min_ram\":512,\"brand\":\"bhyve\",\"networks\":[{\"name\":\"net0\",\"description\":\"x\"}]}",
    b"\"users\":[{\"name\":\"root\"}]",
    b"\"tags\":{\"role\":\"os\"}",
    b"\"traits\":{}",
    b"\"image_size\":10240",
    b"\"nic_driver\":\"virtio\"",
    b"\"disk_driver\":\"virtio\"",
    b"\"cpu_type\":\"host\"",
    b"\"origin\":",
    b"\"public\":true",
    b"\"state\":\"active\"",
    b"\"files\":[{\"sha1\":\"da39a3ee5e6b4b0d3255bfef95601890afd80709\",\"size\":1,\"compression\":\"gzip\"}]",
    b"\"homepage\":\"https://example.com\"",
    b"\"eula\":",
    b"\"acl\":[]",
    b"\"billing_tags\":[]",
    b"\"description\":",
    b"\"channels\":[\"dev\"]",
    b"\"urn\":",
    b"\"error\":{}",
    b"\"icon\":true",
    b"\"v\":2",
    b"\"inherited_directories\":[]",
    b"\"generate_passwords\":true",
    b"null",
    b",",
    b":",
];

/// The UUID imports are made under.
const IMPORT: Uuid = Uuid::from_u128(0x2f56ab18_f3e1_4e1a_bdb4_1d6d6b1c3e9a);

fn no_server_error(what: &str, r: &Result<Image, nereid_types::ApiError>) {
    if let Err(e) = r {
        assert!(e.status < 500, "{what} failed with a server error: {} {}: {}", e.status, e.code, e.message);
    }
}

fn check_accepted(img: &Image) {
    crate::note_accepted();
    let json = serde_json::to_value(img).expect("an image serialises");
    let back: Image = serde_json::from_value(json).expect("an accepted image's record decodes");
    assert_eq!(&back, img);
    let _ = img.label();
    let _ = img.render(false);
    let rendered = img.render(true);
    let Value::Object(mut manifest) = rendered else { panic!("an image renders as an object") };
    manifest.insert("uuid".into(), serde_json::json!(img.uuid));
    let again = image::check_create(&manifest, Origin::Import(img.uuid));
    if let Err(e) = &again {
        panic!("an accepted image's manifest does not re-import: {} {} {:?}\n{}", e.code, e.message, e.errors, Value::Object(manifest));
    }
}

pub fn run(data: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        // A stored record: must decode or not, never panic.
        let _ = serde_json::from_value::<Image>(v);
    }
    let Some(input) = super::json_object(data) else { return };
    let created = image::check_create(&input, Origin::Create);
    no_server_error("CreateImage", &created);
    let imported = image::check_create(&input, Origin::Import(IMPORT));
    no_server_error("AdminImportImage", &imported);
    for img in created.iter().chain(imported.iter()) {
        check_accepted(img);
        let updated = image::check_update(img, &input);
        no_server_error("UpdateImage", &updated);
        let _ = image::check_can_add_file(img);
        if let Ok(active) = image::activate(img, "2026-12-05T10:00:00Z") {
            let _ = image::set_disabled(&active, true);
        }
    }
}
