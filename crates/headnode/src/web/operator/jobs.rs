//! Jobs: the list (running and failed first) and one job with every step; shared
//! renderings other views embed ([`job_row`], [`job_detail`]).
//! (first version: to be completed)

use axum::Router;
use maud::{Markup, html};
use serde_json::Value;

use crate::web::Web;
use crate::web::page::{badge, field, json_block};

pub fn routes() -> Router<Web> {
    Router::new()
}

/// The columns [`job_row`] fills.
pub const JOB_COLUMNS: &[&str] = &["Job", "Task", "State", "VM", "Created"];

/// One job as a table row.
pub fn job_row(job: &Value) -> Markup {
    let uuid = field(job, "uuid");
    html! {
        tr {
            td { a href={ "/jobs/" (uuid) } { (uuid) } }
            td { (field(job, "task")) }
            td { (badge(&field(job, "execution"))) }
            td { (field(job, "vm_uuid")) }
            td { (field(job, "created_at")) }
        }
    }
}

/// A job in full: its steps with their results, its error, and for a placement that
/// failed, why each server was refused.
pub fn job_detail(job: &Value) -> Markup {
    json_block(job)
}
