//! Static files: the console's own stylesheet and script (built into the binary), and the
//! third-party browser libraries under `/assets/vendor/` — xterm.js and noVNC, installed
//! from npm at pinned versions by `scripts/lib.sh` (`ensure_web_assets`) into a
//! `node_modules` directory named by `--web-assets` or `$NEREID_WEB_ASSETS`. Only those
//! packages' files are served from it, and no path can leave it.

use std::path::{Component, Path, PathBuf};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::Web;

const CSS: &str = include_str!("../../web-assets/nereid.css");
const JS: &str = include_str!("../../web-assets/nereid.js");

/// The npm packages served under `/assets/vendor/`.
pub const VENDOR_PACKAGES: &[&str] = &["@xterm/xterm/", "@xterm/addon-fit/", "@novnc/novnc/"];

pub fn routes() -> Router<Web> {
    Router::new()
        .route("/assets/nereid.css", get(|| async { asset("text/css; charset=utf-8", CSS) }))
        .route("/assets/nereid.js", get(|| async { asset("text/javascript; charset=utf-8", JS) }))
        .route("/assets/vendor/{*path}", get(vendor))
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// The file a vendor path names inside `root`, if it is one of [`VENDOR_PACKAGES`]' files
/// and stays inside `root`.
pub fn vendor_file(root: &Path, path: &str) -> Option<PathBuf> {
    if !VENDOR_PACKAGES.iter().any(|p| path.starts_with(p)) {
        return None;
    }
    let rel = Path::new(path);
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(root.join(rel))
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
}

async fn vendor(State(web): State<Web>, UrlPath(path): UrlPath<String>) -> Response {
    let missing =
        |why: &str| (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], why.to_string()).into_response();
    let Some(root) = &web.cfg.assets else {
        return missing(
            "the console's browser libraries are not installed: run scripts/up (it installs xterm.js and noVNC from npm) or start the headnode with --web-assets DIR",
        );
    };
    let Some(file) = vendor_file(root, &path) else { return missing("not a file of the console's browser libraries") };
    match tokio::fs::read(&file).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, content_type(&file)), (header::CACHE_CONTROL, "max-age=3600")], bytes).into_response(),
        Err(_) => missing("no such file among the console's browser libraries"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_vendor_packages_files_are_served() {
        let root = Path::new("/srv/nm");
        assert_eq!(vendor_file(root, "@xterm/xterm/lib/xterm.js"), Some(root.join("@xterm/xterm/lib/xterm.js")));
        assert_eq!(vendor_file(root, "@novnc/novnc/core/rfb.js"), Some(root.join("@novnc/novnc/core/rfb.js")));
        assert_eq!(vendor_file(root, "@xterm/xterm/../../etc/passwd"), None);
        assert_eq!(vendor_file(root, "left-pad/index.js"), None);
        assert_eq!(vendor_file(root, "/etc/passwd"), None);
    }
}
