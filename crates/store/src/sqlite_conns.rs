//! The SQLite backend's connections, pooled here rather than by sqlx's pool.
//!
//! sqlx's pool pings every connection that goes back to it (to catch one left mid-query
//! by a cancelled caller): a round trip to the connection's worker thread, and so two
//! thread switches, on every store call — a tenth of the headnode's CPU while it
//! provisions. Here a connection whose caller finished its work ([`Conn::release`]) goes
//! back as it is; one whose caller did not (the future was dropped mid-call, or the work
//! left it in an unknown state) is closed instead, so a statement or transaction cut short
//! never reaches the next caller. Connections open on first need, up to the limit, and
//! stay open until [`Conns::close`].

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{Result, StoreError};

/// See the module doc.
pub(crate) struct Conns {
    opts: SqliteConnectOptions,
    idle: Mutex<Vec<SqliteConnection>>,
    permits: Arc<Semaphore>,
    max: u32,
}

/// How long [`Conns::acquire`] waits for a connection (sqlx's pool's default), and
/// [`Conns::close`] for the lent ones to come back.
const WAIT: Duration = Duration::from_secs(30);

/// A connection lent out by [`Conns::acquire`]; closed when dropped unless released.
pub(crate) struct Conn {
    conn: Option<SqliteConnection>,
    home: Arc<Conns>,
    released: bool,
    _permit: OwnedSemaphorePermit,
}

impl Conns {
    pub(crate) fn new(opts: SqliteConnectOptions, max: usize) -> Arc<Self> {
        Arc::new(Self { opts, idle: Mutex::new(Vec::new()), permits: Arc::new(Semaphore::new(max)), max: max as u32 })
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<SqliteConnection>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle connection, or a new one while fewer than the limit are open; waits for
    /// one otherwise.
    pub(crate) async fn acquire(self: &Arc<Self>) -> Result<Conn> {
        let permit = match tokio::time::timeout(WAIT, self.permits.clone().acquire_owned()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(StoreError::Backend(sqlx::Error::PoolClosed)),
            Err(_) => return Err(StoreError::Backend(sqlx::Error::PoolTimedOut)),
        };
        let idle = self.idle().pop();
        let conn = match idle {
            Some(c) => c,
            None => SqliteConnection::connect_with(&self.opts).await?,
        };
        Ok(Conn { conn: Some(conn), home: self.clone(), released: false, _permit: permit })
    }

    /// No more connections are lent; once the lent ones are back (a group commit under
    /// way finishes first, as with sqlx's pool; at most [`WAIT`]), all are closed.
    pub(crate) async fn close(&self) {
        let back = tokio::time::timeout(WAIT, self.permits.acquire_many(self.max)).await;
        if back.is_err() {
            tracing::warn!("closing the SQLite store with connections still in use");
        }
        self.permits.close();
        drop(back);
        let idle = std::mem::take(&mut *self.idle());
        for c in idle {
            let _ = c.close().await;
        }
    }
}

impl Conn {
    /// The caller's work on the connection is over (well or with an error the connection
    /// survives): it goes back to the pool as it is.
    pub(crate) fn release(mut self) {
        self.released = true;
    }

    /// Releases the connection after work that answered `r`, unless the error says the
    /// connection itself broke (its worker thread gone, or I/O): that one is closed.
    pub(crate) fn release_after<T>(self, r: &Result<T>) {
        if !matches!(r, Err(StoreError::Backend(sqlx::Error::WorkerCrashed | sqlx::Error::Io(_)))) {
            self.release();
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take()
            && self.released
        {
            // Checked under the idle list's lock: `close` closes the permits first, then
            // empties the list under it, so no connection is put back after that.
            let mut idle = self.home.idle();
            if !self.home.permits.is_closed() {
                idle.push(c);
            }
        }
        // Otherwise the connection is dropped: its worker thread closes it.
    }
}

impl Deref for Conn {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        // Present from acquire until drop.
        self.conn.as_ref().unwrap_or_else(|| unreachable!("a lent connection is present until dropped"))
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.conn.as_mut().unwrap_or_else(|| unreachable!("a lent connection is present until dropped"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::str::FromStr;

    async fn conns(dir: &std::path::Path, max: usize) -> Arc<Conns> {
        let opts = SqliteConnectOptions::from_str("sqlite:").unwrap().filename(dir.join("t.db")).create_if_missing(true);
        Conns::new(opts, max)
    }

    async fn temp_marker(c: &mut SqliteConnection) -> Option<i64> {
        // A TEMP table lives and dies with its connection: it tells connections apart.
        sqlx::query_scalar::<_, i64>("SELECT x FROM temp.marker").fetch_optional(&mut *c).await.ok().flatten()
    }

    #[tokio::test]
    async fn a_released_connection_is_lent_again_and_a_dropped_one_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let pool = conns(dir.path(), 1).await;
        let mut c = pool.acquire().await.unwrap();
        sqlx::raw_sql("CREATE TEMP TABLE marker (x INTEGER); INSERT INTO temp.marker VALUES (7);").execute(&mut *c).await.unwrap();
        c.release();
        let mut c = pool.acquire().await.unwrap();
        assert_eq!(temp_marker(&mut c).await, Some(7), "the same connection, as it was");
        // Left without release (as by a cancelled caller, in a transaction): closed.
        sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *c).await.unwrap();
        drop(c);
        let mut c = pool.acquire().await.unwrap();
        assert_eq!(temp_marker(&mut c).await, None, "a new connection");
        // ... and the abandoned transaction holds no lock: this one can write.
        sqlx::raw_sql("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);").execute(&mut *c).await.unwrap();
        c.release();
    }

    #[tokio::test]
    async fn at_most_the_limit_are_lent_and_none_after_close() {
        let dir = tempfile::tempdir().unwrap();
        let pool = conns(dir.path(), 2).await;
        let (a, b) = (pool.acquire().await.unwrap(), pool.acquire().await.unwrap());
        assert!(tokio::time::timeout(std::time::Duration::from_millis(50), pool.acquire()).await.is_err(), "a third waits");
        a.release();
        let c = tokio::time::timeout(std::time::Duration::from_secs(5), pool.acquire()).await.unwrap().unwrap();
        c.release();
        // Close waits for the lent one to come back, then closes them all.
        let closing = tokio::spawn({
            let pool = pool.clone();
            async move { pool.close().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!closing.is_finished(), "close waits while a connection is lent");
        b.release();
        tokio::time::timeout(std::time::Duration::from_secs(5), closing).await.unwrap().unwrap();
        assert!(pool.idle().is_empty());
        assert!(pool.acquire().await.is_err(), "nothing is lent after close");
    }
}
