//! `nereid headnode`: runs until SIGINT/SIGTERM.

use anyhow::Result;
use nereid_headnode::{Config, start};

use crate::cli::HeadnodeArgs;

pub async fn run(a: HeadnodeArgs) -> Result<()> {
    let data_dir = a.data_dir.unwrap_or_else(nereid_client::default_data_dir);
    let mut cfg = Config::new(data_dir.clone(), a.store, a.admin_listen);
    if let Some(l) = a.agent_listen {
        cfg.agent_listen = l;
    }
    a.tuning.apply(&mut cfg.app);
    a.fabric.apply(&mut cfg.app);
    a.migration.apply(&mut cfg.app);
    cfg.app.images_dir = a.images_dir;
    cfg.app.cns = a.dns.config(&a.cloudapi.datacenter_name).map_err(anyhow::Error::msg)?;
    cfg.cloudapi = a.cloudapi.config();
    cfg.web = a.web.config(cfg.admin_listen);
    cfg.image_catalog = a.image_catalog_listen;
    cfg.acme = a.acme.config().map_err(anyhow::Error::msg)?;
    let store = nereid_headnode::server::redact(&nereid_headnode::server::store_url(&cfg));
    let cfg_acme = cfg.acme.clone();
    let running = start(cfg).await?;
    let abs = std::fs::canonicalize(&data_dir).unwrap_or(data_dir);
    println!("nereid headnode {} is running", env!("CARGO_PKG_VERSION"));
    println!("  data directory  {}", abs.display());
    println!("  store           {store}");
    println!("  operator API    {}  (bearer token in {})", running.admin_url, abs.join("admin.token").display());
    println!("  agent API       {}  (mutual TLS; compute nodes join with the token below)", running.agent_url);
    println!("  join token      {}", running.join_token_full);
    println!("    nereid agent --headnode {} --join-token {}", running.agent_url, running.join_token_full);
    if let Some(c) = &running.cloudapi {
        println!("  CloudAPI        {}{}", c.url, super::up::cert_note(c));
    }
    if let Some(w) = &running.web {
        println!("  web console     {}{}", w.url, super::up::cert_note(w));
        println!("    sign in with an account's password: nereid admin --data-dir {} account passwd LOGIN", abs.display());
    }
    if let (Some(addr), Some(c)) = (running.dns, &running.app.cfg.cns) {
        let [public, private] = c.dns.zones();
        println!("  instance DNS    {addr} (UDP and TCP)  zones {public} (public), {private} (private)");
    }
    if let Some(acme) = &cfg_acme {
        let how = running.acme_http.map_or("DNS-01 through the instance DNS".to_string(), |a| format!("HTTP-01 on {a}"));
        println!("  ACME            {} from {} ({how})", acme.domains.join(", "), acme.directory);
    }
    if let Some(addr) = running.image_catalog {
        println!("  image catalogue http://{addr}  (public images, read-only, no authentication)");
    }
    println!("  endpoints       {}", abs.join("endpoints.json").display());
    println!("Try: nereid admin --data-dir {} package list", abs.display());
    wait_for_signal().await;
    println!("shutting down");
    running.shutdown().await
}

pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
