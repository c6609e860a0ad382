//! The quick start's promise: after `scripts/up`, every command `nereid up` prints runs as
//! printed, in a new shell, from any directory. `install_nereid` (scripts/lib.sh, what
//! scripts/up runs after building) puts `nereid` on the PATH; the banner's commands are then
//! run one by one with `sh -c` and nothing but that PATH and HOME. The sim backend prints the
//! same `nereid admin --data-dir …` lines as the qemu one, without booting a guest.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

const NEREID: &str = env!("CARGO_BIN_EXE_nereid");
const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINmbMQOa2C1YnOv3rGEb92B+wDGNYIj/Yf6NIZdUQ9wO banner-test";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A new user's shell: only PATH and HOME, in a directory of its own.
fn shell(cmd: &str, path: &str, home: &Path, cwd: &Path) -> Output {
    Command::new("/bin/sh").arg("-c").arg(cmd).env_clear().env("PATH", path).env("HOME", home).current_dir(cwd).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// `nereid up` (sim backend) with `path` and data in `home`/`data`; its banner, up to the
/// "Ctrl-C" line.
fn up(path: &str, home: &Path, program: &Path, data: &str) -> (Child, String) {
    let data = home.join(data);
    let mut child = Command::new(program)
        .args(["up", "--backend", "sim", "--data-dir", data.to_str().unwrap(), "--admin-listen", "127.0.0.1:0"])
        .args(["--cloudapi-listen", "127.0.0.1:0", "--sim-servers", "1", "--sim-create-ms", "20"])
        .env_clear()
        .env("PATH", path)
        .env("HOME", home)
        .current_dir(home)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        banner.push_str(&line);
        banner.push('\n');
        if line.contains("Ctrl-C") {
            break;
        }
    }
    assert!(banner.contains("Ctrl-C"), "nereid up did not start:\n{banner}");
    (child, banner)
}

/// Every `nereid admin …` / `nereid image …` command in the banner, whether it starts a line,
/// follows a colon or sits in backticks; a trailing `  (comment)` is not part of it.
fn commands(banner: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in banner.lines() {
        let mut rest = line;
        while let Some(i) = ["nereid admin ", "nereid image "].iter().filter_map(|p| rest.find(p)).min() {
            let cmd = &rest[i..];
            let end = [cmd.find('`'), cmd.find("  (")].into_iter().flatten().min().unwrap_or(cmd.len());
            out.push(cmd[..end].trim().to_string());
            rest = &cmd[end..];
        }
    }
    out
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn after_scripts_up_installs_nereid_the_banner_commands_run_as_printed() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let bin = home.join(".local/bin");
    std::fs::create_dir_all(&bin).unwrap();
    // A login shell's PATH with ~/.local/bin on it (Debian's ~/.profile adds it when it exists).
    let path = format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display());
    let install = Command::new("bash")
        .arg("-c")
        .arg(r#". scripts/lib.sh && install_nereid "$0""#)
        .arg(NEREID)
        .env_clear()
        .env("PATH", &path)
        .env("HOME", home)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(install.status.success(), "install_nereid: {}", text(&install));
    assert!(text(&install).contains(&format!("installed nereid as {}/nereid", bin.display())), "{}", text(&install));
    assert!(!text(&install).contains("warning"), "{}", text(&install));
    assert_eq!(std::fs::canonicalize(bin.join("nereid")).unwrap(), std::fs::canonicalize(NEREID).unwrap());
    // Idempotent: a second run changes nothing and says the same.
    let again = Command::new("bash")
        .arg("-c")
        .arg(r#". scripts/lib.sh && install_nereid "$0""#)
        .arg(NEREID)
        .env_clear()
        .env("PATH", &path)
        .env("HOME", home)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(again.status.success() && text(&again) == text(&install), "{}", text(&again));

    // scripts/up runs the binary it built (target/release/nereid), with the caller's PATH.
    // A data directory whose name a shell would split: the commands quote it.
    let (child, banner) = up(&path, home, Path::new(NEREID), "my cloud");
    let _up = Killed(child);
    assert!(!banner.contains("which a shell does not find"), "{banner}");
    let cmds = commands(&banner);
    let create = cmds.iter().find(|c| c.contains(" vm create ")).unwrap_or_else(|| panic!("no vm create in:\n{banner}"));
    assert!(cmds.iter().any(|c| c.ends_with(" vm list")), "{banner}");
    assert!(cmds.iter().any(|c| c.contains(" account key add ")), "{banner}");
    assert!(banner.contains("web console   https://127.0.0.1:"), "the banner names the web console's URL:\n{banner}");
    assert!(cmds.iter().any(|c| c.ends_with(" account passwd admin")), "{banner}");
    assert!(cmds.iter().all(|c| c.contains(" --data-dir ")), "a command that only runs from one directory: {cmds:?}");

    // A new shell, in another directory.
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    std::fs::write(home.join(".ssh/id_ed25519.pub"), format!("{KEY}\n")).unwrap();
    let out = shell(create, &path, home, elsewhere.path());
    assert!(out.status.success() && text(&out).contains("(provision) succeeded"), "{create}\n{}", text(&out));
    let vm = String::from_utf8_lossy(&out.stdout).split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(vm.len(), 36, "{}", text(&out));
    let mut ran = 1;
    for cmd in cmds.iter().filter(|c| *c != create) {
        let cmd = cmd.replace("<vm uuid>", &vm).replace("<uuid>", &vm);
        // The console is interactive: ask for its help instead of attaching.
        let cmd = if cmd.contains(" vm console ") { format!("{cmd} --help") } else { cmd };
        // A password from stdin (no terminal here), as a script would give it.
        let cmd = if cmd.contains(" account passwd ") { format!("echo 'banner password 1' | {cmd}") } else { cmd };
        let out = shell(&cmd, &path, home, elsewhere.path());
        assert!(out.status.success(), "{cmd}\n{}", text(&out));
        ran += 1;
    }
    assert!(ran >= 3, "{cmds:?}");
    let keys = shell("nereid admin --data-dir \"$HOME/my cloud\" account key list admin", &path, home, elsewhere.path());
    assert!(text(&keys).contains("banner-test") || text(&keys).contains("SHA256:"), "{}", text(&keys));
}

/// Started without `nereid` on the PATH (straight from target/), the banner says so and
/// names the binary instead of leaving its commands to fail with "command not found".
#[test]
fn without_nereid_on_the_path_the_banner_says_where_it_is() {
    let home = tempfile::tempdir().unwrap();
    let (child, banner) = up("/usr/bin:/bin", home.path(), Path::new(NEREID), "nereid-data");
    let _up = Killed(child);
    let exe = std::fs::canonicalize(NEREID).unwrap();
    assert!(banner.contains(&format!("`nereid` above is {}, which a shell does not find on this PATH", exe.display())), "{banner}");
    // The commands are still there to be run with that path.
    let cmds = commands(&banner);
    let list = cmds.iter().find(|c| c.ends_with(" vm list")).unwrap();
    let out = shell(&list.replacen("nereid", exe.to_str().unwrap(), 1), "/usr/bin:/bin", home.path(), home.path());
    assert!(out.status.success(), "{}", text(&out));
}
