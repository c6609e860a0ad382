//! The metadata server of one VM: a task that attaches to the VM's metadata serial port
//! and answers the guest, line by line, for as long as the VM exists.
//!
//! ```text
//!             ┌──────────── connect refused / no socket: sleep 100 ms ◄──┐
//!             ▼                                                          │
//!   start ─► connecting ──connected──► serving ──EOF / error: sleep 100 ms┘
//!             │                          │ each line: parse → answer → write
//!             └── source.view() = None ──┴──► end
//! ```
//!
//! QEMU exposes the guest's second serial port as a listening UNIX socket
//! (`-chardev socket,…,server=on,wait=off`); the server connects to it as a client. QEMU
//! restarting, the guest rebooting or the agent restarting all just drop the connection,
//! and the server connects again. Each connection starts with an empty line buffer; the
//! guest's `NEGOTIATE V2` is answered but, as on SmartOS, V2 frames and v1 requests are
//! both served whether or not it came, so a guest may (re)negotiate at any time.
//!
//! Every request re-reads the VM from the [`Source`], so metadata changed while the VM runs
//! is seen at once. A `PUT` or `DELETE` waits until the source has persisted it (at most
//! [`WRITE_TIMEOUT`], well under the 45 s clients wait) and then answers `SUCCESS` or
//! `FAILURE` with the reason. Requests are handled in order, one at a time: a guest never
//! has more than one outstanding. Each VM has its own task, so a slow write or a guest that
//! floods its port only ever delays that VM.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::codec::{self, Code, Op, Request};
use super::keys::{self, Lookup, MetadataWrite, VmView};
use super::lines::{Line, LineSplitter};

/// Where the metadata server reads the VM from and persists the guest's writes.
#[async_trait::async_trait]
pub trait Source: Send + Sync + 'static {
    /// The VM as it is now (None once it is gone: the task then ends).
    fn view(&self) -> Option<VmView>;
    /// Persists a guest write; Ok only once persisted (the reply waits for it).
    async fn write(&self, w: MetadataWrite) -> Result<(), String>;
}

/// How long to wait between attempts to reach the socket.
pub const RETRY: Duration = Duration::from_millis(100);
/// How long a guest's write may take to persist before the guest is told it failed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(20);
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone, Copy)]
struct Options {
    retry: Duration,
    write_timeout: Duration,
    max_line: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { retry: RETRY, write_timeout: WRITE_TIMEOUT, max_line: codec::MAX_LINE }
    }
}

/// Serves the protocol on `socket` until the returned handle is aborted or the source says the VM is gone.
pub fn spawn(socket: PathBuf, source: Arc<dyn Source>) -> JoinHandle<()> {
    spawn_with(socket, source, Options::default())
}

fn spawn_with(socket: PathBuf, source: Arc<dyn Source>, options: Options) -> JoinHandle<()> {
    tokio::spawn(async move { run(socket, source, options).await })
}

/// How a connection ended.
enum End {
    /// The other side closed it (QEMU stopped, or a new QEMU replaced it).
    Closed,
    VmGone,
}

async fn run(socket: PathBuf, source: Arc<dyn Source>, options: Options) {
    let path = socket.display().to_string();
    let mut waiting = false;
    loop {
        let Some(vm) = source.view().map(|view| view.def.uuid) else {
            debug!(socket = %path, "metadata: the VM is gone; stopping");
            return;
        };
        let stream = match UnixStream::connect(&socket).await {
            Ok(stream) => stream,
            Err(e) => {
                if !waiting {
                    debug!(%vm, socket = %path, error = %e, "metadata: waiting for the VM's metadata socket");
                    waiting = true;
                }
                tokio::time::sleep(options.retry).await;
                continue;
            }
        };
        waiting = false;
        debug!(%vm, socket = %path, "metadata: connected");
        match serve(stream, source.as_ref(), options).await {
            Ok(End::Closed) => debug!(%vm, "metadata: disconnected"),
            Err(e) => debug!(%vm, error = %e, "metadata: connection lost"),
            Ok(End::VmGone) => {
                debug!(%vm, "metadata: the VM is gone; stopping");
                return;
            }
        }
        // Whatever closed the connection, do not spin if it keeps doing so.
        tokio::time::sleep(options.retry).await;
    }
}

/// Per-connection protocol state.
#[derive(Debug, Default)]
struct Session {
    /// Whether the guest negotiated V2 on this connection (for the logs: SmartOS serves
    /// V2 frames either way, and so do we).
    negotiated: bool,
}

/// What to do about one request.
enum Outcome {
    Reply(String),
    Silent,
    VmGone,
}

/// Serves one connection until it closes or the VM is gone.
async fn serve(mut stream: UnixStream, source: &dyn Source, options: Options) -> std::io::Result<End> {
    let (mut reader, mut writer) = stream.split();
    let mut lines = LineSplitter::new(options.max_line);
    let mut session = Session::default();
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok(End::Closed);
        }
        for line in lines.feed(&buf[..n]) {
            let request = match line {
                Line::Complete(bytes) => codec::parse_line(&bytes),
                Line::TooLong { head } => codec::parse_overlong(&head, options.max_line),
            };
            match answer(request, &mut session, source, options).await {
                Outcome::Reply(reply) => writer.write_all(reply.as_bytes()).await?,
                Outcome::Silent => {}
                Outcome::VmGone => return Ok(End::VmGone),
            }
        }
    }
}

/// The reply to one request.
async fn answer(request: Request, session: &mut Session, source: &dyn Source, options: Options) -> Outcome {
    match request {
        Request::Ignore => Outcome::Silent,
        Request::Invalid => Outcome::Reply(codec::INVALID_COMMAND.into()),
        Request::Negotiate(version) => {
            session.negotiated = version == "V2";
            debug!(%version, negotiated = session.negotiated, "metadata: guest negotiated");
            Outcome::Reply(if session.negotiated { codec::V2_OK } else { codec::V1_FAILURE }.into())
        }
        Request::BadFrame { reqid, problem } => {
            debug!(%reqid, %problem, "metadata: bad V2 frame");
            Outcome::Reply(codec::v2_reply(&reqid, Code::Failure, &problem.to_string()))
        }
        Request::V1Get(key) => {
            let Some(view) = source.view() else { return Outcome::VmGone };
            Outcome::Reply(match keys::get(&view, &key) {
                Lookup::Found(value) => codec::v1_success(&value),
                Lookup::NotFound => codec::V1_NOTFOUND.into(),
                Lookup::Failure(_) => codec::V1_FAILURE.into(),
            })
        }
        Request::V1Keys => {
            let Some(view) = source.view() else { return Outcome::VmGone };
            Outcome::Reply(codec::v1_success(&keys::keys(&view).join("\n")))
        }
        Request::V2 { reqid, op } => {
            let Some(view) = source.view() else { return Outcome::VmGone };
            let (code, payload) = v2_operation(op, &view, source, options).await;
            Outcome::Reply(codec::v2_reply(&reqid, code, &payload))
        }
    }
}

async fn v2_operation(op: Op, view: &VmView, source: &dyn Source, options: Options) -> (Code, String) {
    match op {
        Op::Get(key) => match keys::get(view, &key) {
            Lookup::Found(value) => (Code::Success, value),
            Lookup::NotFound => (Code::NotFound, String::new()),
            Lookup::Failure(message) => (Code::Failure, message),
        },
        Op::Keys => (Code::Success, keys::keys(view).join("\n")),
        Op::Put { key, value } => persist(&key, keys::put(view, &key, &value), view, source, options).await,
        Op::Delete(key) => persist(&key, keys::delete(view, &key), view, source, options).await,
    }
}

/// Persists a guest's write (unless it was refused) and says how it went.
async fn persist(key: &str, write: Result<MetadataWrite, String>, view: &VmView, source: &dyn Source, options: Options) -> (Code, String) {
    let vm = view.def.uuid;
    let write = match write {
        Ok(write) => write,
        Err(refusal) => {
            debug!(%vm, key, %refusal, "metadata: guest write refused");
            return (Code::Failure, refusal);
        }
    };
    match tokio::time::timeout(options.write_timeout, source.write(write)).await {
        Ok(Ok(())) => (Code::Success, String::new()),
        Ok(Err(error)) => {
            warn!(%vm, key, %error, "metadata: persisting a guest write failed");
            (Code::Failure, error)
        }
        Err(_) => {
            let error = format!("persisting the write took longer than {} s", options.write_timeout.as_secs_f32());
            warn!(%vm, key, %error, "metadata: persisting a guest write failed");
            (Code::Failure, error)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::UnixListener;
    use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
    use tokio::time::timeout;

    use super::super::codec::{Frame, encode_put};
    use super::super::keys::tests::{VM, view};
    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    /// An in-memory VM record: writes are applied to the view, or fail, or hang.
    #[derive(Default)]
    struct FakeSource {
        view: Mutex<Option<VmView>>,
        writes: Mutex<Vec<MetadataWrite>>,
        fail: Mutex<Option<String>>,
        hang: AtomicBool,
    }

    impl FakeSource {
        fn new() -> Arc<FakeSource> {
            Arc::new(FakeSource { view: Mutex::new(Some(view())), ..Default::default() })
        }
    }

    #[async_trait::async_trait]
    impl Source for FakeSource {
        fn view(&self) -> Option<VmView> {
            self.view.lock().unwrap().clone()
        }

        async fn write(&self, w: MetadataWrite) -> Result<(), String> {
            if self.hang.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            if let Some(error) = self.fail.lock().unwrap().clone() {
                return Err(error);
            }
            if let Some(v) = self.view.lock().unwrap().as_mut() {
                let def = &mut v.def;
                def.customer_metadata.extend(w.set_customer_metadata.clone());
                def.internal_metadata.extend(w.set_internal_metadata.clone());
                for k in &w.remove_customer_metadata {
                    def.customer_metadata.remove(k);
                }
                for k in &w.remove_internal_metadata {
                    def.internal_metadata.remove(k);
                }
            }
            self.writes.lock().unwrap().push(w);
            Ok(())
        }
    }

    /// The guest's side of the metadata port, as QEMU's listening socket hands it over.
    struct Guest {
        reader: BufReader<OwnedReadHalf>,
        writer: OwnedWriteHalf,
    }

    impl Guest {
        async fn accept(listener: &UnixListener) -> Guest {
            let (stream, _) = timeout(WAIT, listener.accept()).await.expect("the server connects").unwrap();
            let (reader, writer) = stream.into_split();
            Guest { reader: BufReader::new(reader), writer }
        }

        async fn send(&mut self, bytes: impl AsRef<[u8]>) {
            self.writer.write_all(bytes.as_ref()).await.unwrap();
        }

        /// The next reply line, without its LF.
        async fn line(&mut self) -> String {
            let mut line = Vec::new();
            timeout(WAIT, self.reader.read_until(b'\n', &mut line)).await.expect("a reply").unwrap();
            assert_eq!(line.pop(), Some(b'\n'), "a whole line");
            String::from_utf8(line).unwrap()
        }

        /// Sends `line` and returns the one-line reply.
        async fn ask(&mut self, line: &str) -> String {
            self.send(line).await;
            self.line().await
        }

        /// Sends a V2 request and returns the reply frame (checking its reqid).
        async fn v2(&mut self, reqid: &str, code: &str, payload: &[u8]) -> Frame {
            let request = Frame { reqid: reqid.into(), code: code.into(), payload: payload.to_vec() };
            let reply = self.ask(&request.to_line()).await;
            let frame = Frame::parse(&reply).unwrap();
            assert_eq!(frame.reqid, reqid);
            frame
        }

        /// Asserts that nothing arrives for a while.
        async fn silent(&mut self) {
            let mut byte = [0u8; 1];
            if let Ok(read) = timeout(Duration::from_millis(300), self.reader.read(&mut byte)).await {
                panic!("expected silence, got {read:?} {:?}", byte[0] as char);
            }
        }
    }

    fn reply(frame: &Frame) -> (&str, &str) {
        (frame.code.as_str(), std::str::from_utf8(&frame.payload).unwrap())
    }

    fn listen(dir: &Path) -> (UnixListener, PathBuf) {
        let socket = dir.join("metadata.sock");
        (UnixListener::bind(&socket).unwrap(), socket)
    }

    #[tokio::test]
    async fn full_conversation() {
        let dir = tempfile::tempdir().unwrap();
        let (listener, socket) = listen(dir.path());
        let source = FakeSource::new();
        let task = spawn(socket, source.clone());
        let mut g = Guest::accept(&listener).await;

        assert_eq!(g.ask("\n").await, "invalid command");
        assert_eq!(g.ask("NEGOTIATE V2\n").await, "V2_OK");
        assert_eq!(reply(&g.v2("0000abcd", "GET", b"sdc:uuid").await), ("SUCCESS", VM));
        assert_eq!(reply(&g.v2("0000abce", "GET", b"user-script").await), ("SUCCESS", "#!/bin/sh\necho hi\n"));
        assert_eq!(reply(&g.v2("0000abcf", "GET", b"no-such-key").await), ("NOTFOUND", ""));
        assert_eq!(reply(&g.v2("0000abd0", "GET", b"nested").await), ("FAILURE", "the value of nested is not a string"));
        let keys = g.v2("0000abd1", "KEYS", b"").await;
        assert_eq!(reply(&keys), ("SUCCESS", "cloud-init:user-data\ncount\nflag\nnested\nprepare-image:state\nroot_pw\nuser-script"));

        // The published test vector: sdc:resolvers of a VM without resolvers is `[]`.
        source.view.lock().unwrap().as_mut().unwrap().def.resolvers.clear();
        let request = Frame { reqid: "dc4fae17".into(), code: "GET".into(), payload: b"sdc:resolvers".to_vec() };
        assert_eq!(g.ask(&request.to_line()).await, "V2 21 265ae1d8 dc4fae17 SUCCESS W10=");

        let put = g.v2("00000001", "PUT", &encode_put("user-data", "hello")).await;
        assert_eq!(reply(&put), ("SUCCESS", ""));
        assert_eq!(reply(&g.v2("00000002", "GET", b"user-data").await), ("SUCCESS", "hello"));
        let put = g.v2("00000003", "PUT", &encode_put("root_pw", "pw")).await;
        assert_eq!(reply(&put), ("SUCCESS", ""));

        let refused = g.v2("00000004", "PUT", &encode_put("sdc:uuid", "x")).await;
        assert_eq!(reply(&refused), ("FAILURE", "Cannot update the \"sdc\" Namespace."));
        let refused = g.v2("00000005", "DELETE", b"prepare-image:state").await;
        assert_eq!(reply(&refused), ("FAILURE", "Cannot update the \"prepare-image\" Namespace."));

        assert_eq!(reply(&g.v2("00000006", "DELETE", b"user-data").await), ("SUCCESS", ""));
        assert_eq!(reply(&g.v2("00000007", "GET", b"user-data").await), ("NOTFOUND", ""));
        assert_eq!(reply(&g.v2("00000008", "DELETE", b"never-there").await), ("SUCCESS", ""));

        let writes = source.writes.lock().unwrap().clone();
        assert_eq!(writes.len(), 4);
        assert_eq!(writes[0].set_customer_metadata.get("user-data"), Some(&serde_json::json!("hello")));
        assert_eq!(writes[1].set_internal_metadata.get("root_pw"), Some(&serde_json::json!("pw")));
        assert_eq!(writes[2].remove_customer_metadata, ["user-data"]);

        // v1 stays valid after negotiation, and so does negotiating again.
        assert_eq!(g.ask("GET sdc:hostname\n").await, "SUCCESS");
        assert_eq!(g.line().await, "web0");
        assert_eq!(g.line().await, ".");
        assert_eq!(g.ask("GET nope\n").await, "NOTFOUND");
        assert_eq!(g.ask("NEGOTIATE V3\n").await, "FAILURE");
        assert_eq!(g.ask("NEGOTIATE V2\n").await, "V2_OK");
        assert_eq!(reply(&g.v2("00000009", "FROB", b"").await), ("FAILURE", "Unknown command FROB"));
        task.abort();
    }

    #[tokio::test]
    async fn v1_values_are_dot_stuffed() {
        let dir = tempfile::tempdir().unwrap();
        let (listener, socket) = listen(dir.path());
        let source = FakeSource::new();
        source.view.lock().unwrap().as_mut().unwrap().def.customer_metadata.insert("dots".into(), ".a\nb".into());
        let task = spawn(socket, source);
        let mut g = Guest::accept(&listener).await;
        assert_eq!(g.ask("GET dots\n").await, "SUCCESS");
        assert_eq!(g.line().await, "..a");
        assert_eq!(g.line().await, "b");
        assert_eq!(g.line().await, ".");
        assert_eq!(g.ask("KEYS\n").await, "SUCCESS");
        task.abort();
    }

    #[tokio::test]
    async fn waits_for_the_socket_to_appear() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("metadata.sock");
        let task = spawn(socket.clone(), FakeSource::new());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let listener = UnixListener::bind(&socket).unwrap();
        let mut g = Guest::accept(&listener).await;
        assert_eq!(g.ask("\n").await, "invalid command");
        assert_eq!(reply(&g.v2("0000abcd", "GET", b"sdc:uuid").await), ("SUCCESS", VM));
        task.abort();
    }

    #[tokio::test]
    async fn bad_frames_get_failure_with_the_reqid() {
        let dir = tempfile::tempdir().unwrap();
        let (listener, socket) = listen(dir.path());
        let task = spawn(socket, FakeSource::new());
        let mut g = Guest::accept(&listener).await;
        assert_eq!(g.ask("NEGOTIATE V2\n").await, "V2_OK");

        let line = g.ask("V2 21 265ae1d9 dc4fae17 SUCCESS W10=\n").await;
        let frame = Frame::parse(&line).unwrap();
        assert_eq!(frame.reqid, "dc4fae17");
        assert_eq!(reply(&frame), ("FAILURE", "checksum mismatch: got 265ae1d9, computed 265ae1d8"));

        let line = g.ask("V2 99 00000000 0badf00d GET c2RjOnJlc29sdmVycw==\n").await;
        let frame = Frame::parse(&line).unwrap();
        assert_eq!(frame.reqid, "0badf00d");
        assert_eq!(reply(&frame), ("FAILURE", "length mismatch: header says 99, body is 33 bytes"));

        // The connection is still fine.
        assert_eq!(reply(&g.v2("0000abcd", "GET", b"sdc:uuid").await), ("SUCCESS", VM));
        task.abort();
    }

    #[tokio::test]
    async fn firmware_noise_gets_no_reply() {
        let dir = tempfile::tempdir().unwrap();
        let (listener, socket) = listen(dir.path());
        let task = spawn(socket, FakeSource::new());
        let mut g = Guest::accept(&listener).await;
        g.send("\x1b[2J\x1b[01;01H\r\n").await;
        g.send("BdsDxe: loading Boot0001 \"UEFI QEMU HARDDISK QM00001 \" from PciRoot(0x0)/Pci(0x4,0x0)\r\n").await;
        g.send("\x1b[0m\x1b[37m\x1b[40m  Booting `Debian GNU/Linux'\r\n\r\n").await;
        g.silent().await;
        assert_eq!(g.ask("\n").await, "invalid command");
        assert_eq!(g.ask("NEGOTIATE V2\n").await, "V2_OK");
        assert_eq!(reply(&g.v2("0000abcd", "GET", b"sdc:uuid").await), ("SUCCESS", VM));
        task.abort();
    }

    #[tokio::test]
    async fn reconnects_when_the_connection_drops() {
        let dir = tempfile::tempdir().unwrap();
        let (listener, socket) = listen(dir.path());
        let task = spawn(socket, FakeSource::new());
        let mut g = Guest::accept(&listener).await;
        assert_eq!(g.ask("NEGOTIATE V2\n").await, "V2_OK");
        drop(g);
        let mut g = Guest::accept(&listener).await;
        assert_eq!(g.ask("\n").await, "invalid command");
        assert_eq!(reply(&g.v2("0000abcd", "GET", b"sdc:uuid").await), ("SUCCESS", VM));
        task.abort();
    }

    #[tokio::test]
    async fn reconnects_to_a_new_listener() {
        // QEMU restarted: the old socket file is replaced by a new one.
        let dir = tempfile::tempdir().unwrap();
        let (listener, socket) = listen(dir.path());
        let task = spawn(socket.clone(), FakeSource::new());
        let g = Guest::accept(&listener).await;
        drop(g);
        drop(listener);
        std::fs::remove_file(&socket).unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        let listener = UnixListener::bind(&socket).unwrap();
        let mut g = Guest::accept(&listener).await;
        assert_eq!(reply(&g.v2("0000abcd", "GET", b"sdc:uuid").await), ("SUCCESS", VM));
        task.abort();
    }

    #[tokio::test]
    async fn an_over_long_line_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let (listener, socket) = listen(dir.path());
        let task = spawn(socket, FakeSource::new());
        let mut g = Guest::accept(&listener).await;

        // 5 MiB of junk, no LF until the end: nothing to answer.
        let junk = vec![b'A'; 5 * 1024 * 1024];
        g.send(&junk).await;
        g.send("\n").await;
        g.silent().await;
        assert_eq!(reply(&g.v2("0000abcd", "GET", b"sdc:uuid").await), ("SUCCESS", VM));

        // A 5 MiB V2 frame: its reqid gets a FAILURE.
        g.send("V2 5242880 00000000 12345678 PUT ").await;
        g.send(&junk).await;
        let line = g.ask("\n").await;
        let frame = Frame::parse(&line).unwrap();
        assert_eq!(frame.reqid, "12345678");
        assert_eq!(reply(&frame), ("FAILURE", "request longer than 4194304 bytes"));
        assert_eq!(reply(&g.v2("0000abce", "GET", b"sdc:uuid").await), ("SUCCESS", VM));
        task.abort();
    }

    #[tokio::test]
    async fn a_failed_write_gets_failure_with_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let (listener, socket) = listen(dir.path());
        let source = FakeSource::new();
        *source.fail.lock().unwrap() = Some("VMAPI is unavailable".into());
        let task = spawn(socket, source.clone());
        let mut g = Guest::accept(&listener).await;
        let put = g.v2("00000001", "PUT", &encode_put("user-data", "hello")).await;
        assert_eq!(reply(&put), ("FAILURE", "VMAPI is unavailable"));
        let delete = g.v2("00000002", "DELETE", b"user-script").await;
        assert_eq!(reply(&delete), ("FAILURE", "VMAPI is unavailable"));
        assert!(source.writes.lock().unwrap().is_empty());
        task.abort();
    }

    #[tokio::test]
    async fn a_slow_write_times_out_with_failure() {
        let dir = tempfile::tempdir().unwrap();
        let (listener, socket) = listen(dir.path());
        let source = FakeSource::new();
        source.hang.store(true, Ordering::SeqCst);
        let options = Options { write_timeout: Duration::from_millis(200), ..Options::default() };
        let task = spawn_with(socket, source, options);
        let mut g = Guest::accept(&listener).await;
        let put = g.v2("00000001", "PUT", &encode_put("user-data", "hello")).await;
        assert_eq!(reply(&put), ("FAILURE", "persisting the write took longer than 0.2 s"));
        assert_eq!(reply(&g.v2("00000002", "GET", b"sdc:uuid").await), ("SUCCESS", VM));
        task.abort();
    }

    #[tokio::test]
    async fn a_hanging_write_does_not_delay_another_vm() {
        let dir = tempfile::tempdir().unwrap();
        let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&dir_a).unwrap();
        std::fs::create_dir_all(&dir_b).unwrap();
        let ((listener_a, socket_a), (listener_b, socket_b)) = (listen(&dir_a), listen(&dir_b));
        let (source_a, source_b) = (FakeSource::new(), FakeSource::new());
        source_a.hang.store(true, Ordering::SeqCst);
        let task_a = spawn(socket_a, source_a);
        let task_b = spawn(socket_b, source_b);
        let mut a = Guest::accept(&listener_a).await;
        let mut b = Guest::accept(&listener_b).await;

        a.send(Frame { reqid: "00000001".into(), code: "PUT".into(), payload: encode_put("k", "v") }.to_line()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = std::time::Instant::now();
        assert_eq!(reply(&b.v2("00000002", "GET", b"sdc:uuid").await), ("SUCCESS", VM));
        assert!(started.elapsed() < Duration::from_secs(2));
        a.silent().await;
        task_a.abort();
        task_b.abort();
    }

    #[tokio::test]
    async fn the_task_ends_when_the_vm_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let (listener, socket) = listen(dir.path());
        let source = FakeSource::new();
        let task = spawn(socket, source.clone());
        let mut g = Guest::accept(&listener).await;
        assert_eq!(reply(&g.v2("0000abcd", "GET", b"sdc:uuid").await), ("SUCCESS", VM));
        *source.view.lock().unwrap() = None;
        g.send("KEYS\n").await;
        timeout(WAIT, task).await.expect("the task ends").unwrap();
    }

    #[tokio::test]
    async fn the_task_ends_while_waiting_when_the_vm_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let source = FakeSource::new();
        let task = spawn(dir.path().join("metadata.sock"), source.clone());
        tokio::time::sleep(Duration::from_millis(250)).await;
        *source.view.lock().unwrap() = None;
        timeout(WAIT, task).await.expect("the task ends").unwrap();
    }
}
