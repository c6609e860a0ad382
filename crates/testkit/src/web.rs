//! The web console in tests: its URL, and accounts that can sign in to it.

use anyhow::{Context, Result, anyhow};
use serde_json::{Value, json};

use crate::Cloud;

/// The password every [`Cloud::web_account`] gets.
pub const PASSWORD: &str = "correct horse battery staple";

impl Cloud {
    /// The web console's base URL (the cloud must have been started with
    /// [`crate::Options::web_https`] or `web_http`).
    pub fn web_url(&self) -> Result<String> {
        self.headnode.web.as_ref().map(|w| w.url.clone()).context("this test cloud serves no web console (Options::web_https)")
    }

    /// Creates an account with [`PASSWORD`] (an operator if `operator`); its record.
    pub async fn web_account(&self, login: &str, operator: bool) -> Result<Value> {
        let body = json!({"login": login, "email": format!("{login}@example.com"), "operator": operator, "password": PASSWORD});
        let a = self.client.post("/accounts", &body).await.map_err(|e| anyhow!("creating account {login}: {e}"))?;
        Ok(a)
    }
}
