//! Network namespaces for tests: every bridge, tap, veth and nftables table a networking
//! test makes lives in a namespace the test creates and removes, so the host's own
//! interfaces, routes and firewall never change and no frame leaves the machine.
//!
//! A process runs inside with [`NetNs::cmd`] (`ip netns exec`, which also gives it the
//! namespace's view of `/sys/class/net`); test code runs inside on a thread of its own
//! with [`NetNs::enter`]. Dropping the namespace kills whatever still runs in it (QEMU
//! guests included) and deletes it, with everything in it.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};

pub struct NetNs {
    pub name: String,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn ip(args: &[&str]) -> Result<Output> {
    let out = Command::new("ip").args(args).output().context("running ip (install iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}

impl NetNs {
    /// A new namespace with its loopback up.
    pub fn new(what: &str) -> Result<NetNs> {
        let name = format!("nereid-{what}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
        ip(&["netns", "add", &name])?;
        let ns = NetNs { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `program` to be run inside the namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs a shell script inside; fails with its output when it fails.
    pub fn sh(&self, script: &str) -> Result<String> {
        let out = self.cmd("sh").args(["-euc", script]).output()?;
        if !out.status.success() {
            bail!("in {}: {script}\n{}{}", self.name, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether `ping` from inside reaches `addr` (a few tries over `secs` seconds).
    pub fn pings(&self, addr: &str, secs: u32) -> bool {
        self.cmd("ping").args(["-c", "1", "-W", "1", "-w", &secs.max(1).to_string(), addr]).output().is_ok_and(|o| o.status.success())
    }

    /// Runs `f` with the calling thread inside the namespace, then moves the thread back:
    /// sockets `f` opens belong to the namespace for good (a responder started in `f`
    /// keeps serving it from any thread of the runtime).
    pub fn enter<R>(&self, f: impl FnOnce() -> R) -> Result<R> {
        use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};
        use std::os::fd::AsFd;
        let home = std::fs::File::open("/proc/thread-self/ns/net").context("opening this thread's network namespace")?;
        let path = format!("/run/netns/{}", self.name);
        let ns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network)).context("entering the network namespace")?;
        let r = f();
        // Going back to where the thread was is always allowed; failing would leave a test
        // thread in the wrong namespace, which nothing could recover from.
        #[allow(clippy::expect_used)]
        move_into_link_name_space(home.as_fd(), Some(LinkNameSpaceType::Network)).expect("returning to the original network namespace");
        Ok(r)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.name]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}
