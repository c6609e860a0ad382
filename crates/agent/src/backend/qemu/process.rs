//! QEMU processes that outlive the agent: started detached with a pidfile, found again
//! by pidfile + `/proc/<pid>/cmdline` (so a recycled pid is never mistaken for the VM),
//! stopped by ACPI powerdown with a hard kill after a timeout.
//!
//! ```text
//!   spawn: sh -c <launcher> → setsid setpriv … qemu …   (detached; the agent writes P with
//!          its pid and waits for QMP to answer; if QEMU exits first, qemu.log says why)
//!   find:  P → pid → /proc/pid/cmdline has "-uuid <uuid>" and the process is not a zombie
//!   stop:  QMP system_powerdown → wait ≤ timeout → SIGKILL → wait
//!   quit:  QMP quit (no guest runs: paused after a migration) → wait ≤ 10 s → SIGKILL
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::qmp;

/// The pid of the VM's QEMU, if it runs.
pub fn find(pidfile: &Path, uuid: Uuid) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    is_vm(pid, uuid).then_some(pid)
}

/// Whether `pid` is a live QEMU running VM `uuid`.
pub fn is_vm(pid: u32, uuid: Uuid) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let want = uuid.to_string();
    let mut args = cmdline.split(|b| *b == 0);
    let has_uuid = args.by_ref().any(|a| a == b"-uuid") && args.next() == Some(want.as_bytes());
    has_uuid && !is_zombie(pid)
}

fn is_zombie(pid: u32) -> bool {
    // /proc/<pid>/stat: "pid (comm) S …"; comm may contain spaces and parentheses.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])))
        .unwrap_or(true)
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid)
}

/// How long a started process without a monitor socket is watched before it counts as up.
const NO_MONITOR_GRACE: Duration = Duration::from_secs(3);

/// Runs the launcher `script` (see `confine`) in the VM's directory and waits until its
/// QEMU answers on its monitor; records and returns its pid. A QEMU that exits first
/// fails the start with the end of what it printed.
pub async fn spawn(script: &str, layout: &super::Layout, uuid: Uuid) -> Result<u32, String> {
    let pidfile = layout.pidfile();
    let _ = std::fs::remove_file(&pidfile);
    let log = std::fs::File::create(layout.qemu_log()).map_err(|e| format!("creating {}: {e}", layout.qemu_log().display()))?;
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(&layout.dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("could not run sh to start QEMU: {e}"))?;
    let pid = child.id().ok_or("QEMU exited at once")?;
    std::fs::write(&pidfile, format!("{pid}\n")).map_err(|e| format!("writing {}: {e}", pidfile.display()))?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let text = std::fs::read_to_string(layout.qemu_log()).unwrap_or_default();
            let text = text.trim();
            let why = if text.is_empty() { format!("exit status {status}") } else { last_lines(text, 5) };
            return Err(format!("QEMU failed to start: {why}"));
        }
        // The monitor answers once the machine is set up (QEMU's main loop runs). QEMU makes
        // its socket first thing; a process that has none after a few seconds but lives
        // on (a stand-in QEMU in tests) is taken as started.
        if is_vm(pid, uuid)
            && (qmp::execute(&layout.qmp(), "query-status", None).await.is_ok()
                || (started.elapsed() > NO_MONITOR_GRACE && !layout.qmp().exists()))
        {
            // Dropping the handle leaves QEMU running (tokio reaps it when it exits).
            return Ok(pid);
        }
        if Instant::now() > deadline {
            let _ = kill(pid).await;
            return Err("QEMU did not finish starting within 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("; ")
}

/// Waits until `pid` is gone; false on timeout.
pub async fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// Kills `pid` at once (SIGKILL) and waits for it to go.
pub async fn kill(pid: u32) -> Result<(), String> {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        match rustix::process::kill_process(p, rustix::process::Signal::KILL) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => {}
            Err(e) => return Err(format!("could not kill QEMU (pid {pid}): {e}")),
        }
    }
    if wait_gone(pid, Duration::from_secs(10)).await { Ok(()) } else { Err(format!("QEMU (pid {pid}) survived SIGKILL")) }
}

/// How a stop went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// No guest ran (paused after a migration, or waiting for one): QEMU was quit.
    Quit,
    /// The guest shut down after the ACPI power button.
    Clean,
    /// The guest ignored it; QEMU was killed after the timeout.
    Forced,
}

/// ACPI powerdown, then SIGKILL after `timeout`.
pub async fn stop(pid: u32, qmp_socket: &Path, timeout: Duration) -> Result<Stopped, String> {
    match qmp::execute(qmp_socket, "system_powerdown", None).await {
        Ok(_) => {
            if wait_gone(pid, timeout).await {
                return Ok(Stopped::Clean);
            }
            tracing::warn!(pid, "the guest did not power off within {} s; stopping it hard", timeout.as_secs());
        }
        Err(e) => tracing::warn!(pid, error = %e, "could not ask the guest to power off; stopping it hard"),
    }
    kill(pid).await?;
    Ok(Stopped::Forced)
}

/// QMP `quit` (a QEMU whose guest does not run: nothing to shut down), SIGKILL if it
/// does not go within a few seconds.
pub async fn quit(pid: u32, qmp_socket: &Path) -> Result<Stopped, String> {
    match qmp::execute(qmp_socket, "quit", None).await {
        Ok(_) if wait_gone(pid, Duration::from_secs(10)).await => return Ok(Stopped::Quit),
        Ok(_) => tracing::warn!(pid, "QEMU did not quit within 10 s; stopping it hard"),
        Err(e) => tracing::warn!(pid, error = %e, "could not ask QEMU to quit; stopping it hard"),
    }
    kill(pid).await?;
    Ok(Stopped::Forced)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_that_is_not_the_vm_is_not_found() {
        let d = tempfile::tempdir().unwrap();
        let pidfile = d.path().join("qemu.pid");
        // Our own pid is alive but its command line has no "-uuid <uuid>".
        std::fs::write(&pidfile, std::process::id().to_string()).unwrap();
        assert_eq!(find(&pidfile, Uuid::new_v4()), None);
        std::fs::write(&pidfile, "not a pid").unwrap();
        assert_eq!(find(&pidfile, Uuid::new_v4()), None);
        assert_eq!(find(&d.path().join("missing"), Uuid::new_v4()), None);
    }

    #[tokio::test]
    async fn finds_a_process_by_its_uuid_argument_and_kills_it() {
        let uuid = Uuid::new_v4();
        // A shell keeps its extra arguments in its command line, as QEMU keeps "-uuid <uuid>".
        let mut child = std::process::Command::new("sh").args(["-c", "sleep 5; true", "-uuid", &uuid.to_string()]).spawn().unwrap();
        let pid = child.id();
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("p"), pid.to_string()).unwrap();
        // Right after exec, /proc/<pid>/cmdline can read empty for a moment.
        let mut found = None;
        for _ in 0..100 {
            found = find(&d.path().join("p"), uuid);
            if found.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(found, Some(pid));
        assert_eq!(find(&d.path().join("p"), Uuid::new_v4()), None, "another VM's uuid");
        let reaper = std::thread::spawn(move || child.wait());
        kill(pid).await.unwrap();
        reaper.join().unwrap().unwrap();
        assert!(!is_vm(pid, uuid));
    }

    /// A monitor that accepts every command and does nothing (a guest ignoring ACPI).
    async fn deaf_monitor(path: &Path) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (r, mut w) = s.into_split();
                    let mut lines = BufReader::new(r).lines();
                    w.write_all(b"{\"QMP\": {}}\n").await.unwrap();
                    while let Ok(Some(_)) = lines.next_line().await {
                        w.write_all(b"{\"return\": {}}\n").await.unwrap();
                    }
                });
            }
        });
    }

    #[tokio::test]
    async fn a_guest_that_ignores_the_power_button_is_stopped_hard_after_the_timeout() {
        let d = tempfile::tempdir().unwrap();
        let qmp = d.path().join("qmp.sock");
        deaf_monitor(&qmp).await;
        let mut child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let pid = child.id();
        let reaper = std::thread::spawn(move || child.wait());
        let started = Instant::now();
        assert_eq!(stop(pid, &qmp, Duration::from_millis(300)).await.unwrap(), Stopped::Forced);
        assert!(started.elapsed() >= Duration::from_millis(300), "it waited for the guest first");
        reaper.join().unwrap().unwrap();
        // Without a monitor at all, it stops hard at once.
        let mut child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let pid = child.id();
        let reaper = std::thread::spawn(move || child.wait());
        assert_eq!(stop(pid, &d.path().join("none.sock"), Duration::from_secs(30)).await.unwrap(), Stopped::Forced);
        reaper.join().unwrap().unwrap();
    }

    #[test]
    fn last_lines_keeps_the_end() {
        assert_eq!(last_lines("a\nb\nc", 2), "b; c");
    }
}
