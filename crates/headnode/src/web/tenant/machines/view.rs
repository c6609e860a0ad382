//! How the machine pages look: pure functions from CloudAPI's answers (and, after a
//! refused form, the fields the user typed and the API's error) to HTML.

use std::collections::HashMap;

use maud::{Markup, html};
use nereid_types::ApiError;
use serde_json::Value;

use crate::web::form::Fields;
use crate::web::page::{self, csrf_field, error_box, facts, field, post_button};
use crate::web::session::Session;

/// Image uuid → "name version", for showing machines' images by name.
pub type ImageNames = HashMap<String, String>;

/// The names of the images CloudAPI lists for the account.
pub fn image_names(images: &[Value]) -> ImageNames {
    images.iter().map(|i| (field(i, "id"), image_label(i))).collect()
}

fn image_label(i: &Value) -> String {
    format!("{} {}", field(i, "name"), field(i, "version")).trim().to_string()
}

fn package_label(p: &Value) -> String {
    let mem = p.get("memory").and_then(Value::as_u64).map(page::mib).unwrap_or_default();
    let disk = p.get("disk").and_then(Value::as_u64).map(page::mib).unwrap_or_default();
    format!("{} ({mem} RAM, {} vCPU, {disk} disk)", field(p, "name"), field(p, "vcpus"))
}

/// An API time (`2026-11-25T10:00:00.000Z`) as people read it.
pub fn when(t: &str) -> String {
    match t.get(..19) {
        Some(s) if t.len() > 19 => format!("{} UTC", s.replace('T', " ")),
        _ => t.to_string(),
    }
}

/// A path segment, percent-encoded (a space is `%20` there, not `+`).
pub fn enc(s: &str) -> String {
    crate::web::api::enc(s).replace('+', "%20")
}

/// The path of a machine's page.
pub fn machine_url(id: &str) -> String {
    format!("/machines/{}", enc(id))
}

fn list_of(v: &Value, k: &str) -> Vec<String> {
    v.get(k).and_then(Value::as_array).map(|a| a.iter().map(page::text).collect()).unwrap_or_default()
}

/// The machines table (also the live region's fragment).
pub fn machine_table(machines: &[Value], images: &ImageNames) -> Markup {
    let rows = machines
        .iter()
        .map(|m| {
            let id = field(m, "id");
            let image = field(m, "image");
            html! {
                tr {
                    td { a href=(machine_url(&id)) { (field(m, "name")) } }
                    td { (page::badge(&field(m, "state"))) }
                    td { (images.get(&image).cloned().unwrap_or(image)) }
                    td { (field(m, "package")) }
                    td { @for (n, ip) in list_of(m, "ips").iter().enumerate() { @if n > 0 { ", " } span.ip { (ip) } } }
                    td { (when(&field(m, "created"))) }
                }
            }
        })
        .collect();
    page::table("Your machines", &["Name", "State", "Image", "Package", "IPs", "Created"], rows)
}

/// `/machines`.
pub fn list_page(machines: &[Value], images: &ImageNames) -> Markup {
    html! {
        div.actions { a href="/machines/new" { "Create a machine" } }
        (page::live("/machines?part=table", machine_table(machines, images)))
    }
}

/// What the create form offers.
pub struct Choices {
    pub images: Vec<Value>,
    pub packages: Vec<Value>,
    pub networks: Vec<Value>,
}

/// `/machines/new`: `typed` is what the user sent last time (kept after a refusal).
pub fn new_form(s: &Session, c: &Choices, typed: &Fields, problem: Option<&ApiError>) -> Markup {
    let chosen_nets = typed.all("networks");
    html! {
        @if let Some(e) = problem { (error_box(e)) }
        form.stack method="post" action="/machines" {
            (csrf_field(s))
            label for="name" { "Name" }
            input #name type="text" name="name" value=(typed.get("name").unwrap_or_default()) aria-describedby="name-hint";
            p.hint #name-hint { "Letters, digits, dots, dashes and underscores; empty: CloudAPI picks one from the machine's id." }
            label for="image" { "Image" }
            select #image name="image" required {
                option value="" { "Choose an image" }
                @for i in &c.images {
                    @let id = field(i, "id");
                    option value=(id) selected[typed.get("image") == Some(id.as_str())] { (image_label(i)) " — " (field(i, "os")) }
                }
            }
            label for="package" { "Package" }
            select #package name="package" required {
                option value="" { "Choose a package" }
                @for p in &c.packages {
                    @let id = field(p, "id");
                    option value=(id) selected[typed.get("package") == Some(id.as_str())] { (package_label(p)) }
                }
            }
            fieldset {
                legend { "Networks (none chosen: the account's default)" }
                @if c.networks.is_empty() { p.hint { "No network is available to this account." } }
                @for (n, net) in c.networks.iter().enumerate() {
                    @let id = field(net, "id");
                    @let input_id = format!("net{n}");
                    div {
                        input id=(input_id) type="checkbox" name="networks" value=(id) checked[chosen_nets.contains(&id.as_str())];
                        " "
                        label for=(input_id) {
                            (field(net, "name"))
                            @if net.get("public") == Some(&Value::Bool(true)) { " (public)" }
                        }
                    }
                }
            }
            button type="submit" { "Create machine" }
        }
    }
}

/// A machine's page, as loaded for it.
pub struct Detail {
    pub machine: Value,
    pub snapshots: Vec<Value>,
    pub packages: Vec<Value>,
    pub image: String,
}

/// The part of a machine's page that follows its state (a live region): facts and the
/// buttons that depend on the state.
pub fn state_part(s: &Session, m: &Value, image: &str) -> Markup {
    let id = field(m, "id");
    let url = machine_url(&id);
    let state = field(m, "state");
    let protected = m.get("deletion_protection") == Some(&Value::Bool(true));
    let memory = m.get("memory").and_then(Value::as_u64).map(page::mib).unwrap_or_default();
    let disk = m.get("disk").and_then(Value::as_u64).map(page::mib).unwrap_or_default();
    html! {
        (facts(&[
            ("State", page::badge(&state)),
            ("ID", html! { code { (id) } }),
            ("Image", html! { (image) }),
            ("Package", html! { (field(m, "package")) }),
            ("Memory", html! { (memory) }),
            ("Disk", html! { (disk) }),
            ("IPs", html! { (list_of(m, "ips").join(", ")) }),
            ("Primary IP", html! { (field(m, "primaryIp")) }),
            ("Created", html! { (when(&field(m, "created"))) }),
            ("Deletion protection", html! { @if protected { "on: the machine cannot be deleted" } @else { "off" } }),
        ]))
        div.actions {
            @match state.as_str() {
                "running" => {
                    (post_button(s, &format!("{url}/stop"), "Stop", None))
                    (post_button(s, &format!("{url}/reboot"), "Reboot", None))
                }
                "stopped" => { (post_button(s, &format!("{url}/start"), "Start", None)) }
                _ => { span.hint { "Start, stop and reboot are offered once the machine is running or stopped." } }
            }
            @if protected {
                (post_button(s, &format!("{url}/unprotect"), "Disable deletion protection", None))
            } @else {
                (post_button(s, &format!("{url}/protect"), "Enable deletion protection", None))
            }
            (post_button(s, &format!("{url}/delete"), "Delete", Some("Delete this machine? Its disks are destroyed.")))
        }
    }
}

/// A machine's tags or metadata (`kind` "tag" or "metadata") as a table with remove buttons.
pub fn kv_table(s: &Session, m: &Value, kind: &str) -> Markup {
    let url = machine_url(&field(m, "id"));
    let (what, member) = if kind == "tag" { ("Tag", "tags") } else { ("Metadata key", "metadata") };
    let rows = m
        .get(member)
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            html! {
                tr {
                    td { code { (k) } }
                    td { code { (page::text(v)) } }
                    td { (post_button(s, &format!("{url}/{kind}/{}/delete", enc(k)), "Remove", Some(&format!("Remove {} {k}?", what.to_lowercase())))) }
                }
            }
        })
        .collect();
    page::table(&format!("{what}s"), &["Key", "Value", ""], rows)
}

fn kv_form(s: &Session, url: &str, kind: &str, typed: &Fields) -> Markup {
    let key_id = format!("{kind}_key");
    let value_id = format!("{kind}_value");
    html! {
        form.stack method="post" action=(format!("{url}/{kind}")) {
            (csrf_field(s))
            label for=(key_id) { "Key" }
            input id=(key_id) type="text" name=(key_id) required value=(typed.get(&key_id).unwrap_or_default());
            label for=(value_id) { "Value" }
            input id=(value_id) type="text" name=(value_id) value=(typed.get(&value_id).unwrap_or_default());
            button type="submit" { @if kind == "tag" { "Set tag" } @else { "Set metadata" } }
        }
    }
}

/// A machine's snapshots with their buttons.
pub fn snapshot_table(s: &Session, id: &str, snapshots: &[Value]) -> Markup {
    let url = machine_url(id);
    let rows = snapshots
        .iter()
        .map(|x| {
            let name = field(x, "name");
            let snap = format!("{url}/snapshots/{}", enc(&name));
            html! {
                tr {
                    td { (name) }
                    td { (page::badge(&field(x, "state"))) }
                    td { (when(&field(x, "created"))) }
                    td {
                        (post_button(s, &format!("{snap}/rollback"), "Roll back and start", Some(&format!("Roll the machine back to {name}? What changed since is lost."))))
                        " "
                        (post_button(s, &format!("{snap}/delete"), "Delete", Some(&format!("Delete snapshot {name}?"))))
                    }
                }
            }
        })
        .collect();
    page::table("Snapshots", &["Name", "State", "Created", ""], rows)
}

/// `/machines/{id}`: the state, snapshots, tags and metadata are live regions (reloaded
/// from `/machines/{id}/part/{state,snapshots,tags,metadata}`), the forms are not (what
/// is being typed stays). `problem` is the error of the form just refused, `typed` its fields.
pub fn detail(s: &Session, d: &Detail, typed: &Fields, problem: Option<&ApiError>) -> Markup {
    let m = &d.machine;
    let id = field(m, "id");
    let url = machine_url(&id);
    let live = |part: &str, content: Markup| page::live(&format!("{url}/part/{part}"), content);
    let current_pkg = field(m, "package");
    html! {
        @if let Some(e) = problem { (error_box(e)) }
        p { a href="/machines" { "All machines" } " · " a href=(format!("/audit?machine={}", enc(&id))) { "Activity" } }
        (live("state", state_part(s, m, &d.image)))
        h2 { "Consoles" }
        ul {
            li { a href=(format!("{url}/serial")) { "Serial console" } }
            li { a href=(format!("{url}/vnc")) { "VNC console (graphical)" } }
        }
        h2 { "Rename" }
        form.stack method="post" action=(format!("{url}/rename")) {
            (csrf_field(s))
            label for="name" { "New name" }
            input #name type="text" name="name" required value=(typed.get("name").map(str::to_string).unwrap_or_else(|| field(m, "name")));
            button type="submit" { "Rename" }
        }
        h2 { "Resize" }
        form.stack method="post" action=(format!("{url}/resize")) {
            (csrf_field(s))
            label for="package" { "Package" }
            select #package name="package" required {
                @for p in &d.packages {
                    @let pid = field(p, "id");
                    @let chosen = match typed.get("package") { Some(t) => t == pid, None => field(p, "name") == current_pkg };
                    option value=(pid) selected[chosen] { (package_label(p)) @if field(p, "name") == current_pkg { " (current)" } }
                }
            }
            button type="submit" { "Resize" }
        }
        h2 { "Snapshots" }
        (live("snapshots", snapshot_table(s, &id, &d.snapshots)))
        form.stack method="post" action=(format!("{url}/snapshots")) {
            (csrf_field(s))
            label for="snapshot_name" { "Snapshot name" }
            input #snapshot_name type="text" name="snapshot_name" value=(typed.get("snapshot_name").unwrap_or_default()) aria-describedby="snapshot-hint";
            p.hint #snapshot-hint { "Empty: named after the time." }
            button type="submit" { "Take snapshot" }
        }
        h2 { "Tags" }
        (live("tags", kv_table(s, m, "tag")))
        (kv_form(s, &url, "tag", typed))
        h2 { "Metadata" }
        (live("metadata", kv_table(s, m, "metadata")))
        (kv_form(s, &url, "metadata", typed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn session() -> Session {
        let account: nereid_types::account::Account = serde_json::from_value(json!({
            "uuid": "930896af-bf8c-48d4-885c-6573a94b1853", "login": "alice", "email": "a@example.com", "created": "2026-01-01T00:00:00.000Z", "updated": "2026-01-01T00:00:00.000Z"
        }))
        .unwrap();
        Session { account, csrf: "tok".into() }
    }

    #[test]
    fn times_read_as_utc() {
        assert_eq!(when("2026-11-25T10:00:00.000Z"), "2026-11-25 10:00:00 UTC");
        assert_eq!(when(""), "");
    }

    #[test]
    fn the_state_decides_the_buttons_and_protection_is_shown() {
        let s = session();
        let m = json!({"id": "m1", "name": "web", "state": "running", "deletion_protection": true, "ips": ["10.0.0.5"]});
        let out = state_part(&s, &m, "tiny 1").into_string();
        assert!(out.contains("/machines/m1/stop") && out.contains("/machines/m1/reboot") && !out.contains("/machines/m1/start"));
        assert!(out.contains("/machines/m1/unprotect") && out.contains("cannot be deleted"));
        assert!(out.contains("name=\"csrf\" value=\"tok\""));
        let m = json!({"id": "m1", "state": "stopped"});
        let out = state_part(&s, &m, "").into_string();
        assert!(out.contains("/machines/m1/start") && out.contains("/machines/m1/protect"));
    }

    #[test]
    fn a_refused_form_keeps_what_was_typed_and_names_the_field() {
        let s = session();
        let c = Choices {
            images: vec![json!({"id": "i1", "name": "tiny", "version": "1", "os": "linux"})],
            packages: vec![json!({"id": "p1", "name": "sample", "memory": 1024, "disk": 10240, "vcpus": 1})],
            networks: vec![json!({"id": "n1", "name": "external", "public": true})],
        };
        let typed = Fields::parse(b"name=bad%20name&image=i1&package=p1&networks=n1");
        let e = ApiError::validation_409(vec![nereid_types::FieldError::invalid("name", "must not contain spaces")]);
        let out = new_form(&s, &c, &typed, Some(&e)).into_string();
        assert!(out.contains("value=\"bad name\""), "{out}");
        assert!(out.contains("<option value=\"i1\" selected>") && out.contains("<option value=\"p1\" selected>"), "{out}");
        assert!(out.contains("value=\"n1\" checked"), "{out}");
        assert!(out.contains("<code>name</code>: must not contain spaces"), "{out}");
        assert!(out.contains("<label for=\"net0\">"));
    }

    #[test]
    fn tags_and_metadata_are_listed_with_their_keys_escaped_in_urls() {
        let s = session();
        let d = Detail {
            machine: json!({"id": "m1", "name": "web", "state": "running", "package": "sample", "tags": {"a b": "x"}, "metadata": {"k": "v"}}),
            snapshots: vec![json!({"name": "s1", "state": "created"})],
            packages: vec![json!({"id": "p1", "name": "sample"})],
            image: "tiny 1".into(),
        };
        let out = detail(&s, &d, &Fields::default(), None).into_string();
        assert!(out.contains("/machines/m1/tag/a%20b/delete"), "{out}");
        assert!(out.contains("/machines/m1/metadata/k/delete") && out.contains("/machines/m1/snapshots/s1/rollback"));
        assert!(out.contains("/machines/m1/serial") && out.contains("/machines/m1/vnc"));
        assert!(out.contains("(current)"));
    }
}
