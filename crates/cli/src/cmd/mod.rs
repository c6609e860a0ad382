//! Subcommand implementations.

pub mod account;
pub mod admin;
pub mod agent;
pub mod audit;
pub mod console;
pub mod fabric;
pub mod fwrule;
pub mod headnode;
pub mod image;
pub mod image_remote;
pub mod limit;
pub mod migrate;
pub mod oneachnode;
pub mod operator;
pub mod up;

use anyhow::Result;

use crate::cli::{Cli, Cmd};

pub async fn run(args: Cli) -> Result<()> {
    match args.cmd {
        Cmd::Up(a) => up::run(*a).await,
        Cmd::Headnode(a) => headnode::run(a).await,
        Cmd::Agent(a) => agent::run(a).await,
        Cmd::Admin(a) => admin::run(a).await,
        Cmd::Image(a) => image::run(a).await,
        Cmd::Openapi { which: crate::cli::ApiDoc::Admin } => {
            print!("{}", nereid_headnode::openapi::admin_document_text());
            Ok(())
        }
        Cmd::Openapi { which: crate::cli::ApiDoc::Cloudapi } => {
            print!("{}", nereid_headnode::openapi::cloudapi_document_text());
            Ok(())
        }
    }
}

/// A client for the headnode the options point at.
pub fn client(opts: &crate::cli::ClientOpts) -> Result<nereid_client::Client> {
    let target = nereid_client::Target::resolve(opts.data_dir.as_deref())?;
    Ok(nereid_client::Client::new(target))
}
