//! The fuzz targets, one module per input format. Each `run` takes arbitrary bytes.
//!
//! A target reports a broken invariant by panicking (that is what a fuzzer catches), so
//! `expect` is how these modules say what must hold.
#![allow(clippy::expect_used, clippy::unwrap_used)]

pub mod diskimage;
pub mod fwrule;
pub mod image;
pub mod metadata;
pub mod signature;
pub mod sshkey;
pub mod vm;
pub mod zfs_stream;

/// The input as text: fuzzers produce bytes, the parsers take `&str` (HTTP header values
/// and JSON bodies reach them already UTF-8-checked).
pub(crate) fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// The input as a JSON object, if it is one.
pub(crate) fn json_object(data: &[u8]) -> Option<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_slice(data) {
        Ok(serde_json::Value::Object(m)) => Some(m),
        _ => None,
    }
}
