//! The tenant views: each reads and changes through CloudAPI in process, as the signed-in
//! account ([`super::api::Web::cloud`]), so what a tenant sees and may do here is what
//! CloudAPI allows, by the same code.

use axum::Router;

use super::Web;

pub mod audit;
pub mod keys;
pub mod machines;

pub fn routes() -> Router<Web> {
    Router::new().merge(machines::routes()).merge(keys::routes()).merge(audit::routes())
}
