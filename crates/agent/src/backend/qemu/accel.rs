//! Does KVM really work here? `/dev/kvm` can exist on a host (a nested VM, a container)
//! where guests still cannot run, so the agent proves it: it boots a 512-byte boot sector
//! that uses the x87 FPU as firmware does (a nested hypervisor may run plain code under KVM
//! and still fail there: "KVM internal error", and every OVMF or SeaBIOS guest hangs), then
//! writes `OK` to the serial port, under `-accel kvm` with the CPU model VMs get
//! (`host`: some nested hypervisors refuse its MSRs and QEMU aborts), and watches for the
//! bytes. `--accel auto` falls back to TCG (software emulation) with a log line saying why.

use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::argv::Accel;

/// What the operator asked for (`--accel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Auto,
    Kvm,
    Tcg,
}

impl std::str::FromStr for Choice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Choice::Auto),
            "kvm" => Ok(Choice::Kvm),
            "tcg" => Ok(Choice::Tcg),
            other => Err(format!("--accel must be auto, kvm or tcg (got {other:?})")),
        }
    }
}

/// A boot sector that uses the x87 FPU as every firmware does (`xor ax,ax; mov ds,ax;
/// finit; fldcw [0x7d00]`) — some nested hypervisors run a plain boot sector under KVM
/// but fail on these, so OVMF and SeaBIOS guests hang — then prints `OK` on the serial
/// port (`mov dx,0x3f8; mov al,'O'; out dx,al; mov al,'K'; out dx,al; cli; hlt; jmp $-1`).
fn boot_sector() -> Vec<u8> {
    let code = [
        0x31, 0xC0, 0x8E, 0xD8, 0x9B, 0xDB, 0xE3, 0xD9, 0x2E, 0x00, 0x7D, 0xBA, 0xF8, 0x03, 0xB0, b'O', 0xEE, 0xB0, b'K', 0xEE, 0xFA, 0xF4,
        0xEB, 0xFD,
    ];
    let mut s = vec![0u8; 512];
    s[..code.len()].copy_from_slice(&code);
    // The control word fldcw loads, at 0x7d00: the default 0x037f.
    s[0x100] = 0x7f;
    s[0x101] = 0x03;
    s[510] = 0x55;
    s[511] = 0xAA;
    s
}

/// Boots the probe under `accel`; Ok when the guest ran, else why not.
pub async fn probe(qemu: &Path, accel: Accel, scratch: &Path) -> Result<(), String> {
    if accel == Accel::Kvm {
        std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").map_err(|e| format!("/dev/kvm: {e}"))?;
    }
    std::fs::create_dir_all(scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let disk = scratch.join("accel-probe.img");
    std::fs::write(&disk, boot_sector()).map_err(|e| format!("{}: {e}", disk.display()))?;
    let mut child = tokio::process::Command::new(qemu)
        .args(["-machine", "pc", "-accel", accel.as_str(), "-cpu", super::argv::default_cpu(accel)])
        .args(["-nodefaults", "-display", "none", "-m", "16"])
        .args(["-serial", "stdio", "-no-reboot"])
        .arg("-drive")
        .arg(format!("file={},format=raw,if=ide,snapshot=on", disk.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("could not run {}: {e}", qemu.display()))?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let mut stderr = child.stderr.take().ok_or("no stderr")?;
    let (mut seen, mut errs) = (Vec::new(), Vec::new());
    let ok = tokio::time::timeout(Duration::from_secs(20), async {
        let (mut buf, mut ebuf) = ([0u8; 256], [0u8; 1024]);
        let mut stderr_open = true;
        loop {
            tokio::select! {
                r = stdout.read(&mut buf) => match r {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => {
                        seen.extend_from_slice(&buf[..n]);
                        if seen.windows(2).any(|w| w == b"OK") {
                            return true;
                        }
                    }
                },
                r = stderr.read(&mut ebuf), if stderr_open => match r {
                    Ok(0) | Err(_) => stderr_open = false,
                    Ok(n) => {
                        errs.extend_from_slice(&ebuf[..n]);
                        // QEMU pauses the guest and waits; no need to wait with it.
                        if errs.windows(KVM_INTERNAL.len()).any(|w| w == KVM_INTERNAL.as_bytes()) {
                            return false;
                        }
                    }
                },
            }
        }
    })
    .await
    .unwrap_or(false);
    let _ = child.start_kill();
    let out = child.wait_with_output().await.map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&disk);
    if ok {
        return Ok(());
    }
    errs.extend_from_slice(&out.stderr);
    Err(why(&String::from_utf8_lossy(&errs)))
}

/// What QEMU says when KVM cannot run an instruction of the guest's.
const KVM_INTERNAL: &str = "KVM internal error";

/// Why the probe failed, from what QEMU printed on stderr.
fn why(stderr: &str) -> String {
    if stderr.contains(KVM_INTERNAL) {
        return "KVM cannot run the probe's x87 FPU instructions (\"KVM internal error: emulation failure\", seen under some nested hypervisors): real guests would hang in their firmware".into();
    }
    let last = stderr.trim().lines().last().unwrap_or("").to_string();
    if last.is_empty() { "the probe guest printed nothing within 20 s".into() } else { last }
}

/// Picks the accelerator: the operator's choice, or KVM when it proves to work.
pub async fn resolve(choice: Choice, qemu: &Path, scratch: &Path) -> Result<Accel, String> {
    match choice {
        Choice::Tcg => {
            tracing::info!("accelerator: TCG (software emulation), as configured");
            Ok(Accel::Tcg)
        }
        Choice::Kvm => match probe(qemu, Accel::Kvm, scratch).await {
            Ok(()) => {
                tracing::info!("accelerator: KVM");
                Ok(Accel::Kvm)
            }
            Err(e) => Err(format!("--accel kvm, but KVM does not work here: {e} (use --accel tcg or auto)")),
        },
        Choice::Auto => match probe(qemu, Accel::Kvm, scratch).await {
            Ok(()) => {
                tracing::info!("accelerator: KVM (a probe guest booted under it)");
                Ok(Accel::Kvm)
            }
            Err(e) => {
                tracing::warn!("KVM is not usable here ({e}); using TCG — software emulation, much slower");
                Ok(Accel::Tcg)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_sector_is_bootable() {
        let s = boot_sector();
        assert_eq!((s.len(), s[510], s[511]), (512, 0x55, 0xAA));
    }

    #[tokio::test]
    async fn the_probe_runs_under_tcg() {
        let d = tempfile::tempdir().unwrap();
        probe(Path::new("qemu-system-x86_64"), Accel::Tcg, d.path()).await.unwrap();
        let e = probe(Path::new("/nonexistent/qemu"), Accel::Tcg, d.path()).await.unwrap_err();
        assert!(e.contains("/nonexistent/qemu"), "{e}");
        assert!("fast".parse::<Choice>().unwrap_err().contains("auto, kvm or tcg"));
        assert!(why("KVM internal error. Suberror: 1\nextra data[0]: 0x1\n").contains("x87 FPU"));
        assert_eq!(why(""), "the probe guest printed nothing within 20 s");
    }
}
