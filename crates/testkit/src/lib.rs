//! A whole cloud in-process for integration tests: a headnode on a free loopback port
//! with a fresh store (SQLite in a temporary directory, or a fresh PostgreSQL schema),
//! and a client already pointed at it.
//!
//! ```no_run
//! # async fn t() -> anyhow::Result<()> {
//! let cloud = nereid_testkit::Cloud::start(nereid_testkit::Backend::Sqlite).await?;
//! let pkgs = cloud.client.get("/packages").await?;
//! # Ok(()) }
//! ```

use std::path::PathBuf;

use anyhow::Result;
use nereid_client::{Client, Target};
use nereid_headnode::{Config, Running};

/// Which store a test cloud uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

    /// A store URL for a fresh, empty store of this kind.
    pub async fn fresh_url(self, dir: &std::path::Path) -> Result<String> {
        Ok(match self {
            Backend::Sqlite => format!("sqlite:{}", dir.join("nereid.db").display()),
            Backend::Postgres => nereid_store::testing::fresh_pg_url().await.map_err(anyhow::Error::msg)?,
        })
    }
}

/// A running test cloud; dropped at the end of the test.
pub struct Cloud {
    pub headnode: Running,
    pub client: Client,
    pub store_url: String,
    pub data_dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl Cloud {
    /// Starts a headnode with an empty store.
    pub async fn start(backend: Backend) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let data_dir = dir.path().join("data");
        let store_url = backend.fresh_url(dir.path()).await?;
        let headnode = nereid_headnode::start(Config {
            data_dir: data_dir.clone(),
            store_url: Some(store_url.clone()),
            admin_listen: "127.0.0.1:0".parse()?,
        })
        .await?;
        let client = Client::new(Target { url: headnode.admin_url.clone(), token: headnode.token.clone(), source: "testkit".into() });
        Ok(Cloud { headnode, client, store_url, data_dir, _dir: dir })
    }

    /// Starts another headnode on an existing store (several headnodes, one PostgreSQL).
    pub async fn start_on(store_url: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let data_dir = dir.path().join("data");
        let headnode = nereid_headnode::start(Config {
            data_dir: data_dir.clone(),
            store_url: Some(store_url.to_string()),
            admin_listen: "127.0.0.1:0".parse()?,
        })
        .await?;
        let client = Client::new(Target { url: headnode.admin_url.clone(), token: headnode.token.clone(), source: "testkit".into() });
        Ok(Cloud { headnode, client, store_url: store_url.to_string(), data_dir, _dir: dir })
    }

    /// A client with another token (for authentication tests).
    pub fn client_with_token(&self, token: &str) -> Client {
        Client::new(Target { url: self.headnode.admin_url.clone(), token: token.into(), source: "testkit".into() })
    }
}
