//! Timestamps as Triton renders them: ISO 8601 UTC with milliseconds (`2026-11-25T16:22:05.123Z`).

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

/// Now, in Triton's ISO form.
pub fn now_iso() -> String {
    iso(OffsetDateTime::now_utc())
}

/// A time in Triton's ISO form.
pub fn iso(t: OffsetDateTime) -> String {
    let fmt = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    // Formatting a UTC time with a fixed description cannot fail for years 0..=9999.
    t.to_offset(UtcOffset::UTC).format(&fmt).unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".into())
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Parses an RFC 3339 timestamp (`YYYY-MM-DDTHH:MM:SS(.mmm)?Z`).
pub fn parse_iso(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|_| format!("must be an ISO 8601 UTC timestamp like 2026-11-25T16:22:05.123Z (got {s:?})"))
}

/// Checks an ISO timestamp for a field table.
pub fn check_iso(s: &str) -> Result<(), String> {
    parse_iso(s).map(|_| ())
}

/// An HTTP date (RFC 7231 IMF-fixdate), for `Last-Modified`.
pub fn http_date(t: OffsetDateTime) -> String {
    let fmt = format_description!("[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT");
    t.to_offset(UtcOffset::UTC).format(&fmt).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_has_millis_and_round_trips() {
        let t = parse_iso("2026-11-25T16:22:05.123Z").unwrap();
        assert_eq!(iso(t), "2026-11-25T16:22:05.123Z");
        assert_eq!(iso(parse_iso("2026-11-25T16:22:05Z").unwrap()), "2026-11-25T16:22:05.000Z");
        assert!(parse_iso("yesterday").is_err());
        assert_eq!(http_date(t), "Wed, 25 Nov 2026 16:22:05 GMT");
    }
}
