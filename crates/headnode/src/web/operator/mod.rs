//! The operator views: every page here answers 403 (with nothing in the body but the
//! refusal) to an account that is not an operator, through [`super::session::Operator`].

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
