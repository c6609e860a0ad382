//! ACME certificates (`nereid headnode --acme-domain`) against Debian's `pebble` test CA
//! (installed by scripts/test), with real `nereid headnode` processes on one SQLite store.
//!
//! Pebble runs on loopback with a certificate of ours (its own test certificates are not in
//! the package) and asks a DNS server we name: for HTTP-01 a stand-in on loopback answering
//! A 127.0.0.1 for the test domain (nereid-cns serving one static zone: the resolver is an
//! edge we do not own), for DNS-01 the headnode's own CNS. No PEBBLE_VA_ALWAYS_VALID: every
//! challenge is really answered. PEBBLE_WFE_NONCEREJECT=0 keeps pebble from refusing
//! nonces at random (the client retries those, but a test should not depend on it), and
//! PEBBLE_AUTHZREUSE=0 makes every renewal prove control again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, ServerName};

/// How long issuing (or renewing) may take at most.
const WITHIN: Duration = Duration::from_secs(90);

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port free on 127.0.0.1 for both TCP and UDP (bound, then released for the child).
fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
}

fn wait_for_tcp(port: u16, what: &str) {
    let end = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        assert!(Instant::now() < end, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A pebble on loopback; `dns`: the server it resolves names with.
struct Pebble {
    _proc: Proc,
    directory: String,
    /// Pebble's own HTTPS certificate (what the headnode gets as --acme-ca-cert).
    tls_cert: PathBuf,
    mgmt: u16,
}

fn pebble(dir: &Path, dns: SocketAddr, http_port: u16, validity_secs: Option<u64>) -> Pebble {
    // Pebble's listener certificate: a self-signed one for 127.0.0.1.
    let tls_dir = dir.join("pebble-tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    let files = nereid_headnode::cloudapi::tls::ensure_certificate(&tls_dir, None, None, &[]).unwrap();
    // A port picked free may be taken by a test running beside this one before pebble binds
    // it: pebble then exits, and is started again on other ports.
    for _ in 0..5 {
        let (listen, mgmt) = (free_port(), free_port());
        let mut cfg = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": files.cert, "privateKey": files.key,
            "httpPort": http_port, "tlsPort": free_port(),
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
        }});
        if let Some(v) = validity_secs {
            cfg["pebble"]["certificateValidityPeriod"] = v.into();
        }
        let cfg_path = dir.join("pebble.json");
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        let child = Command::new("pebble")
            .arg("-config")
            .arg(&cfg_path)
            .args(["-dnsserver", &dns.to_string()])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(std::fs::File::create(dir.join("pebble.log")).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("running pebble (Debian package pebble; scripts/test installs it)");
        let mut proc = Proc(child);
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let up = [listen, mgmt].iter().all(|p| std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, *p)).is_ok());
            if up {
                return Pebble { _proc: proc, directory: format!("https://127.0.0.1:{listen}/dir"), tls_cert: files.cert, mgmt };
            }
            if proc.0.try_wait().unwrap().is_some() {
                break;
            }
            assert!(Instant::now() < end, "pebble did not listen on {listen} and {mgmt}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("pebble did not start (see its messages above)");
}

impl Pebble {
    /// The root pebble issues under (it is made anew at each start), as a root store.
    async fn roots(&self) -> (RootCertStore, String) {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&self.tls_cert).unwrap()).unwrap();
        let client = reqwest::Client::builder().add_root_certificate(ca).build().unwrap();
        let pem = client.get(format!("https://127.0.0.1:{}/roots/0", self.mgmt)).send().await.unwrap().text().await.unwrap();
        let mut roots = RootCertStore::empty();
        for c in rustls_pemfile_certs(&pem) {
            roots.add(c).unwrap();
        }
        assert!(!roots.is_empty(), "pebble's root: {pem}");
        (roots, pem)
    }
}

fn rustls_pemfile_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes()).map(|c| c.unwrap()).collect()
}

/// A stand-in resolver for pebble: A 127.0.0.1 for every name under `zone`.
async fn loopback_dns(zone: &str, names: &[&str]) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let (udp, tcp) = nereid_headnode::app::cns::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = udp.local_addr().unwrap();
    let mut cfg = nereid_cns::Config::new("x", "invalid", uuid_nil());
    cfg.public_zone = zone.to_string();
    let records =
        names.iter().map(|n| nereid_cns::Record { name: n.to_string(), ttl: 5, data: nereid_cns::Data::A(Ipv4Addr::LOCALHOST) }).collect();
    let (tx, rx) = nereid_cns::channel();
    nereid_cns::publish(&tx, [(zone.to_string(), records)].into_iter().collect());
    let task = tokio::spawn(async move {
        let _tx = tx;
        nereid_cns::serve(Arc::new(cfg), udp, tcp, rx).await
    });
    (addr, task)
}

fn uuid_nil() -> uuid::Uuid {
    uuid::Uuid::nil()
}

/// `nereid headnode` on `data` with CloudAPI on `cloudapi` and `args`.
fn headnode(data: &Path, cloudapi: u16, args: &[String]) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_nereid"))
        .arg("headnode")
        .arg("--data-dir")
        .arg(data)
        .args(["--admin-listen", "127.0.0.1:0", "--agent-listen", "127.0.0.1:0", "--no-web"])
        .args(["--cloudapi-listen", &format!("127.0.0.1:{cloudapi}")])
        .args(args)
        .env_remove("NEREID_STORE")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(data.with_extension("log")).unwrap())
        .spawn()
        .unwrap();
    wait_for_tcp(cloudapi, "CloudAPI");
    Proc(child)
}

/// The leaf certificate CloudAPI serves for `domain`, if it chains to `roots` and names it.
async fn served(port: u16, domain: &str, roots: &RootCertStore) -> Result<CertificateDer<'static>, String> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(domain.to_string()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map_err(|e| e.to_string())?;
    Ok(tls.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned())
}

/// Waits until CloudAPI serves a certificate from pebble for `domain` other than `not`.
async fn until_served(
    port: u16,
    domain: &str,
    roots: &RootCertStore,
    not: Option<&CertificateDer<'_>>,
    log: &Path,
) -> CertificateDer<'static> {
    let end = Instant::now() + WITHIN;
    loop {
        let last = match served(port, domain, roots).await {
            Ok(c) if Some(&c) != not => return c,
            Ok(_) => "the same certificate as before".to_string(),
            Err(e) => e,
        };
        assert!(
            Instant::now() < end,
            "no new certificate from pebble after {WITHIN:?}: {last}\nheadnode log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn facts(c: &CertificateDer<'_>) -> nereid_headnode::acme::CertFacts {
    nereid_headnode::acme::cert_facts(c.as_ref()).unwrap()
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_certificate_is_issued_served_and_reused_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let domain = "cloud.acme.test";
    let (dns, _dns_task) = loopback_dns("acme.test", &[domain]).await;
    let http01 = free_port();
    let pebble = pebble(dir.path(), dns, http01, None);
    let (roots, root_pem) = pebble.roots().await;
    let data = dir.path().join("data");
    let cloudapi = free_port();
    let args: Vec<String> = [
        "--acme-domain",
        domain,
        "--acme-directory",
        &pebble.directory,
        "--acme-ca-cert",
        pebble.tls_cert.to_str().unwrap(),
        "--acme-http-listen",
        &format!("127.0.0.1:{http01}"),
        "--acme-email",
        "ops@acme.test",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let log = data.with_extension("log");
    let hn = headnode(&data, cloudapi, &args);

    // Issued by pebble (chains to its root, names the domain), served by CloudAPI.
    let cert = until_served(cloudapi, domain, &roots, None, &log).await;
    let f = facts(&cert);
    assert!(f.not_after > f.not_before + 86400, "pebble's default lifetime is years: {f:?}");
    for file in ["cert.pem", "key.pem", "account.json"] {
        assert_eq!(mode(&data.join("acme").join(file)), 0o600, "{file}");
    }
    // The HTTP-01 responder answers nothing but pending tokens.
    let resp = reqwest::get(format!("http://127.0.0.1:{http01}/.well-known/acme-challenge/nope")).await.unwrap();
    assert_eq!(resp.status(), 404);

    // The real triton CLI trusts it with pebble's root alone (no -i / insecure).
    triton_trusts(domain, cloudapi, &root_pem, dir.path(), &data).await;

    // A restart with a valid certificate serves it from the first connection, orders nothing.
    let stored = std::fs::read(data.join("acme/cert.pem")).unwrap();
    drop(hn);
    let _hn = headnode(&data, cloudapi, &args);
    let again = served(cloudapi, domain, &roots).await.expect("the stored certificate, served at once");
    assert_eq!(again, cert);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("serving the stored certificate"), "{text}");
    // Had it ordered, the new certificate would replace the file; the renewer is asleep until
    // two thirds of the lifetime (years) have gone.
    assert!(!text.contains("certificate issued"), "{text}");
    assert_eq!(std::fs::read(data.join("acme/cert.pem")).unwrap(), stored);
}

/// The `triton` CLI (NEREID_TRITON) reaches CloudAPI at https://DOMAIN:PORT trusting only
/// pebble's root (NODE_EXTRA_CA_CERTS), as carol with her key. Node resolves names with the system resolver, which
/// knows nothing of the test domain and which a test must not change (/etc/hosts): a
/// preloaded script (NODE_OPTIONS=--require) answers 127.0.0.1 for that one name in
/// dns.lookup. TLS then checks the certificate against the domain, as it would for real.
async fn triton_trusts(domain: &str, port: u16, root_pem: &str, dir: &Path, data: &Path) {
    use nereid_testkit::triton::{KeyType, Tenant};
    let tenant = Tenant::new(KeyType::Ed25519).unwrap();
    let pubkey = dir.join("carol.pub");
    std::fs::write(&pubkey, &tenant.public_key).unwrap();
    let admin = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_nereid")).arg("admin").arg("--data-dir").arg(data).args(args).output().unwrap();
        assert!(out.status.success(), "nereid admin {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    admin(&["account", "create", "--login", "carol", "--email", "carol@acme.test"]);
    admin(&["account", "key", "add", "carol", pubkey.to_str().unwrap()]);
    let root = dir.join("pebble-root.pem");
    std::fs::write(&root, root_pem).unwrap();
    let shim = dir.join("resolve.js");
    std::fs::write(
        &shim,
        format!(
            r#"const dns = require('dns'); const orig = dns.lookup;
dns.lookup = function (host, opts, cb) {{
  if (typeof opts === 'function') {{ cb = opts; opts = {{}}; }}
  if (typeof opts === 'number') opts = {{ family: opts }};
  if (host === {domain:?}) {{
    if (opts && opts.all) return process.nextTick(cb, null, [{{ address: '127.0.0.1', family: 4 }}]);
    return process.nextTick(cb, null, '127.0.0.1', 4);
  }}
  return orig.call(dns, host, opts, cb);
}};
"#
        ),
    )
    .unwrap();
    let mut triton = tenant.triton(&format!("https://{domain}:{port}"), "carol", false).expect("the triton CLI (NEREID_TRITON)");
    triton.env.push(("NODE_EXTRA_CA_CERTS".into(), root.display().to_string()));
    triton.env.push(("NODE_OPTIONS".into(), format!("--require {}", shim.display())));
    let account = triton.json_async(&["account", "get", "-j"]).await;
    assert_eq!(account["login"], "carol", "{account}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns01_through_cns_and_renewal_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let domain = "api.nereid-1.nereid.test";
    let dns_port = free_port();
    let dns: SocketAddr = (Ipv4Addr::LOCALHOST, dns_port).into();
    // 30-second certificates: renewed when 10 s are left.
    let pebble = pebble(dir.path(), dns, free_port(), Some(30));
    let (roots, _) = pebble.roots().await;
    let data = dir.path().join("data");
    let cloudapi = free_port();
    let args: Vec<String> = [
        "--acme-domain",
        domain,
        "--acme-challenge",
        "dns-01",
        "--acme-directory",
        &pebble.directory,
        "--acme-ca-cert",
        pebble.tls_cert.to_str().unwrap(),
        "--dns-listen",
        &dns.to_string(),
        "--dns-suffix",
        "nereid.test",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let log = data.with_extension("log");
    let hn = headnode(&data, cloudapi, &args);
    let first = until_served(cloudapi, domain, &roots, None, &log).await;
    let f1 = facts(&first);
    assert!(f1.not_after - f1.not_before <= 31, "{f1:?}");
    // Renewed in the same process: a new serial on a new connection.
    let second = until_served(cloudapi, domain, &roots, Some(&first), &log).await;
    let f2 = facts(&second);
    assert_ne!(f2.serial, f1.serial);
    assert!(f2.not_after > f1.not_after);
    let mut hn = hn;
    assert!(hn.0.try_wait().unwrap().is_none(), "the headnode is still the same process");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("renewing the certificate"), "{text}");
}

#[test]
fn bad_acme_flags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_nereid"))
            .arg("headnode")
            .arg("--data-dir")
            .arg(dir.path().join("d"))
            .args(["--admin-listen", "127.0.0.1:0", "--agent-listen", "127.0.0.1:0", "--no-web", "--cloudapi-listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("NEREID_STORE")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = out.wait_with_output().unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(&["--acme-domain", "cloud.example.com", "--cloudapi-http"]);
    assert!(e.contains("--acme-domain") && e.contains("--cloudapi-http") && e.contains("cannot be used with"), "{e}");
    let e = run(&["--acme-domain", "localhost"]);
    assert!(e.contains("\"localhost\" is not a domain name"), "{e}");
    let e = run(&["--acme-domain", "cloud.example.com", "--acme-directory", "http://127.0.0.1:1/dir"]);
    assert!(e.contains("an ACME directory is an https:// URL"), "{e}");
    let e = run(&["--acme-email", "x@example.com"]);
    assert!(e.contains("--acme-domain"), "{e}");
    let e = run(&["--acme-domain", "cloud.example.com", "--acme-challenge", "dns-01"]);
    assert!(e.contains("dns-01 answers through this headnode's DNS server: give --dns-listen"), "{e}");
    let e = run(&["--acme-domain", "cloud.example.com", "--acme-challenge", "dns-01", "--dns-listen", "127.0.0.1:0"]);
    assert!(e.contains("cloud.example.com is not inside a zone") && e.contains("nereid-1.nereid.internal"), "{e}");
    let e = run(&["--acme-domain", "cloud.example.com", "--acme-ca-cert", "/nonexistent/ca.pem", "--acme-http-listen", "127.0.0.1:0"]);
    assert!(e.contains("--acme-ca-cert: reading /nonexistent/ca.pem"), "{e}");
}
