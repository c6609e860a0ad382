//! ACME certificates for CloudAPI and the web console (`--acme-domain`): ordered from an
//! ACME CA (Let's Encrypt by default; Debian's `pebble` in the tests), renewed before they
//! expire, swapped into both listeners without a restart.
//!
//! ```text
//!   start ──► DIR/acme/cert.pem + key.pem valid and naming every domain?
//!               yes ─► serve it          no ─► serve the self-signed certificate
//!   renewer (a task):
//!     loop: due? (less than a third of the lifetime left, or --acme-renew-before)
//!             no  ─► sleep until due, at most a minute
//!             yes ─► order: account (DIR/acme/account.json, made once per directory)
//!                     ─► per domain: HTTP-01 (token on --acme-http-listen) or DNS-01
//!                        (TXT _acme-challenge.<domain> in the CNS zones) ─► ready
//!                     ─► CSR (new P-256 key) ─► certificate chain
//!                     ─► files written (0600) ─► CertSlot swapped: new handshakes get it
//!             failed ─► logged with what to do; retried after 5 s, doubling to 30 min;
//!                       the certificate being served stays
//! ```
//!
//! Every headnode of a cluster orders for itself, into its own data directory (the
//! challenge has to be answered where the CA looks, and the key never leaves the host).

pub mod client;
pub mod http01;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::sign::CertifiedKey;
use tokio::task::JoinHandle;

use crate::app::App;
use crate::cloudapi::tls::{CertSlot, TlsFiles, certified_key};

/// Let's Encrypt's production directory, the default of `--acme-directory`.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// The default of `--acme-http-listen`.
pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:80";
/// The directory under the data directory holding the account and the certificate.
pub const DIR: &str = "acme";
/// The issued chain (PEM, leaf first), the key (PEM), the account (JSON): all 0600.
pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";
pub const ACCOUNT_FILE: &str = "account.json";
/// The longest wait between two looks at the certificate.
pub const CHECK_EVERY: Duration = Duration::from_secs(60);
/// Retry waits after a failed order: the first, and the longest.
const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(30 * 60);

/// How the CA checks that we control a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// A token served over plain HTTP at `/.well-known/acme-challenge/<token>` on `listen`
    /// (the CA connects to port 80 of the domain: forward it here).
    Http01 { listen: SocketAddr },
    /// A TXT record `_acme-challenge.<domain>` served by this headnode's CNS (the domain must
    /// be inside one of its zones, delegated to it).
    Dns01,
}

/// `--acme-*`.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The certificate's names; the first is its common name.
    pub domains: Vec<String>,
    /// The ACME directory URL.
    pub directory: String,
    /// A contact address for the account (`mailto:`).
    pub email: Option<String>,
    pub challenge: Challenge,
    /// A PEM file of CA certificates trusted for the directory's own HTTPS, besides the
    /// system's (a private or test CA such as pebble's).
    pub ca_cert: Option<PathBuf>,
    /// Renew when this much validity is left [default: a third of the lifetime].
    pub renew_before: Option<Duration>,
}

impl AcmeConfig {
    /// HTTP-01 on `listen` against `directory`.
    pub fn new(domains: Vec<String>, directory: &str, challenge: Challenge) -> Self {
        AcmeConfig { domains, directory: directory.to_string(), email: None, challenge, ca_cert: None, renew_before: None }
    }
}

/// A domain name as an ACME identifier: letters, digits, hyphens, dot-separated labels of at
/// most 63 octets, at least two labels; lowercased, without the trailing dot.
pub fn domain(s: &str) -> Result<String, String> {
    let t = s.trim().trim_end_matches('.').to_ascii_lowercase();
    // The last label is not all digits: that is an IP address.
    let ok = t.len() <= 253
        && t.split('.').count() >= 2
        && !t.rsplit('.').next().is_some_and(|l| l.chars().all(|c| c.is_ascii_digit()))
        && t.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(t)
    } else {
        Err(format!("{s:?} is not a domain name a certificate can be ordered for (e.g. cloud.example.com; no wildcards, no IP addresses)"))
    }
}

/// The name whose TXT record answers a DNS-01 challenge for `domain`.
pub fn challenge_name(domain: &str) -> String {
    format!("_acme-challenge.{domain}")
}

/// For DNS-01: every domain's challenge name must be inside a zone this headnode serves.
pub fn check_dns01(domains: &[String], zones: &[&str]) -> Result<(), String> {
    for d in domains {
        let name = challenge_name(d);
        if !zones.iter().any(|z| name.ends_with(&format!(".{z}"))) {
            return Err(format!(
                "--acme-challenge dns-01: {d} is not inside a zone this headnode's DNS server serves ({}); use a name under one of them (delegated to --dns-listen), or --acme-challenge http-01",
                zones.join(", ")
            ));
        }
    }
    Ok(())
}

// ---- certificates: validity, names, renewal time ----

/// What the renewer needs of a certificate: its validity (unix seconds) and serial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    pub not_before: i64,
    pub not_after: i64,
    pub serial: Vec<u8>,
}

/// One DER element: (tag, contents, what follows).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        (rest[..n].iter().fold(0usize, |a, &x| (a << 8) | usize::from(x)), &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// A UTCTime (tag 0x17, `YYMMDDHHMMSSZ`) or GeneralizedTime (0x18, `YYYYMMDDHHMMSSZ`) as
/// unix seconds.
fn der_time(tag: u8, v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok().filter(|s| s.is_ascii())?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 if s.len() == 12 => {
            let yy: i32 = s[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &s[2..])
        }
        0x18 if s.len() == 14 => (s[..4].parse().ok()?, &s[4..]),
        _ => return None,
    };
    let n = |i: usize| rest.get(i..i + 2)?.parse::<u8>().ok();
    let month = time::Month::try_from(n(0)?).ok()?;
    let date = time::Date::from_calendar_date(year, month, n(2)?).ok()?;
    let t = time::Time::from_hms(n(4)?, n(6)?, n(8)?).ok()?;
    Some(time::PrimitiveDateTime::new(date, t).assume_utc().unix_timestamp())
}

/// The validity and serial of a DER certificate; `None` if it is not one.
pub fn cert_facts(der: &[u8]) -> Option<CertFacts> {
    let (0x30, cert, _) = tlv(der)? else { return None };
    let (0x30, tbs, _) = tlv(cert)? else { return None };
    let (tag, v, mut rest) = tlv(tbs)?;
    let serial = if tag == 0xa0 {
        let (0x02, serial, r) = tlv(rest)? else { return None };
        rest = r;
        serial
    } else if tag == 0x02 {
        v
    } else {
        return None;
    };
    let (_, _, rest) = tlv(rest)?; // signature algorithm
    let (_, _, rest) = tlv(rest)?; // issuer
    let (0x30, validity, _) = tlv(rest)? else { return None };
    let (t1, v1, r) = tlv(validity)?;
    let (t2, v2, _) = tlv(r)?;
    Some(CertFacts { not_before: der_time(t1, v1)?, not_after: der_time(t2, v2)?, serial: serial.to_vec() })
}

/// When a certificate is to be renewed (unix seconds): `renew_before` ahead of its expiry,
/// by default a third of its lifetime; never earlier than half way through it (a setting
/// longer than the CA's lifetime would otherwise reorder without end).
pub fn renew_at(facts: &CertFacts, renew_before: Option<Duration>) -> i64 {
    let lifetime = (facts.not_after - facts.not_before).max(0);
    let before = renew_before.map_or(lifetime / 3, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)).min(lifetime / 2);
    facts.not_after - before
}

/// How long to wait before looking again: until the renewal time, at most [`CHECK_EVERY`];
/// zero when it is due.
pub fn wait_before_check(facts: &CertFacts, renew_before: Option<Duration>, now: i64) -> Duration {
    let left = renew_at(facts, renew_before) - now;
    if left <= 0 { Duration::ZERO } else { Duration::from_secs(left as u64).min(CHECK_EVERY) }
}

/// Whether the certificate names every domain.
pub fn names_all(leaf: &CertificateDer<'_>, domains: &[String]) -> bool {
    let Ok(parsed) = rustls::server::ParsedCertificate::try_from(leaf) else { return false };
    domains.iter().all(|d| ServerName::try_from(d.clone()).is_ok_and(|n| rustls::client::verify_server_name(&parsed, &n).is_ok()))
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

// ---- files ----

fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join(DIR)
}

fn files(data_dir: &Path) -> TlsFiles {
    TlsFiles { cert: dir(data_dir).join(CERT_FILE), key: dir(data_dir).join(KEY_FILE), generated: false }
}

/// The issued certificate in the data directory, if there is one that names every domain
/// and has not expired: its key and facts.
fn existing(data_dir: &Path, domains: &[String]) -> Option<(Arc<CertifiedKey>, CertFacts)> {
    let f = files(data_dir);
    if !f.cert.exists() {
        return None;
    }
    let key = match certified_key(&f) {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(error = format!("{e:#}"), "ACME: the stored certificate is unusable; ordering a new one");
            return None;
        }
    };
    let leaf = key.cert.first()?;
    let facts = cert_facts(leaf.as_ref())?;
    if !names_all(leaf, domains) {
        tracing::info!(cert = %f.cert.display(), "ACME: the stored certificate does not name every --acme-domain; ordering a new one");
        return None;
    }
    if facts.not_after <= now() {
        tracing::info!(cert = %f.cert.display(), "ACME: the stored certificate has expired; ordering a new one");
        return None;
    }
    Some((key, facts))
}

// ---- the headnode's side ----

/// What [`prepare`] sets up before the listeners are bound.
pub struct Prepared {
    /// What CloudAPI and the web console serve.
    pub slot: Arc<CertSlot>,
    /// The facts of the issued certificate being served (`None`: the self-signed one).
    facts: Option<CertFacts>,
    http01: Option<(tokio::net::TcpListener, Tokens)>,
}

/// HTTP-01 tokens being answered: token → key authorization.
pub type Tokens = Arc<RwLock<HashMap<String, String>>>;

/// Checks the settings, loads the stored certificate (or the self-signed one as a stand-in)
/// and binds the HTTP-01 listener. `cns_zones`: the zones of `--dns-listen`, if any.
pub fn prepare(data_dir: &Path, cfg: &AcmeConfig, cns_zones: Option<[&str; 2]>, extra_names: &[String]) -> Result<Prepared> {
    if cfg.domains.is_empty() {
        bail!("--acme-domain: at least one domain is needed");
    }
    if cfg.challenge == Challenge::Dns01 {
        let Some(zones) = cns_zones else {
            bail!(
                "--acme-challenge dns-01 answers through this headnode's DNS server: give --dns-listen (and a --dns-suffix whose zones hold the domains), or use --acme-challenge http-01"
            );
        };
        check_dns01(&cfg.domains, &zones).map_err(anyhow::Error::msg)?;
    }
    if let Some(ca) = &cfg.ca_cert {
        client::read_roots(ca)?;
    }
    crate::datadir::ensure_dir(&dir(data_dir))?;
    let (key, facts) = match existing(data_dir, &cfg.domains) {
        Some((key, facts)) => {
            tracing::info!(names = ?cfg.domains, expires = %rfc3339(facts.not_after), "ACME: serving the stored certificate");
            (key, Some(facts))
        }
        None => {
            let generated = crate::cloudapi::tls::ensure_certificate(data_dir, None, None, extra_names)?;
            (certified_key(&generated)?, None)
        }
    };
    let http01 = match cfg.challenge {
        Challenge::Http01 { listen } => {
            let l = nereid_serve::bind(listen).with_context(|| format!("--acme-http-listen: listening on {listen}"))?;
            Some((l, Tokens::default()))
        }
        Challenge::Dns01 => None,
    };
    Ok(Prepared { slot: CertSlot::new(key), facts, http01 })
}

/// The HTTP-01 listener's address, if there is one.
pub fn http01_addr(p: &Prepared) -> Option<SocketAddr> {
    p.http01.as_ref().and_then(|(l, _)| l.local_addr().ok())
}

/// Starts the renewer (and the HTTP-01 responder); the tasks to abort at shutdown.
pub fn spawn(app: Arc<App>, data_dir: PathBuf, cfg: AcmeConfig, p: Prepared) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    let tokens = match p.http01 {
        Some((listener, tokens)) => {
            tracing::info!(addr = ?listener.local_addr().ok(), "ACME: answering HTTP-01 challenges");
            tasks.push(tokio::spawn(http01::serve(listener, tokens.clone())));
            Some(tokens)
        }
        None => None,
    };
    let renewer = Renewer { app, data_dir, cfg, slot: p.slot, tokens };
    tasks.push(tokio::spawn(renewer.run(p.facts)));
    tasks
}

/// Unix seconds as RFC 3339, for logs.
fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| t.to_string())
}

struct Renewer {
    app: Arc<App>,
    data_dir: PathBuf,
    cfg: AcmeConfig,
    slot: Arc<CertSlot>,
    tokens: Option<Tokens>,
}

impl Renewer {
    async fn run(self, mut facts: Option<CertFacts>) {
        let mut retry = RETRY_FIRST;
        loop {
            if let Some(f) = &facts {
                let wait = wait_before_check(f, self.cfg.renew_before, now());
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                    continue;
                }
                tracing::info!(names = ?self.cfg.domains, expires = %rfc3339(f.not_after), "ACME: renewing the certificate");
            }
            match self.order().await {
                Ok((key, new)) => {
                    tracing::info!(
                        names = ?self.cfg.domains,
                        expires = %rfc3339(new.not_after),
                        serial = hex::encode(&new.serial),
                        directory = %self.cfg.directory,
                        "ACME: certificate issued; serving it from the next connection on"
                    );
                    self.slot.set(key);
                    // A certificate due at once (a clock ahead, a lifetime shorter than the
                    // renewal margin) must not become an order loop: back off as after a failure.
                    if wait_before_check(&new, self.cfg.renew_before, now()).is_zero() {
                        tracing::warn!(
                            retry_in_secs = retry.as_secs(),
                            "ACME: the new certificate is already due for renewal; check the clock and --acme-renew-before"
                        );
                        tokio::time::sleep(retry).await;
                        retry = (retry * 2).min(RETRY_MAX);
                    } else {
                        retry = RETRY_FIRST;
                    }
                    facts = Some(new);
                }
                Err(e) => {
                    tracing::error!(
                        error = format!("{e:#}"),
                        directory = %self.cfg.directory,
                        retry_in_secs = retry.as_secs(),
                        "ACME: ordering a certificate failed; the current certificate is still served. Check that the CA can reach this headnode (HTTP-01: port 80 of every --acme-domain forwarded to --acme-http-listen; DNS-01: the zone delegated to --dns-listen), and --acme-directory / --acme-ca-cert"
                    );
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// One order, start to end; the new certificate is written to the data directory.
    async fn order(&self) -> Result<(Arc<CertifiedKey>, CertFacts)> {
        let (cert_pem, key_pem) = client::order(self).await?;
        // Checked as staged files first: an issuance that is unreadable or names the wrong
        // hosts never replaces the pair being served. The key goes in before the
        // certificate; a crash between the two renames leaves a pair that does not match,
        // which the next start refuses (it orders again).
        let f = files(&self.data_dir);
        let staged = TlsFiles { cert: f.cert.with_extension("pem.new"), key: f.key.with_extension("pem.new"), generated: false };
        crate::datadir::write_private(&staged.key, key_pem.as_bytes())?;
        crate::datadir::write_private(&staged.cert, cert_pem.as_bytes())?;
        let key = certified_key(&staged).context("the issued certificate")?;
        let leaf = key.cert.first().context("the CA sent no certificate")?;
        let facts = cert_facts(leaf.as_ref()).context("the issued certificate's validity cannot be read")?;
        if !names_all(leaf, &self.cfg.domains) {
            bail!("the issued certificate does not name every --acme-domain");
        }
        std::fs::rename(&staged.key, &f.key).with_context(|| format!("renaming {} into place", staged.key.display()))?;
        std::fs::rename(&staged.cert, &f.cert).with_context(|| format!("renaming {} into place", staged.cert.display()))?;
        Ok((key, facts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(days: i64, serial: &[u8]) -> (String, CertificateDer<'static>) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["a.example.com".to_string(), "b.example.com".to_string()]).unwrap();
        p.not_before = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        p.not_after = p.not_before + time::Duration::days(days);
        p.serial_number = Some(rcgen::SerialNumber::from_slice(serial));
        let c = p.self_signed(&key).unwrap();
        (c.pem(), c.der().clone())
    }

    #[test]
    fn facts_come_from_the_der() {
        let (_, der) = cert(90, &[0x12, 0x34, 0x56]);
        let f = cert_facts(der.as_ref()).unwrap();
        assert_eq!(f, CertFacts { not_before: 1_800_000_000, not_after: 1_800_000_000 + 90 * 86400, serial: vec![0x12, 0x34, 0x56] });
        // GeneralizedTime after 2049.
        let (_, der) = cert(365 * 30, &[1]);
        assert_eq!(cert_facts(der.as_ref()).unwrap().not_after, 1_800_000_000 + 365 * 30 * 86400);
        assert!(cert_facts(b"garbage").is_none());
        assert!(cert_facts(&der.as_ref()[..40]).is_none());
    }

    #[test]
    fn renewal_is_due_with_a_third_left() {
        let f = CertFacts { not_before: 0, not_after: 90 * 86400, serial: vec![1] };
        assert_eq!(renew_at(&f, None), 60 * 86400);
        assert_eq!(wait_before_check(&f, None, 0), CHECK_EVERY);
        assert_eq!(wait_before_check(&f, None, 60 * 86400 - 10), Duration::from_secs(10));
        assert_eq!(wait_before_check(&f, None, 60 * 86400), Duration::ZERO);
        assert_eq!(wait_before_check(&f, None, 100 * 86400), Duration::ZERO);
        // An explicit lead time, capped at half the lifetime.
        assert_eq!(renew_at(&f, Some(Duration::from_secs(86400))), 89 * 86400);
        assert_eq!(renew_at(&f, Some(Duration::from_secs(365 * 86400))), 45 * 86400);
        // A 30-second certificate: renewed after 20.
        let short = CertFacts { not_before: 1000, not_after: 1030, serial: vec![2] };
        assert_eq!(wait_before_check(&short, None, 1005), Duration::from_secs(15));
    }

    #[test]
    fn names_are_checked() {
        let (_, der) = cert(90, &[1]);
        assert!(names_all(&der, &["a.example.com".into(), "b.example.com".into()]));
        assert!(!names_all(&der, &["a.example.com".into(), "c.example.com".into()]));
    }

    #[test]
    fn domains_and_dns01_zones() {
        assert_eq!(domain("Cloud.Example.COM.").unwrap(), "cloud.example.com");
        for bad in ["localhost", "*.example.com", "192.0.2.1", "a..example.com", "a b.example.com", "-a.example.com", ""] {
            assert!(domain(bad).unwrap_err().contains("is not a domain name"), "{bad}");
        }
        assert_eq!(challenge_name("api.dc1.example.com"), "_acme-challenge.api.dc1.example.com");
        let zones = ["dc1.example.com", "dc1.cns.example.com"];
        check_dns01(&["api.dc1.example.com".into(), "dc1.example.com".into()], &zones).unwrap();
        let err = check_dns01(&["api.other.example".into()], &zones).unwrap_err();
        assert!(err.contains("api.other.example is not inside a zone") && err.contains("dc1.example.com, dc1.cns.example.com"), "{err}");
    }
}
