//! VM definition → QEMU command line (pure; golden files in `golden/` pin the output).
//!
//! Every VM is a q35 machine, whatever its Triton brand, dressed the way SmartOS dresses
//! its hardware VMs so that guests built for Triton run unchanged:
//!
//! | Triton | QEMU |
//! |---|---|
//! | SMBIOS type 1 `Joyent` / `SmartDC HVM` / serial = uuid | `-smbios type=1,…` (cloud-init's SmartOS source keys on it) |
//! | `bootrom: uefi` / `bios` | OVMF as pflash (a per-VM copy of the variable store) / SeaBIOS |
//! | com1 = console, com2 = metadata | two `-serial` chardev sockets the agent connects to |
//! | disk `model` virtio / ahci, ide / nvme / scsi | virtio-blk / ide-hd on the q35 AHCI / nvme / virtio-scsi |
//! | disk `media: cdrom` (bhyve ISO installs) | ide-cd on the AHCI, read-only |
//! | bhyve NICs at PCI 0:6.N (function 0 = first) | virtio-net at `addr=6.N`, multifunction |
//! | VNC console | `-vnc unix:<socket>` with a std VGA and a USB tablet |
//!
//! The boot disk boots first, cdroms next (an empty disk falls through to the installer).
//!
//! Confinement (see `confine`): QEMU runs in its VM directory as the guest's own user, so
//! the VM's files are named relative to it; host files (cdroms) arrive as descriptors the
//! launcher opened (`-add-fd`, `/dev/fdset/N`); `-sandbox` turns on QEMU's seccomp filter.

use std::path::{Path, PathBuf};

use nereid_types::agent::{Definition, DiskDef, NicDef};

/// How guests execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation (slow, works everywhere).
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// What the host contributes to every command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub accel: Accel,
    /// OVMF's code image (read-only), for `bootrom: uefi`.
    pub ovmf_code: PathBuf,
    /// SMBIOS version string: `7.<platform buildstamp>`, as SmartOS reports it.
    pub smbios_version: String,
}

/// Where a NIC's frames go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetAttach {
    /// A tap device (already plugged into the nic tag's bridge).
    Tap(String),
    /// No host side: the guest sees a NIC with nothing behind it (no bridge for its tag).
    Isolated,
}

/// The files of one VM, all under its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Layout { dir: dir.into() }
    }
    pub fn pidfile(&self) -> PathBuf {
        self.dir.join("qemu.pid")
    }
    pub fn qmp(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.sock")
    }
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    pub fn metadata(&self) -> PathBuf {
        self.dir.join("metadata.sock")
    }
    pub fn vnc(&self) -> PathBuf {
        self.dir.join("vnc.sock")
    }
    pub fn ovmf_vars(&self) -> PathBuf {
        self.dir.join("ovmf-vars.fd")
    }
    /// The file behind disk `i` (cdroms use their own `path`).
    pub fn disk(&self, i: usize) -> PathBuf {
        self.dir.join(format!("disk{i}.qcow2"))
    }
    /// The base of image disk `i` (a read-only hard link to the image cache's file).
    pub fn base(&self, i: usize, format: &str) -> PathBuf {
        self.dir.join(format!("base{i}.{format}"))
    }
    /// QEMU's stderr.
    pub fn qemu_log(&self) -> PathBuf {
        self.dir.join("qemu.log")
    }
    /// The VM's cgroup directories, one per line.
    pub fn cgroups(&self) -> PathBuf {
        self.dir.join("cgroup")
    }
    /// The definition the running QEMU was started with.
    pub fn running_definition(&self) -> PathBuf {
        self.dir.join("running.json")
    }
    /// Every socket QEMU creates; a UNIX socket path must fit in 107 bytes.
    pub fn sockets(&self) -> [PathBuf; 4] {
        [self.qmp(), self.console(), self.metadata(), self.vnc()]
    }
}

/// The CPU model a VM gets unless its `cpu_type` says `qemu64`: the host's under KVM;
/// under TCG, where `host` does not exist, `max`, the closest software CPU.
pub fn default_cpu(accel: Accel) -> &'static str {
    match accel {
        Accel::Kvm => "host",
        Accel::Tcg => "max",
    }
}

/// Ports of the q35 AHCI controller (`ide.0` … `ide.5`).
const AHCI_PORTS: usize = 6;

/// Why a definition cannot become a command line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidDefinition(pub String);

fn bad(msg: impl Into<String>) -> InvalidDefinition {
    InvalidDefinition(msg.into())
}

/// QEMU's option syntax: a comma inside a value is written twice.
fn esc(s: &str) -> String {
    s.replace(',', ",,")
}

fn path_str(p: &Path) -> String {
    esc(&p.to_string_lossy())
}

/// A file of the VM's directory as QEMU, started there, names it.
fn local(p: &Path) -> String {
    esc(&p.file_name().unwrap_or(p.as_os_str()).to_string_lossy())
}

/// QEMU's seccomp filter: no obsolete system calls, no privilege changes, no new processes
/// (no fork/exec), no scheduler or affinity changes.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// The descriptor the launcher opens the first cdrom on; the next ones follow.
pub const FIRST_HOST_FD: u8 = 3;
/// Descriptors 3-9: what `sh` can open by number.
pub const MAX_CDROMS: usize = 7;

/// Each cdrom's disk index and the descriptor QEMU finds its file on.
pub fn cdrom_fds(def: &Definition) -> Vec<(usize, u8)> {
    def.disks.iter().enumerate().filter(|(_, d)| d.media == "cdrom").zip(FIRST_HOST_FD..).map(|((i, _), fd)| (i, fd)).collect()
}

/// The command line (without the program name) that runs `def`.
pub fn command(def: &Definition, host: &Host, layout: &Layout, nets: &[NetAttach]) -> Result<Vec<String>, InvalidDefinition> {
    if !matches!(def.brand.as_str(), "bhyve" | "kvm") {
        return Err(bad(format!("brand {:?} is not a hardware VM brand (bhyve or kvm)", def.brand)));
    }
    if nets.len() != def.nics.len() {
        return Err(bad(format!("{} NICs but {} network attachments", def.nics.len(), nets.len())));
    }
    if def.vcpus == 0 || def.ram == 0 {
        return Err(bad("vcpus and ram must be positive"));
    }
    let uuid = def.uuid.to_string();
    let mut a: Vec<String> = Vec::new();
    let mut push = |parts: &[&str]| a.extend(parts.iter().map(|s| s.to_string()));
    let name = def.alias.as_deref().unwrap_or(&uuid);
    push(&["-name", &format!("guest={},debug-threads=on", esc(name))]);
    push(&["-uuid", &uuid]);
    push(&["-sandbox", SANDBOX]);
    push(&["-nodefaults", "-no-user-config"]);
    push(&["-machine", "q35"]);
    push(&["-accel", host.accel.as_str()]);
    let cpu = match def.cpu_type.as_deref() {
        Some("qemu64") => "qemu64",
        _ => default_cpu(host.accel),
    };
    push(&["-cpu", cpu]);
    push(&["-smp", &def.vcpus.to_string()]);
    push(&["-m", &format!("{}M", def.ram)]);
    push(&[
        "-smbios",
        &format!(
            "type=1,manufacturer=Joyent,product=SmartDC HVM,version={},serial={uuid},uuid={uuid},sku=001,family=Virtual Machine",
            esc(&host.smbios_version)
        ),
    ]);
    push(&["-rtc", "base=utc"]);
    match def.bootrom.as_deref() {
        Some("uefi") => {
            push(&["-drive", &format!("if=pflash,format=raw,unit=0,readonly=on,file={}", path_str(&host.ovmf_code))]);
            push(&["-drive", &format!("if=pflash,format=raw,unit=1,file={}", local(&layout.ovmf_vars()))]);
        }
        None | Some("bios") => {}
        Some(other) => return Err(bad(format!("bootrom {other:?} is not bios or uefi"))),
    }
    // Consoles: com1 = serial console, com2 = metadata (the agent connects to both).
    push(&["-chardev", &format!("socket,id=console,path={},server=on,wait=off", local(&layout.console()))]);
    push(&["-serial", "chardev:console"]);
    push(&["-chardev", &format!("socket,id=metadata,path={},server=on,wait=off", local(&layout.metadata()))]);
    push(&["-serial", "chardev:metadata"]);
    push(&["-chardev", &format!("socket,id=qmp,path={},server=on,wait=off", local(&layout.qmp()))]);
    push(&["-mon", "chardev=qmp,mode=control"]);
    push(&["-display", "none"]);
    push(&["-vnc", &format!("unix:{}", local(&layout.vnc()))]);
    push(&["-device", "VGA"]);
    push(&["-device", "qemu-xhci,id=usb"]);
    push(&["-device", "usb-tablet,bus=usb.0"]);
    disks(&mut a, def, layout)?;
    nics(&mut a, def, nets)?;
    Ok(a)
}

fn disks(a: &mut Vec<String>, def: &Definition, layout: &Layout) -> Result<(), InvalidDefinition> {
    let boots = def.disks.iter().filter(|d| d.boot).count();
    if boots > 1 {
        return Err(bad("only one disk may be the boot disk"));
    }
    let mut ahci_port = 0;
    let mut scsi = false;
    let mut bootindex = 2;
    let fds = cdrom_fds(def);
    if fds.len() > MAX_CDROMS {
        return Err(bad(format!("at most {MAX_CDROMS} cdroms")));
    }
    for (i, d) in def.disks.iter().enumerate() {
        let id = format!("disk{i}");
        let cdrom = d.media == "cdrom";
        let file = match (cdrom, &d.path) {
            (true, Some(_)) => {
                let fd = fds.iter().find(|(j, _)| *j == i).map(|(_, fd)| *fd).unwrap_or(FIRST_HOST_FD);
                a.extend(["-add-fd".into(), format!("fd={fd},set={fd}")]);
                format!("/dev/fdset/{fd}")
            }
            (true, None) => return Err(bad(format!("disks[{i}] is a cdrom without a path"))),
            (false, _) => local(&layout.disk(i)),
        };
        let drive = if cdrom {
            format!("file={file},if=none,id={id},format=raw,media=cdrom,readonly=on")
        } else {
            format!("file={file},if=none,id={id},format=qcow2,cache=writeback,discard=unmap")
        };
        a.extend(["-drive".into(), drive]);
        let boot = if d.boot {
            ",bootindex=1".to_string()
        } else if cdrom {
            bootindex += 1;
            format!(",bootindex={}", bootindex - 1)
        } else {
            String::new()
        };
        let device = match (model_of(d, cdrom)?, cdrom) {
            (Model::Ahci, _) => {
                if ahci_port >= AHCI_PORTS {
                    return Err(bad(format!("at most {AHCI_PORTS} ahci/ide disks and cdroms fit on the controller")));
                }
                ahci_port += 1;
                let kind = if cdrom { "ide-cd" } else { "ide-hd" };
                format!("{kind},drive={id},bus=ide.{}{boot}", ahci_port - 1)
            }
            (Model::Virtio, _) => format!("virtio-blk-pci,drive={id}{boot}"),
            (Model::Nvme, _) => format!("nvme,drive={id},serial={}{boot}", disk_serial(def, i)),
            (Model::Scsi, _) => {
                if !scsi {
                    a.extend(["-device".into(), "virtio-scsi-pci,id=scsi0".into()]);
                    scsi = true;
                }
                let kind = if cdrom { "scsi-cd" } else { "scsi-hd" };
                format!("{kind},drive={id},bus=scsi0.0{boot}")
            }
        };
        a.extend(["-device".into(), device]);
    }
    Ok(())
}

enum Model {
    Virtio,
    Ahci,
    Nvme,
    Scsi,
}

fn model_of(d: &DiskDef, cdrom: bool) -> Result<Model, InvalidDefinition> {
    Ok(match d.model.as_str() {
        // A cdrom is an ATAPI device whatever the disk model says (bhyve's way).
        _ if cdrom && d.model != "scsi" => Model::Ahci,
        "virtio" => Model::Virtio,
        "ahci" | "ide" => Model::Ahci,
        "nvme" => Model::Nvme,
        "scsi" => Model::Scsi,
        other => return Err(bad(format!("disk model {other:?} is not virtio, ahci, ide, nvme or scsi"))),
    })
}

/// NVMe devices need a serial: the VM's uuid prefix and the disk's index (≤ 20 chars).
fn disk_serial(def: &Definition, i: usize) -> String {
    format!("{}-{i}", &def.uuid.simple().to_string()[..12])
}

fn nics(a: &mut Vec<String>, def: &Definition, nets: &[NetAttach]) -> Result<(), InvalidDefinition> {
    let bhyve = def.brand == "bhyve";
    if bhyve && def.nics.len() > 8 {
        return Err(bad("bhyve VMs have at most 8 NICs (PCI slot 6, functions 0-7)"));
    }
    // The primary NIC comes first (function 0 on bhyve), as vmadm orders them.
    let mut order: Vec<(usize, &NicDef)> = def.nics.iter().enumerate().collect();
    order.sort_by_key(|(i, n)| (!n.primary, *i));
    for (f, (i, n)) in order.into_iter().enumerate() {
        let id = format!("net{i}");
        let backend = match &nets[i] {
            NetAttach::Tap(ifname) => format!("tap,id={id},ifname={},script=no,downscript=no", esc(ifname)),
            NetAttach::Isolated => format!("user,id={id},restrict=on"),
        };
        a.extend(["-netdev".into(), backend]);
        let model = if bhyve {
            "virtio-net-pci"
        } else {
            match n.model.as_str() {
                "virtio" => "virtio-net-pci",
                "e1000" => "e1000",
                "rtl8139" => "rtl8139",
                other => return Err(bad(format!("NIC model {other:?} is not virtio, e1000 or rtl8139"))),
            }
        };
        let mac = nereid_types::mac::Mac::parse(&n.mac).map_err(|e| bad(format!("NIC MAC {e}")))?;
        let mut dev = format!("{model},netdev={id},mac={mac}");
        if n.mtu != 0 && n.mtu != 1500 && model == "virtio-net-pci" {
            dev.push_str(&format!(",host_mtu={}", n.mtu));
        }
        if bhyve {
            dev.push_str(&format!(",addr=0x6.0x{f:x}"));
            if f == 0 {
                dev.push_str(",multifunction=on");
            }
        }
        a.extend(["-device".into(), dev]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn host(accel: Accel) -> Host {
        Host { accel, ovmf_code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(), smbios_version: "7.20261125T000000Z".into() }
    }

    fn def(v: serde_json::Value) -> Definition {
        let mut base = json!({
            "uuid": "6f3d3f1c-8a51-4e43-9b8c-2f0f5d7c9a10", "brand": "bhyve",
            "owner_uuid": "930896af-bf8c-48d4-885c-6573a94b1853", "ram": 1024, "vcpus": 2,
            "disks": [], "nics": []
        });
        for (k, x) in v.as_object().unwrap() {
            base[k] = x.clone();
        }
        serde_json::from_value(base).unwrap()
    }

    fn nic(mac: &str, primary: bool, model: &str) -> serde_json::Value {
        json!({"mac": mac, "interface": "net0", "vlan_id": 0, "nic_tag": "external", "mtu": 1500, "primary": primary, "model": model})
    }

    /// Compares with `golden/<name>.args` (one argument per line); `UPDATE_GOLDEN=1` rewrites it.
    fn golden(name: &str, args: &[String]) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/backend/qemu/golden").join(format!("{name}.args"));
        let text = args.join("\n") + "\n";
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &text).unwrap();
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(want == text, "{} differs from the generated command line (UPDATE_GOLDEN=1 to accept):\n{text}", path.display());
    }

    #[test]
    fn bhyve_uefi_with_image_disk_data_disk_cdrom_and_two_nics() {
        let d = def(json!({
            "alias": "web,1", "bootrom": "uefi", "cpu_type": "host", "vcpus": 4, "ram": 2048,
            "disks": [
                {"image_uuid": "2f1dc1ec-8f29-4b33-9d4f-9a3e0c3e2f11", "image_size": 10240, "size": 20480, "boot": true, "model": "virtio"},
                {"size": 4096, "model": "nvme"},
                {"size": 0, "model": "ahci", "media": "cdrom", "path": "/var/lib/nereid/iso/debian-12.iso"}
            ],
            "nics": [nic("90:b8:d0:00:00:02", false, "virtio"), nic("90:b8:d0:00:00:01", true, "virtio")]
        }));
        let nets = [NetAttach::Isolated, NetAttach::Tap("nt6f3d3f1c0".into())];
        let a = command(&d, &host(Accel::Kvm), &Layout::new("/var/lib/nereid/qemu/6f3d3f1c-8a51-4e43-9b8c-2f0f5d7c9a10"), &nets).unwrap();
        golden("bhyve-uefi", &a);
        let smbios = &a[a.iter().position(|x| x == "-smbios").unwrap() + 1];
        assert!(smbios.contains("manufacturer=Joyent,product=SmartDC HVM,version=7.20261125T000000Z,serial=6f3d3f1c-"), "{smbios}");
        assert!(a.contains(&"guest=web,,1,debug-threads=on".to_string()), "commas in names are escaped");
        // Confined: the seccomp sandbox, no daemonising (the sandbox forbids its fork), the
        // VM's files named relative to its directory (QEMU starts there, as a user that
        // cannot reach the data directory), the cdrom as a descriptor the agent opened.
        assert_eq!(a[a.iter().position(|x| x == "-sandbox").unwrap() + 1], SANDBOX);
        assert!(!a.iter().any(|x| x == "-daemonize" || x == "-pidfile"), "{a:?}");
        assert!(!a.iter().any(|x| x.contains("/var/lib/nereid")), "no path into the data directory: {a:?}");
        assert!(a.windows(2).any(|w| w[0] == "-add-fd" && w[1] == "fd=3,set=3"), "{a:?}");
        assert!(a.iter().any(|x| x.starts_with("file=/dev/fdset/3,") && x.contains("media=cdrom,readonly=on")), "{a:?}");
        assert_eq!(cdrom_fds(&d), [(2, 3)]);
    }

    #[test]
    fn kvm_bios_with_ide_scsi_and_e1000_under_tcg() {
        let d = def(json!({
            "brand": "kvm", "cpu_type": "qemu64", "ram": 512, "vcpus": 1,
            "disks": [{"size": 10240, "boot": true, "model": "ide"}, {"size": 1024, "model": "scsi"}],
            "nics": [nic("90b8d0000003", true, "e1000")]
        }));
        let a = command(&d, &host(Accel::Tcg), &Layout::new("/srv/vms/x"), &[NetAttach::Isolated]).unwrap();
        golden("kvm-bios", &a);
    }

    #[test]
    fn minimal_uses_the_software_cpu_under_tcg() {
        let d = def(json!({"disks": [{"size": 1024, "boot": true, "model": "virtio"}]}));
        let a = command(&d, &host(Accel::Tcg), &Layout::new("/d"), &[]).unwrap();
        golden("minimal", &a);
        assert_eq!(a[a.iter().position(|x| x == "-cpu").unwrap() + 1], "max");
    }

    #[test]
    fn refuses_what_qemu_could_not_run() {
        let h = host(Accel::Tcg);
        let l = Layout::new("/d");
        let cases = [
            (json!({"brand": "joyent"}), "not a hardware VM brand"),
            (json!({"bootrom": "coreboot"}), "bootrom"),
            (
                json!({"disks": [{"size": 1, "boot": true, "model": "virtio"}, {"size": 1, "boot": true, "model": "virtio"}]}),
                "only one disk",
            ),
            (json!({"disks": [{"size": 0, "model": "ahci", "media": "cdrom"}]}), "cdrom without a path"),
            (json!({"disks": [{"size": 1, "model": "floppy"}]}), "disk model"),
            (json!({"disks": (0..7).map(|_| json!({"size": 1, "model": "ahci"})).collect::<Vec<_>>()}), "at most 6"),
            (
                json!({"disks": (0..8).map(|_| json!({"size": 0, "model": "scsi", "media": "cdrom", "path": "/i.iso"})).collect::<Vec<_>>()}),
                "at most 7 cdroms",
            ),
        ];
        for (v, why) in cases {
            let e = command(&def(v.clone()), &h, &l, &[]).unwrap_err();
            assert!(e.0.contains(why), "{v}: {e}");
        }
        let d = def(json!({"brand": "kvm", "nics": [nic("90:b8:d0:00:00:01", true, "ne2k")]}));
        assert!(command(&d, &h, &l, &[NetAttach::Isolated]).unwrap_err().0.contains("NIC model"));
        let d = def(json!({"nics": [nic("zz", true, "virtio")]}));
        assert!(command(&d, &h, &l, &[NetAttach::Isolated]).unwrap_err().0.contains("MAC"));
        assert!(command(&d, &h, &l, &[]).unwrap_err().0.contains("attachments"));
    }
}
