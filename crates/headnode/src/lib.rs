//! The headnode: Triton's operator APIs over the store.
//!
//! ```text
//!   request ──► http/<resource>.rs  parse + validate input, call app, render
//!                     │
//!                     ▼
//!               app/<resource>.rs   the rules: read, decide, write (conditional batches)
//!                     │
//!                     ▼
//!               nereid_store::Store (SQLite or PostgreSQL)
//! ```
//!
//! A headnode process holds no state of its own beyond caches and in-process locks:
//! everything lives in the store, so restarting it (or running several on one
//! PostgreSQL) loses nothing. A new endpoint is a [`http::Route`] in its resource's
//! `http/` file (which also documents it in the OpenAPI document) calling a function
//! in the matching `app/` file. The web console ([`web`]) is a browser's view of both APIs:
//! its pages call them in process.

pub mod acme;
pub mod agent_listener;
pub mod app;
pub mod buckets;
pub mod cloudapi;
pub mod datadir;
pub mod fence;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod openapi;
pub mod pki;
pub mod reconcile;
pub mod server;
pub mod system_roots;
pub mod web;

pub use server::{Config, Running, start};
