//! Issue 12, item 5: a VM started from an ISO (a `media: cdrom` disk) is installed from the
//! browser alone. The test builds an installer-like ISO from the test image's own kernel and
//! initramfs (ISOLINUX, whose `boot:` prompt waits for the user: `PROMPT 1`, `TIMEOUT 0`, no
//! default), gives it to a VM whose boot disk is blank (no image), and drives a headless
//! Chromium signed in as an operator: the serial page shows the prompt waiting and no guest;
//! `install` typed on the VNC page's canvas (real key events, through noVNC and the console
//! proxy to the guest's keyboard) is echoed by the prompt and boots nothing yet; Enter boots
//! the ISO's entry (its kernel command line is the entry's); the serial page then shows
//! the test image's `nereid-test: uuid=<vm>` line, and the guest sees the blank disk it
//! would install onto. Screenshots of each step go to
//! target/test-artifacts/screenshots/web_iso_qemu/.

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nereid_testkit::qemu::{test_image, values};
use nereid_testkit::webdriver::{Browser, wait_until};
use nereid_testkit::{Backend, Options, web::PASSWORD};
use serde_json::json;

use super::{BOOT, Env};

/// The ISO's boot menu: on the serial port too (so the serial page shows it waiting), no
/// default and no timeout, so nothing boots until a label is typed.
const ISOLINUX_CFG: &str = "SERIAL 0 115200
SAY Nereid test installer: type install and press Enter.
PROMPT 1
TIMEOUT 0
LABEL install
  KERNEL /install/vmlinuz
  INITRD /install/initrd.img
  APPEND console=tty0 console=ttyS0,115200 panic=-1 nereid.installer=install
";

/// Runs a host tool; panics with its output if it fails.
fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/test installs xorriso, isolinux, syslinux-common, mtools)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds a bootable installer ISO at `iso` (staging under `work`): ISOLINUX and the test
/// image's kernel and initramfs, taken from the image's FAT partition (where
/// scripts/build-test-image puts them for syslinux) with mtools.
fn build_installer_iso(work: &Path, iso: &Path) {
    let image = test_image().unwrap();
    let mut mbr = [0u8; 512];
    std::fs::File::open(&image).unwrap().read_exact(&mut mbr).unwrap();
    assert_eq!(mbr[510..], [0x55, 0xAA], "{} has an MBR", image.display());
    // The first partition entry's first sector (LBA, little-endian at offset 8 of the entry).
    let start = u64::from(u32::from_le_bytes(mbr[446 + 8..446 + 12].try_into().unwrap())) * 512;
    let root = work.join("iso-root");
    for d in ["isolinux", "install"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    run(Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-n", "-i", &format!("{}@@{start}", image.display()), "::/vmlinuz", "::/initrd.img"])
        .arg(root.join("install")));
    for (from, to) in [("/usr/lib/ISOLINUX/isolinux.bin", "isolinux.bin"), ("/usr/lib/syslinux/modules/bios/ldlinux.c32", "ldlinux.c32")] {
        std::fs::copy(from, root.join("isolinux").join(to))
            .unwrap_or_else(|e| panic!("{from}: {e} (scripts/test installs isolinux and syslinux-common)"));
    }
    std::fs::write(root.join("isolinux/isolinux.cfg"), ISOLINUX_CFG).unwrap();
    run(Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-V", "NEREID_INSTALL", "-o"])
        .arg(iso)
        .args(["-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat", "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table"])
        .arg(&root));
}

/// ACCEPTANCE (issue 12, item 5): a VM with a blank boot disk and an installer ISO waits at
/// the ISO's boot prompt; what is typed on the browser's VNC page boots the installer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_iso_vm_is_installed_from_the_browser_alone() {
    let env = Env::with(Options::new(Backend::Sqlite).web_https(), &[], None).await;
    env.cloud.web_account("opal", true).await.unwrap();
    let iso = env.tmp.path().join("iso/nereid-installer.iso");
    let (work, at) = (env.tmp.path().to_path_buf(), iso.clone());
    tokio::task::spawn_blocking(move || build_installer_iso(&work, &at)).await.unwrap();

    // No image: a blank boot disk (the BIOS finds nothing on it and goes on to the cdrom).
    let body = json!({"owner_uuid": env.owner, "brand": "bhyve", "billing_id": env.package, "networks": [env.network],
        "alias": "from-iso", "disks": [{"size": 256, "boot": true, "model": "virtio"}, {"media": "cdrom", "model": "ahci", "path": iso}]});
    let (vm, job) = env.cloud.create_vm(&body).await.unwrap();
    let j = env.cloud.wait_job(&job).await.unwrap();
    assert_eq!(j["execution"], "succeeded", "{j}");
    let v = env.vm(&vm).await;
    assert!(v["image_uuid"].is_null(), "the VM has no image: {v}");
    assert_eq!(v["state"], "running", "{v}");

    let base = env.cloud.web_url().unwrap();
    let b = Browser::start("web_iso_qemu", 1280).await.unwrap();
    b.sign_in(&base, "opal", PASSWORD).await.unwrap();
    b.wait_text("Sign out", Duration::from_secs(30)).await.unwrap();

    // The serial page: the ISO's boot prompt, waiting; no guest has booted.
    b.goto(&format!("{base}/vms/{vm}/serial")).await.unwrap();
    let text = b.wait_terminal("boot:", BOOT).await.unwrap();
    assert!(text.contains("ISOLINUX"), "the prompt is the ISO's boot loader:\n{text}");
    assert!(!text.contains("nereid-test:"), "nothing has booted from the ISO yet:\n{text}");
    b.screenshot("01-serial-boot-prompt").await.unwrap();

    // The VNC page: connected, the guest's screen (the same prompt) drawn.
    b.goto(&format!("{base}/vms/{vm}/vnc")).await.unwrap();
    b.wait_text("Connected", Duration::from_secs(60)).await.unwrap();
    b.wait_vnc_drawn(Duration::from_secs(60)).await.unwrap();
    // Time for a menu that would time out to do so; this one waits for the user.
    tokio::time::sleep(Duration::from_secs(5)).await;
    b.screenshot("02-vnc-boot-prompt").await.unwrap();
    let log = env.console(&vm);
    assert!(log.contains("boot:") && !log.contains("nereid-test:"), "the menu still waits, nothing booted:\n{log}");

    // Typed on the guest's screen in the browser: key events on noVNC's canvas.
    // The label first: the prompt echoes it (on the screen and the serial port) and waits on.
    let canvas = b.find("#vnc-screen canvas").await.unwrap();
    b.send_keys(&canvas, "install").await.unwrap();
    let echoed = async || Ok(env.console(&vm));
    wait_until(Duration::from_secs(60), "the prompt to echo what was typed", echoed, |log| log.contains("boot: install")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await; // for the screenshot: noVNC's next frame
    b.screenshot("03-vnc-label-typed").await.unwrap();
    assert!(!env.console(&vm).contains("nereid-test:"), "nothing boots before Enter:\n{}", env.console(&vm));
    // Enter: the ISO's kernel boots.
    b.send_keys(&canvas, "\u{E007}").await.unwrap();
    let booting = async || Ok(env.console(&vm));
    wait_until(BOOT, "typing install to boot the ISO's kernel", booting, |log| log.contains("nereid-test: boot")).await.unwrap();
    b.screenshot("04-vnc-booting").await.unwrap();

    // The serial page: the test image booted from the ISO, the entry that was typed.
    b.goto(&format!("{base}/vms/{vm}/serial")).await.unwrap();
    b.wait_terminal(&format!("nereid-test: uuid={vm}"), BOOT).await.unwrap();
    b.screenshot("05-serial-booted").await.unwrap();
    let log = env.wait_boots(&vm, 1).await;
    let cmdline = log.lines().find(|l| l.contains("Command line:")).unwrap_or_else(|| panic!("no kernel command line:\n{log}"));
    assert!(cmdline.contains("nereid.installer=install"), "the kernel is the ISO's install entry: {cmdline}");
    assert_eq!(values(&log, "disk vda bytes"), [(256u64 << 20).to_string()], "the guest sees the blank disk to install onto:\n{log}");
    assert_eq!(values(&log, "boots"), ["0"], "the disk was blank:\n{log}");
    b.goto(&format!("{base}/vms/{vm}/vnc")).await.unwrap();
    b.wait_text("Connected", Duration::from_secs(60)).await.unwrap();
    b.wait_vnc_drawn(Duration::from_secs(60)).await.unwrap();
    b.screenshot("06-vnc-booted").await.unwrap();
}
