//! `nereid admin oneachnode` on a QEMU-backend agent (issue 17 item 4): the command runs on
//! the agent's own host (no guest is involved), answering its output and exit status with
//! the server's UUID and the host's name in its environment. Cheap: no VM is booted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{nereid_async, stderr, stdout};
use nereid_testkit::qemu::{Reaper, test_options};
use nereid_testkit::{Backend, Cloud, Options};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oneachnode_runs_on_the_qemu_agents_host() {
    let cloud = Cloud::start_with(Options::new(Backend::Sqlite)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent_dir = dir.path().join("agent");
    let _reaper = Reaper(agent_dir.clone());
    let _agent = cloud.start_qemu_agent(&agent_dir, test_options()).await.unwrap();
    let servers = cloud.wait_servers(1).await.unwrap();
    let uuid = servers[0]["uuid"].as_str().unwrap().to_string();
    let hostname = servers[0]["hostname"].as_str().unwrap().to_string();

    let o = nereid_async(&cloud, &["admin", "oneachnode", "-j", "echo \"$SERVER_UUID $HOSTNAME\"; uname -s"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<Value> = stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "{}", stdout(&o));
    assert_eq!(lines[0]["server_uuid"].as_str(), Some(uuid.as_str()));
    assert_eq!(lines[0]["stdout"], format!("{uuid} {hostname}\nLinux\n"));
    assert_eq!(lines[0]["exit_status"], 0);

    // A failing command's status comes back, and fails the run.
    let o = nereid_async(&cloud, &["admin", "oneachnode", "-n", &hostname, "echo bad >&2; exit 7"]).await;
    assert!(!o.status.success());
    assert_eq!(stdout(&o), format!("=== Output from {uuid} ({hostname}):\nbad\n=== exit status 7\n"));
    assert!(stderr(&o).contains("1 of 1 server(s) failed"), "{}", stderr(&o));
}
