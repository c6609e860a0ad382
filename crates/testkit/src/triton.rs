//! Drives the real `triton` CLI (npm `triton@7.17.0`, the client Nereid's CloudAPI must satisfy)
//! from tests: finding or installing it ([`triton_bin`]), making SSH keys it can sign with
//! ([`make_key`], [`Tenant`]), writing its profile, and running it hermetically ([`Triton`]).
//!
//! Every run gets a fresh environment: only `HOME` (a per-tenant temporary directory holding
//! `.ssh/` and `.triton/`), `PATH` and whatever the test adds to [`Triton::env`]. Nothing of the
//! host's `TRITON_*`, `SDC_*`, `SSH_AUTH_SOCK`, `XDG_CONFIG_HOME` or `http(s)_proxy` leaks in, so
//! the CLI finds its private key by the profile's `keyId` fingerprint among the key files in
//! `$HOME/.ssh` (smartdc-auth's `homedir` key-ring plugin; with no agent socket the `agent`
//! plugin is skipped).
//!
//! ```no_run
//! # fn t() -> anyhow::Result<()> {
//! use nereid_testkit::triton::{KeyType, Tenant};
//! let tenant = Tenant::new(KeyType::Ed25519)?;
//! let triton = tenant.triton("http://127.0.0.1:8443", "alice", false)?;
//! let machines = triton.json_list(&["instance", "list", "-j"])?;
//! let out = triton.run(&["instance", "get", "nope"])?;
//! assert_eq!(out.code, Some(3), "{out}");
//! # Ok(()) }
//! ```

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::qemu::workspace_root;

/// The `triton` release the tests drive (also `TRITON_VERSION` in `scripts/lib.sh`).
pub const TRITON_VERSION: &str = "7.17.0";

/// How long one `triton` run may take before it is killed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// The profile [`Triton::new`] writes and makes current.
pub const PROFILE: &str = "nereid";

/// Where `ensure_triton` (scripts/lib.sh) installs the CLI:
/// `${NEREID_CACHE:-$HOME/.cache/nereid}/triton-7.17.0/node_modules/.bin/triton`.
pub fn default_bin() -> Option<PathBuf> {
    let cache = match std::env::var_os("NEREID_CACHE").filter(|v| !v.is_empty()) {
        Some(c) => PathBuf::from(c),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".cache/nereid"),
    };
    Some(cache.join(format!("triton-{TRITON_VERSION}/node_modules/.bin/triton")))
}

/// The `triton` executable: `$NEREID_TRITON` (set by `scripts/test`), else the one
/// `ensure_triton` installed, else installs it now (`. scripts/lib.sh && ensure_triton`, which
/// may need root for the Debian packages and the network for npm). Errors, never skips.
pub fn triton_bin() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| find_or_install().map_err(|e| format!("{e:#}"))).clone().map_err(anyhow::Error::msg)
}

fn find_or_install() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("NEREID_TRITON").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("NEREID_TRITON={} is not a file (scripts/test sets it from ensure_triton in scripts/lib.sh)", p.display());
        }
        return Ok(p);
    }
    if let Some(p) = default_bin().filter(|p| p.is_file()) {
        return Ok(p);
    }
    let root = workspace_root();
    let out = Command::new("bash")
        .args(["-c", ". scripts/lib.sh && ensure_triton"])
        .current_dir(&root)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running ensure_triton (scripts/lib.sh) in {}", root.display()))?;
    if !out.status.success() {
        bail!(
            "installing triton@{TRITON_VERSION} failed ({}): run `bash -c '. scripts/lib.sh && ensure_triton'` in {} \
             (needs node, npm and ssh-keygen, or root to install them, and the npm registry), or set NEREID_TRITON",
            out.status,
            root.display()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let p = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    if !p.is_file() {
        bail!("ensure_triton printed {:?}, which is not a file; its stdout: {stdout}", p.display());
    }
    Ok(p)
}

/// The SSH key types a tenant can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// RSA, 2048 bits.
    Rsa,
    EcdsaP256,
    /// Cannot sign in triton 7.17.0: sshpk picks SHA-384, which http-signature 1.4.0 refuses
    /// (`error (Signing): ... SHA384 is not a supported hash algorithm`).
    EcdsaP384,
    EcdsaP521,
    Ed25519,
}

impl KeyType {
    pub const ALL: [KeyType; 5] = [KeyType::Rsa, KeyType::EcdsaP256, KeyType::EcdsaP384, KeyType::EcdsaP521, KeyType::Ed25519];
    /// The types the CLI can sign requests with.
    pub const SIGNING: [KeyType; 4] = [KeyType::Rsa, KeyType::EcdsaP256, KeyType::EcdsaP521, KeyType::Ed25519];

    /// The key file's name under `.ssh` (the public key adds `.pub`).
    pub fn file_name(self) -> &'static str {
        match self {
            KeyType::Rsa => "id_rsa",
            KeyType::EcdsaP256 => "id_ecdsa",
            KeyType::EcdsaP384 => "id_ecdsa_p384",
            KeyType::EcdsaP521 => "id_ecdsa_p521",
            KeyType::Ed25519 => "id_ed25519",
        }
    }

    /// The type field of the OpenSSH public key line.
    pub fn ssh_name(self) -> &'static str {
        match self {
            KeyType::Rsa => "ssh-rsa",
            KeyType::EcdsaP256 => "ecdsa-sha2-nistp256",
            KeyType::EcdsaP384 => "ecdsa-sha2-nistp384",
            KeyType::EcdsaP521 => "ecdsa-sha2-nistp521",
            KeyType::Ed25519 => "ssh-ed25519",
        }
    }

    /// The `algorithm=` the CLI signs with (none: it cannot sign with this key).
    pub fn algorithm(self) -> Option<&'static str> {
        match self {
            KeyType::Rsa => Some("rsa-sha256"),
            KeyType::EcdsaP256 => Some("ecdsa-sha256"),
            KeyType::EcdsaP384 => None,
            KeyType::EcdsaP521 => Some("ecdsa-sha512"),
            KeyType::Ed25519 => Some("ed25519-sha512"),
        }
    }

    fn keygen_args(self) -> &'static [&'static str] {
        match self {
            KeyType::Rsa => &["-t", "rsa", "-b", "2048"],
            KeyType::EcdsaP256 => &["-t", "ecdsa", "-b", "256"],
            KeyType::EcdsaP384 => &["-t", "ecdsa", "-b", "384"],
            KeyType::EcdsaP521 => &["-t", "ecdsa", "-b", "521"],
            KeyType::Ed25519 => &["-t", "ed25519"],
        }
    }
}

/// Makes an unencrypted key pair in `<home>/.ssh/` (`id_<type>`, or `id_<type>_2`, `_3`... if
/// taken) with `ssh-keygen`. Returns (private key path, public key line, MD5 fingerprint as
/// lowercase colon hex without `MD5:`, SHA-256 fingerprint as `SHA256:<base64>`).
pub fn make_key(home: &Path, kind: KeyType) -> Result<(PathBuf, String, String, String)> {
    let dir = home.join(".ssh");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    set_mode(&dir, 0o700)?;
    let mut path = dir.join(kind.file_name());
    let mut n = 1;
    while path.exists() || path.with_extension("pub").exists() {
        n += 1;
        path = dir.join(format!("{}_{n}", kind.file_name()));
    }
    let comment = format!("nereid-test-{}", path.file_name().unwrap_or_default().to_string_lossy());
    let out = Command::new("ssh-keygen")
        .args(["-q", "-N", "", "-C", &comment])
        .args(kind.keygen_args())
        .arg("-f")
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .context("running ssh-keygen (install openssh-client)")?;
    if !out.status.success() {
        bail!("ssh-keygen {:?} for {} failed ({}): {}", kind, path.display(), out.status, String::from_utf8_lossy(&out.stderr));
    }
    let pub_path = PathBuf::from(format!("{}.pub", path.display()));
    let public_key = std::fs::read_to_string(&pub_path).with_context(|| format!("reading {}", pub_path.display()))?.trim().to_string();
    let md5 = fingerprint(&pub_path, "md5")?;
    let md5 = md5.strip_prefix("MD5:").with_context(|| format!("ssh-keygen -E md5 printed {md5:?}"))?.to_string();
    let sha256 = fingerprint(&pub_path, "sha256")?;
    if !sha256.starts_with("SHA256:") {
        bail!("ssh-keygen -E sha256 printed {sha256:?}");
    }
    Ok((path, public_key, md5, sha256))
}

/// `ssh-keygen -l -E <hash> -f <file>`'s fingerprint field.
fn fingerprint(file: &Path, hash: &str) -> Result<String> {
    let out = Command::new("ssh-keygen").args(["-l", "-E", hash, "-f"]).arg(file).stdin(Stdio::null()).output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("ssh-keygen -l -E {hash} -f {} failed ({}): {}", file.display(), out.status, String::from_utf8_lossy(&out.stderr));
    }
    // "256 SHA256:abc... comment (ED25519)"
    stdout.split_whitespace().nth(1).map(str::to_string).with_context(|| format!("unexpected ssh-keygen -l output {stdout:?}"))
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// A CLI user: a temporary home directory with one key pair in `.ssh/`.
pub struct Tenant {
    pub home: tempfile::TempDir,
    pub key_path: PathBuf,
    /// The OpenSSH public key line (`ssh-ed25519 AAAA... nereid-test-id_ed25519`).
    pub public_key: String,
    /// Lowercase colon hex, what the CLI puts in `keyId="/<account>/keys/<md5>"`.
    pub md5: String,
    /// `SHA256:<base64>`.
    pub sha256: String,
}

impl Tenant {
    /// A fresh home with one `kind` key.
    pub fn new(kind: KeyType) -> Result<Tenant> {
        let home = tempfile::Builder::new().prefix("nereid-triton-").tempdir()?;
        let (key_path, public_key, md5, sha256) = make_key(home.path(), kind)?;
        Ok(Tenant { home, key_path, public_key, md5, sha256 })
    }

    /// Another key pair in this tenant's `.ssh` (see [`make_key`]).
    pub fn add_key(&self, kind: KeyType) -> Result<(PathBuf, String, String, String)> {
        make_key(self.home.path(), kind)
    }

    /// The CLI for this tenant, with a current profile naming its key by MD5 fingerprint.
    pub fn triton(&self, url: &str, account: &str, insecure: bool) -> Result<Triton> {
        Triton::new(triton_bin()?, self.home.path(), url, account, &self.md5, insecure)
    }
}

/// Writes `<home>/.triton/profiles.d/<name>.json`. The file must not contain `"name"` (the CLI
/// rejects it: the name is the file's) nor fields other than url, account, keyId, insecure, user,
/// roles and actAsAccount ("extraneous fields"); `extra` adds the optional ones.
pub fn write_profile(home: &Path, name: &str, url: &str, account: &str, key_id: &str, insecure: bool, extra: &Value) -> Result<PathBuf> {
    let dir = home.join(".triton/profiles.d");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut profile = json!({"url": url, "account": account, "keyId": key_id, "insecure": insecure});
    if let (Some(p), Some(e)) = (profile.as_object_mut(), extra.as_object()) {
        p.extend(e.clone());
    }
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&profile)? + "\n").with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The real `triton` CLI for one home directory and profile.
#[derive(Debug, Clone)]
pub struct Triton {
    pub bin: PathBuf,
    pub home: PathBuf,
    /// The current profile (in `.triton/config.json`); runs do not add `-p`.
    pub profile: String,
    /// Per run; the process group is killed when it expires.
    pub timeout: Duration,
    /// Extra environment for every run (the rest is cleared but HOME and PATH), e.g.
    /// `TRITON_TLS_INSECURE` with `-p env`, or `NODE_EXTRA_CA_CERTS`.
    pub env: Vec<(String, String)>,
}

impl Triton {
    /// Writes `<home>/.triton/profiles.d/nereid.json` (`{"url","account","keyId","insecure"}`;
    /// `key_id` is an MD5 or `SHA256:` fingerprint) and `<home>/.triton/config.json`
    /// (`{"profile":"nereid"}`), making it the current profile.
    pub fn new(bin: PathBuf, home: &Path, url: &str, account: &str, key_id: &str, insecure: bool) -> Result<Triton> {
        write_profile(home, PROFILE, url, account, key_id, insecure, &json!({}))?;
        let config = home.join(".triton/config.json");
        std::fs::write(&config, json!({"profile": PROFILE}).to_string() + "\n").with_context(|| format!("writing {}", config.display()))?;
        Ok(Triton { bin, home: home.to_path_buf(), profile: PROFILE.into(), timeout: DEFAULT_TIMEOUT, env: Vec::new() })
    }

    /// The command a run executes: `triton <args>` in `home`, environment cleared but for HOME,
    /// PATH and [`env`](Self::env), stdin from /dev/null, in its own process group.
    pub fn command(&self, args: &[&str]) -> Command {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new(&self.bin);
        c.args(args)
            .env_clear()
            .env("HOME", &self.home)
            .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.home)
            .stdin(Stdio::null())
            .process_group(0);
        c
    }

    /// Runs `triton <args>`; any exit status is Ok (see [`Out::code`]). Errors if it cannot
    /// start or outlives [`timeout`](Self::timeout) (then its process group is killed).
    pub fn run(&self, args: &[&str]) -> Result<Out> {
        let command = self.describe(args);
        let started = Instant::now();
        let mut child =
            self.command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().with_context(|| format!("starting `{command}`"))?;
        let pid = rustix::process::Pid::from_child(&child);
        let stdout = read_in_thread(child.stdout.take());
        let stderr = read_in_thread(child.stderr.take());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let (status, timed_out) = match rx.recv_timeout(self.timeout) {
            Ok(s) => (s.with_context(|| format!("waiting for `{command}`"))?, false),
            Err(_) => {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
                (rx.recv().context("waiter thread vanished")?.with_context(|| format!("waiting for `{command}`"))?, true)
            }
        };
        // A grandchild (e.g. `triton ssh`'s ssh) could hold the pipes open: do not wait forever.
        let grace = Duration::from_secs(5);
        let stdout = stdout.recv_timeout(grace).unwrap_or_default();
        let stderr = stderr.recv_timeout(grace).unwrap_or_default();
        let out = Out {
            command,
            code: status.code(),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            elapsed: started.elapsed(),
        };
        if timed_out {
            bail!("timed out after {:?} and killed: {out}", self.timeout);
        }
        Ok(out)
    }

    /// Runs and returns stdout; errors (with the command, status, stdout and stderr) unless
    /// the exit status is 0.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        if out.code != Some(0) {
            bail!("{out}");
        }
        Ok(out.stdout)
    }

    /// Runs and returns the output; errors if the exit status is 0.
    pub fn fail(&self, args: &[&str]) -> Result<Out> {
        let out = self.run(args)?;
        if out.code == Some(0) {
            bail!("expected a failure: {out}");
        }
        Ok(out)
    }

    /// [`ok`](Self::ok), then parses stdout: one JSON value is returned as is; several (`-j`
    /// lists print one object per line) become an array, and so does none (an empty `-j`
    /// list). A one-item `-j` list is therefore an object: use [`json_list`](Self::json_list)
    /// for lists.
    pub fn json(&self, args: &[&str]) -> Result<Value> {
        let stdout = self.ok(args)?;
        let mut values = parse_json_stream(&stdout).with_context(|| format!("stdout of `{}`", self.describe(args)))?;
        Ok(if values.len() == 1 { values.remove(0) } else { Value::Array(values) })
    }

    /// [`ok`](Self::ok), then parses stdout as a list: the values it prints (one per line for
    /// `-j` lists), or the items of the one array it prints (`triton cloudapi /my/machines`).
    pub fn json_list(&self, args: &[&str]) -> Result<Vec<Value>> {
        let stdout = self.ok(args)?;
        let mut values = parse_json_stream(&stdout).with_context(|| format!("stdout of `{}`", self.describe(args)))?;
        if let [Value::Array(items)] = values.as_mut_slice() {
            return Ok(std::mem::take(items));
        }
        Ok(values)
    }

    /// [`ok`](Self::ok) off the async runtime (a test's cloud serves the CLI from the same
    /// process); panics with the command and its output unless it succeeds.
    pub async fn ok_async(&self, args: &[&str]) -> String {
        let (t, args) = self.owned(args);
        tokio::task::spawn_blocking(move || t.ok(&args.iter().map(String::as_str).collect::<Vec<_>>()))
            .await
            .unwrap_or_else(|e| panic!("the triton thread died: {e}"))
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Runs off the async runtime expecting a failure; panics if it succeeds. Returns the
    /// exit code and stderr.
    pub async fn fail_async(&self, args: &[&str]) -> (Option<i32>, String) {
        let (t, args) = self.owned(args);
        let out = tokio::task::spawn_blocking(move || t.fail(&args.iter().map(String::as_str).collect::<Vec<_>>()))
            .await
            .unwrap_or_else(|e| panic!("the triton thread died: {e}"))
            .unwrap_or_else(|e| panic!("{e:#}"));
        (out.code, out.stderr)
    }

    /// [`ok_async`](Self::ok_async), then the one JSON value it printed.
    pub async fn json_async(&self, args: &[&str]) -> Value {
        let out = self.ok_async(args).await;
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("triton {args:?} printed no JSON ({e}): {out}"))
    }

    fn owned(&self, args: &[&str]) -> (Triton, Vec<String>) {
        (self.clone(), args.iter().map(|s| s.to_string()).collect())
    }

    /// `HOME=<home> triton <args>`, shell-quoted, for messages.
    pub fn describe(&self, args: &[&str]) -> String {
        let mut s = format!("HOME={} ", shell_quote(&self.home.to_string_lossy()));
        for (k, v) in &self.env {
            s += &format!("{k}={} ", shell_quote(v));
        }
        s += &shell_quote(&self.bin.to_string_lossy());
        for a in args {
            s.push(' ');
            s += &shell_quote(a);
        }
        s
    }
}

fn read_in_thread(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        let _ = tx.send(buf);
    });
    rx
}

fn parse_json_stream(s: &str) -> Result<Vec<Value>> {
    serde_json::Deserializer::from_str(s).into_iter::<Value>().collect::<Result<Vec<_>, _>>().with_context(|| format!("not JSON: {s}"))
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// What one `triton` run did.
#[derive(Debug, Clone)]
pub struct Out {
    /// The command line, for messages.
    pub command: String,
    /// The exit status; `None` if a signal ended it. The CLI exits 1 on most errors and 3 on
    /// `ResourceNotFound` (404) and any 410.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Out {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl fmt::Display for Out {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.code.map_or("killed by a signal".to_string(), |c| format!("exit status {c}"));
        write!(
            f,
            "`{}`: {status} after {:.1?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command, self.elapsed, self.stdout, self.stderr
        )
    }
}

#[cfg(test)]
mod tests {
    //! Against a stand-in HTTP server: no Nereid needed.

    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    use super::*;

    /// One request as received.
    #[derive(Debug, Clone)]
    struct Req {
        line: String,
        headers: Vec<(String, String)>,
    }

    impl Req {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
        }
    }

    impl fmt::Display for Req {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            writeln!(f, "{}", self.line)?;
            for (k, v) in &self.headers {
                writeln!(f, "{k}: {v}")?;
            }
            Ok(())
        }
    }

    /// A stand-in CloudAPI on 127.0.0.1 answering every request (keep-alive, like a real
    /// server) with 200 `{"ping":"pong"}`; received requests arrive on the channel.
    fn stub_server() -> (String, mpsc::Receiver<Req>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut w = conn.try_clone().unwrap();
                    let mut r = BufReader::new(conn);
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let mut req = Req { line: line.trim_end().to_string(), headers: Vec::new() };
                        loop {
                            let mut h = String::new();
                            if r.read_line(&mut h).unwrap_or(0) == 0 {
                                return;
                            }
                            let h = h.trim_end();
                            if h.is_empty() {
                                break;
                            }
                            let (k, v) = h.split_once(':').unwrap_or((h, ""));
                            req.headers.push((k.to_string(), v.trim().to_string()));
                        }
                        let len: usize = req.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                        let mut body = vec![0; len];
                        if r.read_exact(&mut body).is_err() {
                            return;
                        }
                        let _ = tx.send(req);
                        let body = r#"{"ping":"pong"}"#;
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\nServer: cloudapi/9.20.0\r\nApi-Version: 9.0.0\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\nConnection: keep-alive\r\n\r\n{body}",
                            body.len()
                        );
                        if w.write_all(resp.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, rx)
    }

    fn all_requests(rx: &mpsc::Receiver<Req>) -> String {
        rx.try_iter().map(|r| r.to_string()).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn version_is_7_17_0() -> Result<()> {
        let tenant = Tenant::new(KeyType::Ed25519)?;
        let t = tenant.triton("http://127.0.0.1:9", "nobody", false)?;
        let out = t.run(&["--version"])?;
        assert!(out.success(), "{out}");
        assert_eq!(out.stdout.lines().next(), Some(format!("Triton CLI {TRITON_VERSION}").as_str()), "{out}");
        eprintln!("`triton --version` took {:?}", out.elapsed);
        Ok(())
    }

    /// `triton cloudapi /--ping` signs with the tenant's key, found in `$HOME/.ssh` by the
    /// profile's keyId, and always names it by MD5 on the wire.
    fn signed_ping(kind: KeyType, key_id_sha256: bool) -> Result<()> {
        let (url, rx) = stub_server();
        let tenant = Tenant::new(kind)?;
        // A decoy key of another type: the CLI must pick the profile's one.
        tenant.add_key(if kind == KeyType::Rsa { KeyType::Ed25519 } else { KeyType::Rsa })?;
        let key_id = if key_id_sha256 { &tenant.sha256 } else { &tenant.md5 };
        let t = Triton::new(triton_bin()?, tenant.home.path(), &url, "alice", key_id, false)?;
        let out = t.run(&["cloudapi", "/--ping"]);
        let out = match out {
            Ok(o) if o.success() => o,
            Ok(o) => panic!("{o}\n--- requests received ---\n{}", all_requests(&rx)),
            Err(e) => panic!("{e:#}\n--- requests received ---\n{}", all_requests(&rx)),
        };
        let req = rx.try_recv().unwrap_or_else(|_| panic!("the stub got no request: {out}"));
        let more = all_requests(&rx);
        let dump = format!("{out}\n--- request received ---\n{req}{more}");
        eprintln!("{kind:?} ({}): {} in {:?}", if key_id_sha256 { "SHA256 keyId" } else { "MD5 keyId" }, req, out.elapsed);
        assert!(more.is_empty(), "one request expected: {dump}");
        assert_eq!(serde_json::from_str::<Value>(&out.stdout)?, json!({"ping": "pong"}), "{dump}");
        assert_eq!(req.line, "GET /--ping HTTP/1.1", "{dump}");
        assert_eq!(req.header("accept-version"), Some("~9||~8"), "{dump}");
        assert_eq!(req.header("accept"), Some("application/json"), "{dump}");
        assert!(req.header("user-agent").unwrap_or_default().starts_with(&format!("triton/{TRITON_VERSION} (")), "{dump}");
        assert!(req.header("date").unwrap_or_default().ends_with(" GMT"), "{dump}");
        assert!(req.header("content-md5").is_none() && req.header("api-version").is_none(), "{dump}");

        let auth = req.header("authorization").unwrap_or_else(|| panic!("no Authorization: {dump}"));
        let algorithm = kind.algorithm().expect("a signing key type");
        let prefix =
            format!(r#"Signature keyId="/alice/keys/{}",algorithm="{algorithm}",headers="(request-target) date",signature=""#, tenant.md5);
        let sig = auth.strip_prefix(&prefix).and_then(|s| s.strip_suffix('"')).unwrap_or_else(|| panic!("expected {prefix}…\": {dump}"));
        assert!(sig.len() > 40 && sig.chars().all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c)), "signature not base64: {dump}");
        let raw = base64_decode(sig).unwrap_or_else(|| panic!("signature not base64: {dump}"));
        match kind {
            // Raw 64-byte Ed25519 signature; PKCS#1 v1.5 as long as the 2048-bit modulus.
            KeyType::Ed25519 => assert_eq!(raw.len(), 64, "{dump}"),
            KeyType::Rsa => assert_eq!(raw.len(), 256, "{dump}"),
            // ASN.1 DER SEQUENCE{r INTEGER, s INTEGER}, not raw r‖s.
            KeyType::EcdsaP256 | KeyType::EcdsaP521 => assert!(der_two_integers(&raw), "not DER SEQUENCE{{r,s}}: {raw:02x?}\n{dump}"),
            KeyType::EcdsaP384 => unreachable!(),
        }
        Ok(())
    }

    #[test]
    fn signed_ping_ed25519() -> Result<()> {
        signed_ping(KeyType::Ed25519, false)
    }

    #[test]
    fn signed_ping_ed25519_sha256_key_id() -> Result<()> {
        signed_ping(KeyType::Ed25519, true)
    }

    #[test]
    fn signed_ping_rsa() -> Result<()> {
        signed_ping(KeyType::Rsa, false)
    }

    #[test]
    fn signed_ping_rsa_sha256_key_id() -> Result<()> {
        signed_ping(KeyType::Rsa, true)
    }

    #[test]
    fn signed_ping_ecdsa_p256() -> Result<()> {
        signed_ping(KeyType::EcdsaP256, false)
    }

    #[test]
    fn signed_ping_ecdsa_p521() -> Result<()> {
        signed_ping(KeyType::EcdsaP521, false)
    }

    #[test]
    fn ecdsa_p384_cannot_sign() -> Result<()> {
        let (url, rx) = stub_server();
        let tenant = Tenant::new(KeyType::EcdsaP384)?;
        let t = tenant.triton(&url, "alice", false)?;
        let out = t.fail(&["cloudapi", "/--ping"])?;
        assert_eq!(out.code, Some(1), "{out}");
        assert!(out.stderr.contains("SHA384 is not a supported hash algorithm"), "{out}");
        assert!(rx.try_recv().is_err(), "nothing should reach the server: {out}\n{}", all_requests(&rx));
        Ok(())
    }

    #[test]
    fn unknown_key_id_is_reported() -> Result<()> {
        let (url, rx) = stub_server();
        let tenant = Tenant::new(KeyType::Ed25519)?;
        let other = tempfile::tempdir()?;
        let (_, _, md5, _) = make_key(other.path(), KeyType::Ed25519)?;
        let t = Triton::new(triton_bin()?, tenant.home.path(), &url, "alice", &md5, false)?;
        let out = t.fail(&["cloudapi", "/--ping"])?;
        assert!(rx.try_recv().is_err(), "nothing should reach the server: {out}");
        eprintln!("unknown key: {out}");
        Ok(())
    }

    #[test]
    fn timeout_kills_the_process_group() -> Result<()> {
        let home = tempfile::tempdir()?;
        // A background grandchild holding the pipes open must not make run() hang either.
        let t = Triton {
            bin: "bash".into(),
            home: home.path().to_path_buf(),
            profile: PROFILE.into(),
            timeout: Duration::from_millis(300),
            env: vec![("TRITON_X".into(), "1".into())],
        };
        let started = Instant::now();
        let err = t.run(&["-c", "echo started; env | sort >&2; sleep 30 & sleep 30"]).expect_err("should time out");
        let msg = format!("{err:#}");
        assert!(started.elapsed() < Duration::from_secs(10), "{msg}");
        assert!(msg.contains("timed out") && msg.contains("killed by a signal") && msg.contains("started"), "{msg}");
        // The environment is cleared: HOME, PATH, the extra variable, and what bash sets itself.
        assert!(msg.contains("TRITON_X=1") && !msg.contains("CARGO"), "{msg}");
        Ok(())
    }

    fn base64_decode(s: &str) -> Option<Vec<u8>> {
        const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let s = s.trim_end_matches('=');
        let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0);
        for c in s.bytes() {
            acc = acc << 6 | ABC.iter().position(|&a| a == c)? as u32;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        Some(out)
    }

    /// A DER length at `b[i]`: (length, bytes it took).
    fn der_len(b: &[u8], i: usize) -> Option<(usize, usize)> {
        match *b.get(i)? {
            n if n < 0x80 => Some((n as usize, 1)),
            0x81 => Some((*b.get(i + 1)? as usize, 2)),
            _ => None,
        }
    }

    /// Whether `b` is exactly DER `SEQUENCE { INTEGER, INTEGER }`.
    fn der_two_integers(b: &[u8]) -> bool {
        let Some((len, n)) = der_len(b, 1).filter(|_| b.first() == Some(&0x30)) else { return false };
        let mut i = 1 + n;
        if i + len != b.len() {
            return false;
        }
        for _ in 0..2 {
            let Some((l, n)) = der_len(b, i + 1).filter(|_| b.get(i) == Some(&0x02)) else { return false };
            i += 1 + n + l;
        }
        i == b.len()
    }

    #[test]
    fn json_output_shapes() -> Result<()> {
        assert_eq!(parse_json_stream("")?, Vec::<Value>::new());
        assert_eq!(parse_json_stream("{\"a\":1}\n{\"a\":2}\n")?, vec![json!({"a":1}), json!({"a":2})]);
        assert_eq!(parse_json_stream("[\n    {\n        \"a\": 1\n    }\n]\n")?, vec![json!([{"a":1}])]);
        assert!(parse_json_stream("Triton CLI").is_err());
        assert_eq!(shell_quote("/--ping"), "/--ping");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(base64_decode("MEQCIA==").as_deref(), Some(&[0x30, 0x44, 0x02, 0x20][..]));
        assert!(der_two_integers(&[0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02]));
        assert!(!der_two_integers(&[0x30, 0x07, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02]));
        Ok(())
    }
}
