//! The operator views: every page here answers 403 (with nothing in the body but the
//! refusal) to an account that is not an operator, through the one guard in front of all
//! of [`routes`] ([`super::session::require_operator`], layered in [`super::router`]).
//! Handlers therefore never check the account themselves: a page takes
//! [`super::session::Operator`] (the session the guard found, from the request), a form
//! post [`super::form::PostForm`].

use axum::Router;

use super::Web;

pub mod accounts;
pub mod dashboard;
pub mod images;
pub mod jobs;
pub mod networks;
pub mod packages;
pub mod servers;
pub mod vms;

pub fn routes() -> Router<Web> {
    Router::new()
        .merge(dashboard::routes())
        .merge(servers::routes())
        .merge(jobs::routes())
        .merge(vms::routes())
        .merge(images::routes())
        .merge(packages::routes())
        .merge(networks::routes())
        .merge(accounts::routes())
}
