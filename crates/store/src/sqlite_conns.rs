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

use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{Result, StoreError};

/// See the module doc.
pub(crate) struct Conns {
    opts: SqliteConnectOptions,
    idle: Mutex<Vec<SqliteConnection>>,
    permits: Arc<Semaphore>,
}

/// A connection lent out by [`Conns::acquire`]; closed when dropped unless released.
pub(crate) struct Conn {
    conn: Option<SqliteConnection>,
    home: Arc<Conns>,
    released: bool,
    _permit: OwnedSemaphorePermit,
}

impl Conns {
    pub(crate) fn new(opts: SqliteConnectOptions, max: usize) -> Arc<Self> {
        Arc::new(Self { opts, idle: Mutex::new(Vec::new()), permits: Arc::new(Semaphore::new(max)) })
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<SqliteConnection>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle connection, or a new one while fewer than the limit are open; waits for
    /// one otherwise.
    pub(crate) async fn acquire(self: &Arc<Self>) -> Result<Conn> {
        let permit = self.permits.clone().acquire_owned().await.map_err(|_| StoreError::Backend(sqlx::Error::PoolClosed))?;
        let idle = self.idle().pop();
        let conn = match idle {
            Some(c) => c,
            None => SqliteConnection::connect_with(&self.opts).await?,
        };
        Ok(Conn { conn: Some(conn), home: self.clone(), released: false, _permit: permit })
    }

    /// No more connections are lent; the idle ones are closed now, the lent ones when
    /// they come back.
    pub(crate) async fn close(&self) {
        self.permits.close();
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
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take()
            && self.released
            && !self.home.permits.is_closed()
        {
            self.home.idle().push(c);
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
        pool.close().await;
        assert!(pool.acquire().await.is_err());
        b.release();
        assert!(pool.idle().is_empty(), "a connection coming back after close is closed");
    }
}
