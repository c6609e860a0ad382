//! What every form that changes something goes through: [`PostForm`] takes the session,
//! refuses a cross-site request (`Sec-Fetch-Site`, `Origin`), reads the urlencoded body and
//! checks its `csrf` field against the session's token before a handler sees anything.
//! [`Fields`] reads the fields, naming the field in every error.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use nereid_types::{ApiError, FieldError};

use super::session::{Session, same_secret};
use super::{Web, page};

/// Form bodies above this are refused (uploads do not come as forms).
pub const FORM_LIMIT: usize = 1 << 20;

/// A form's fields, in order (a name may repeat: several networks, several tags).
#[derive(Debug, Clone, Default)]
pub struct Fields(pub Vec<(String, String)>);

impl Fields {
    pub fn parse(body: &[u8]) -> Self {
        Fields(url::form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
    }

    /// A field's value, trimmed; `None` when absent or empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim()).filter(|v| !v.is_empty())
    }

    /// Every non-empty value of a field.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| v.trim()).filter(|v| !v.is_empty()).collect()
    }

    /// A field that must be there.
    pub fn required(&self, name: &str) -> Result<&str, FieldError> {
        self.get(name).ok_or_else(|| FieldError::missing(name))
    }

    /// A checkbox: present (any value) means on.
    pub fn checked(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }

    /// A whole number, if given.
    pub fn number(&self, name: &str) -> Result<Option<u64>, FieldError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.parse::<u64>().map(Some).map_err(|_| FieldError::invalid(name, format!("{v:?} is not a whole number"))),
        }
    }
}

/// Field errors as the API's validation error (409, each field named).
pub fn invalid(errors: Vec<FieldError>) -> ApiError {
    ApiError::validation_409(errors)
}

/// Refuses requests a browser marks as coming from another site, and requests whose
/// `Origin` is not this console's own host.
pub fn same_origin(headers: &HeaderMap) -> Result<(), &'static str> {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return Err("the request came from another site");
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or(origin);
        if origin == "null" || !origin_host.eq_ignore_ascii_case(host) {
            return Err("the request's Origin is not this console");
        }
    }
    Ok(())
}

/// The refusal every CSRF failure gets (no data in it).
pub fn csrf_refused(s: Option<&Session>, why: &str) -> Response {
    page::message(
        StatusCode::FORBIDDEN,
        s,
        "Refused",
        &format!("This form was refused: {why}. Reload the page and submit the form from it again."),
    )
}

/// A form post from a signed-in session, its CSRF token checked.
#[derive(Debug, Clone)]
pub struct PostForm {
    pub session: Session,
    pub fields: Fields,
}

impl FromRequest<Web> for PostForm {
    type Rejection = Response;

    async fn from_request(req: Request, web: &Web) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let session = <Session as FromRequestParts<Web>>::from_request_parts(&mut parts, web).await?;
        if let Err(why) = same_origin(&parts.headers) {
            return Err(csrf_refused(Some(&session), why));
        }
        let bytes = axum::body::to_bytes(body, FORM_LIMIT)
            .await
            .map_err(|_| page::message(StatusCode::PAYLOAD_TOO_LARGE, Some(&session), "Too large", "This form is larger than 1 MiB."))?;
        let fields = Fields::parse(&bytes);
        match fields.get("csrf") {
            Some(t) if same_secret(t, &session.csrf) => Ok(PostForm { session, fields }),
            Some(_) => Err(csrf_refused(Some(&session), "its CSRF token is not this session's")),
            None => Err(csrf_refused(Some(&session), "it carries no CSRF token")),
        }
    }
}

/// Checks the `X-CSRF-Token` header of a script's request (uploads).
pub fn check_header(s: &Session, headers: &HeaderMap) -> Result<(), Response> {
    same_origin(headers).map_err(|why| csrf_refused(Some(s), why))?;
    match headers.get("x-csrf-token").and_then(|v| v.to_str().ok()) {
        Some(t) if same_secret(t, &s.csrf) => Ok(()),
        _ => Err(csrf_refused(Some(s), "it carries no valid X-CSRF-Token header")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_in_order_with_repeats() {
        let f = Fields::parse(b"a=1&b=+x+&a=2&c=&csrf=t&on=");
        assert_eq!(f.get("a"), Some("1"));
        assert_eq!(f.all("a"), vec!["1", "2"]);
        assert_eq!(f.get("b"), Some("x"));
        assert_eq!(f.get("c"), None);
        assert!(f.checked("on") && !f.checked("off"));
        assert_eq!(f.required("c").unwrap_err().field, "c");
        assert_eq!(Fields::parse(b"n=12").number("n").unwrap(), Some(12));
        assert!(Fields::parse(b"n=x").number("n").is_err());
    }

    #[test]
    fn cross_site_requests_are_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:8090".parse().unwrap());
        assert!(same_origin(&h).is_ok());
        h.insert(header::ORIGIN, "https://127.0.0.1:8090".parse().unwrap());
        assert!(same_origin(&h).is_ok());
        h.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(same_origin(&h).is_err());
        h.remove(header::ORIGIN);
        h.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(same_origin(&h).is_err());
        h.insert("sec-fetch-site", "same-origin".parse().unwrap());
        assert!(same_origin(&h).is_ok());
    }
}
