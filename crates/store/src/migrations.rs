//! Versioned schema migrations, one list per backend, applied in order at open.
//!
//! Each migration runs in its own transaction together with the row that records it in
//! `nereid_migrations`, so a crash mid-migration leaves the schema at the previous
//! version. Concurrent openers serialise (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: an
//! advisory transaction lock). Never edit a released migration: append a new one.
//! Statements within a migration end with `;` at the end of a line.

/// `(version, name, SQL)`.
pub type Migration = (i64, &'static str, &'static str);

/// The table that records applied versions (created before any migration runs).
pub const LEDGER_SQLITE: &str =
    "CREATE TABLE IF NOT EXISTS nereid_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)";
pub const LEDGER_POSTGRES: &str =
    "CREATE TABLE IF NOT EXISTS nereid_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)";

pub const SQLITE: &[Migration] = &[(
    1,
    "objects",
    "CREATE TABLE objects (
        bucket TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL CHECK (json_valid(value)),
        generation INTEGER NOT NULL,
        mtime INTEGER NOT NULL,
        PRIMARY KEY (bucket, key)
    );",
)];

pub const POSTGRES: &[Migration] = &[(
    1,
    "objects",
    "CREATE TABLE objects (
        bucket TEXT COLLATE \"C\" NOT NULL,
        key TEXT COLLATE \"C\" NOT NULL,
        value JSONB NOT NULL,
        generation BIGINT NOT NULL,
        mtime BIGINT NOT NULL,
        PRIMARY KEY (bucket, key)
    );",
)];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_increasing_and_match_between_backends() {
        for list in [SQLITE, POSTGRES] {
            assert!(list.windows(2).all(|w| w[0].0 < w[1].0));
        }
        let names = |l: &[Migration]| l.iter().map(|m| (m.0, m.1)).collect::<Vec<_>>();
        assert_eq!(names(SQLITE), names(POSTGRES));
    }
}
