//! One ACME order with `instant-acme`, its HTTP through the workspace's reqwest (rustls,
//! ring): the system's CA roots plus `--acme-ca-cert`, so a private CA's directory (pebble's
//! in the tests) is trusted without trusting it for anything else.
//!
//! ```text
//!   account (DIR/acme/account.json for this directory, else created and stored)
//!   ─► new order (every domain) ─► per pending authorization: publish the answer
//!      (HTTP-01 token / DNS-01 TXT, waited for until CNS serves it) ─► challenge ready
//!   ─► order ready ─► CSR with a new P-256 key ─► certificate chain (PEM)
//!   ─► answers withdrawn (also on failure)
//! ```

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::http;
use bytes::Bytes;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType, HttpClient, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use serde::{Deserialize, Serialize};

use super::{ACCOUNT_FILE, Challenge, Renewer, challenge_name};

/// How long the CA gets to validate the challenges, and to issue.
const VALIDATION: Duration = Duration::from_secs(120);

/// `--acme-ca-cert`: the PEM certificates in the file (at least one).
pub fn read_roots(path: &Path) -> Result<Vec<reqwest::Certificate>> {
    let pem = std::fs::read(path).with_context(|| format!("--acme-ca-cert: reading {}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).with_context(|| format!("--acme-ca-cert: {} is not PEM", path.display()))?;
    if certs.is_empty() {
        bail!("--acme-ca-cert: no PEM certificate in {}", path.display());
    }
    Ok(certs)
}

/// The HTTP client for the ACME directory.
fn http(ca_cert: Option<&Path>) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .user_agent(concat!("nereid-headnode/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(15))
        .timeout(Duration::from_secs(60));
    b = crate::system_roots::with_system_roots(b);
    if let Some(path) = ca_cert {
        for cert in read_roots(path)? {
            b = b.add_root_certificate(cert);
        }
    }
    b.build().context("building the ACME HTTP client")
}

/// instant-acme's HTTP, through reqwest.
struct Reqwest(reqwest::Client);

impl HttpClient for Reqwest {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let client = self.0.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body =
                axum::body::to_bytes(axum::body::Body::new(body), usize::MAX).await.map_err(|e| instant_acme::Error::Other(e.into()))?;
            let req =
                reqwest::Request::try_from(http::Request::from_parts(parts, body)).map_err(|e| instant_acme::Error::Other(e.into()))?;
            let resp = client.execute(req).await.map_err(|e| instant_acme::Error::Other(e.into()))?;
            let mut head = http::Response::new(());
            *head.status_mut() = resp.status();
            *head.version_mut() = resp.version();
            *head.headers_mut() = resp.headers().clone();
            let (parts, ()) = head.into_parts();
            let bytes = resp.bytes().await.map_err(|e| instant_acme::Error::Other(e.into()))?;
            Ok(BytesResponse { parts, body: Box::new(bytes) })
        })
    }
}

/// The stored account: which directory it belongs to, and its key.
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// The account for `r.cfg.directory`: the stored one, or a new one (stored, 0600).
async fn account(r: &Renewer) -> Result<Account> {
    let path = super::dir(&r.data_dir).join(ACCOUNT_FILE);
    let builder =
        || -> Result<instant_acme::AccountBuilder> { Ok(Account::builder_with_http(Box::new(Reqwest(http(r.cfg.ca_cert.as_deref())?)))) };
    if let Ok(text) = std::fs::read(&path)
        && let Ok(stored) = serde_json::from_slice::<StoredAccount>(&text)
        && stored.directory == r.cfg.directory
    {
        return builder()?.from_credentials(stored.credentials).await.with_context(|| format!("the ACME account in {}", path.display()));
    }
    let contact = r.cfg.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let new = NewAccount { contact: &contacts, terms_of_service_agreed: true, only_return_existing: false };
    let (account, credentials) = builder()?
        .create(&new, r.cfg.directory.clone(), None)
        .await
        .with_context(|| format!("creating an ACME account at {}", r.cfg.directory))?;
    let stored = StoredAccount { directory: r.cfg.directory.clone(), credentials };
    crate::datadir::write_private(&path, &serde_json::to_vec_pretty(&stored)?)?;
    tracing::info!(directory = %r.cfg.directory, id = account.id(), "ACME: account created");
    Ok(account)
}

/// What was published for the CA to find, withdrawn when the order ends either way.
struct Published<'a> {
    r: &'a Renewer,
    tokens: Vec<String>,
    txt: Vec<String>,
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        let r = self.r;
        if let Some(t) = &r.tokens {
            let mut t = t.write().unwrap_or_else(|p| p.into_inner());
            for token in &self.tokens {
                t.remove(token);
            }
        }
        if let Some(c) = &r.app.cfg.cns {
            for name in &self.txt {
                c.acme_txt.remove(name);
            }
            r.app.cns_notify.notify_one();
        }
    }
}

/// One order: the chain (PEM) and its new key (PEM).
pub(super) async fn order(r: &Renewer) -> Result<(String, String)> {
    let account = account(r).await?;
    let ids: Vec<Identifier> = r.cfg.domains.iter().map(|d| Identifier::Dns(d.clone())).collect();
    let mut order = account.new_order(&NewOrder::new(&ids)).await.context("placing the ACME order")?;
    let mut published = Published { r, tokens: Vec::new(), txt: Vec::new() };
    let kind = match r.cfg.challenge {
        Challenge::Http01 { .. } => ChallengeType::Http01,
        Challenge::Dns01 => ChallengeType::Dns01,
    };
    {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.context("reading an ACME authorization")?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => bail!("the CA's authorization for {:?} is {other:?}", authz.identifier()),
            }
            let url = authz.url().to_string();
            let mut challenge = authz.challenge(kind.clone()).with_context(|| format!("the CA offers no {kind:?} challenge"))?;
            let Identifier::Dns(name) = challenge.identifier().identifier.clone() else {
                bail!("the CA asks about an identifier that is not a domain name")
            };
            let key_auth = challenge.key_authorization();
            match r.cfg.challenge {
                Challenge::Http01 { .. } => {
                    if let Some(t) = &r.tokens {
                        t.write().unwrap_or_else(|p| p.into_inner()).insert(challenge.token.clone(), key_auth.as_str().to_string());
                    }
                    published.tokens.push(challenge.token.clone());
                }
                Challenge::Dns01 => {
                    let cns = r.app.cfg.cns.as_ref().context("DNS-01 needs --dns-listen")?;
                    let txt_name = challenge_name(&name);
                    let generation = cns.acme_txt.add(&txt_name, &key_auth.dns_value());
                    published.txt.push(txt_name.clone());
                    r.app.cns_notify.notify_one();
                    tokio::time::timeout(Duration::from_secs(60), cns.acme_txt.published(generation))
                        .await
                        .with_context(|| format!("the DNS server did not publish {txt_name} within a minute"))?;
                }
            }
            tracing::debug!(domain = %name, %url, "ACME: answering the challenge");
            challenge.set_ready().await.with_context(|| format!("telling the CA the {kind:?} challenge for {name} is ready"))?;
        }
    }
    let status =
        order.poll_ready(&RetryPolicy::new().timeout(VALIDATION)).await.context("waiting for the CA to validate the challenges")?;
    if status != OrderStatus::Ready {
        bail!("the CA did not validate the challenges (order {status:?}); its reasons: {}", problems(&mut order).await);
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating the certificate's key")?;
    let mut params = rcgen::CertificateParams::new(r.cfg.domains.clone()).context("the certificate's names")?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(first) = r.cfg.domains.first() {
        params.distinguished_name.push(rcgen::DnType::CommonName, first.clone());
    }
    let csr = params.serialize_request(&key).context("making the certificate signing request")?;
    order.finalize_csr(csr.der()).await.context("sending the certificate signing request")?;
    let chain = order.poll_certificate(&RetryPolicy::new().timeout(VALIDATION)).await.context("waiting for the certificate")?;
    drop(published);
    Ok((chain, key.serialize_pem()))
}

/// The errors of the order's authorizations, for the log.
async fn problems(order: &mut instant_acme::Order) -> String {
    let mut out = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(a)) = authorizations.next().await {
        for c in &a.challenges {
            if let Some(e) = &c.error {
                out.push(format!("{:?}: {e}", a.identifier()));
            }
        }
    }
    if out.is_empty() { "none given".into() } else { out.join("; ") }
}
