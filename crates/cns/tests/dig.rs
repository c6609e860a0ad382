//! The CNS server as a resolver's user sees it: the real `dig` (Debian's bind9-dnsutils,
//! installed by scripts/test) queries a server on 127.0.0.1 serving a fixture cloud.
//!
//! Fixture: account `alice` (CNS on) with web1 and web2 (service `web:8080`), web3 (stopped),
//! web4 (`triton.cns.status=down`), hidden (`triton.cns.disable`), all in service `web`;
//! account `bob` (CNS off) with one VM. Public NICs 198.51.100.x, private 10.0.0.x.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::RData;
use nereid_cns::{Account, Config, Instance, Nic, ZoneSet, build, channel, publish, serve};
use serde_json::json;
use tokio::net::{TcpListener, UdpSocket};
use tokio::process::Command;
use tokio::sync::watch;
use uuid::Uuid;

const PUB: &str = "dc1.example.com";
const PRIV: &str = "dc1.cns.example.com";
const ALICE: Uuid = Uuid::from_u128(0xa11ce);
const BOB: Uuid = Uuid::from_u128(0xb0b);

fn vm(n: u8, alias: &str, owner: Uuid) -> Instance {
    let nic = |ip: [u8; 4], public: bool| Nic {
        ip: IpAddr::V4(ip.into()),
        network_uuid: Uuid::from_u128(u128::from(public)),
        network_name: if public { "external" } else { "internal" }.into(),
        public,
        owner_network: false,
    };
    Instance {
        uuid: Uuid::from_u128(0x1000 + u128::from(n)),
        alias: Some(alias.into()),
        owner_uuid: owner,
        running: true,
        server_up: true,
        tags: json!({"triton.cns.services": "web:8080"}).as_object().cloned().unwrap_or_default(),
        customer_metadata: serde_json::Map::new(),
        nics: vec![nic([198, 51, 100, n], true), nic([10, 0, 0, n], false)],
    }
}

fn fixture() -> (Vec<Account>, Vec<Instance>) {
    let accounts = vec![
        Account { uuid: ALICE, login: "alice".into(), cns_enabled: true },
        Account { uuid: BOB, login: "bob".into(), cns_enabled: false },
    ];
    let mut web3 = vm(3, "web3", ALICE);
    web3.running = false;
    let mut web4 = vm(4, "web4", ALICE);
    web4.tags.insert("triton.cns.status".into(), json!("down"));
    let mut hidden = vm(5, "hidden", ALICE);
    hidden.tags.insert("triton.cns.disable".into(), json!(true));
    let instances = vec![vm(1, "web1", ALICE), vm(2, "web2", ALICE), web3, web4, hidden, vm(6, "bobvm", BOB)];
    (accounts, instances)
}

/// A running CNS server with its fixture cloud.
struct Cloud {
    cfg: Config,
    accounts: Vec<Account>,
    instances: Vec<Instance>,
    tx: watch::Sender<Arc<ZoneSet>>,
    port: u16,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Cloud {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A UDP socket and a TCP listener on the same free port of 127.0.0.1.
async fn sockets() -> Result<(UdpSocket, TcpListener, u16)> {
    for _ in 0..50 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let port = udp.local_addr()?.port();
        if let Ok(tcp) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
            return Ok((udp, tcp, port));
        }
    }
    bail!("no free port for both UDP and TCP")
}

impl Cloud {
    async fn start(configure: impl FnOnce(&mut Config)) -> Result<Self> {
        let mut cfg = Config::new("dc1", "example.com", Uuid::from_u128(0xad));
        cfg.allow_transfer = vec!["127.0.0.1/32".parse()?];
        configure(&mut cfg);
        let (accounts, instances) = fixture();
        let (tx, rx) = channel();
        let (udp, tcp, port) = sockets().await?;
        let server = tokio::spawn(serve(Arc::new(cfg.clone()), udp, tcp, rx));
        let cloud = Self { cfg, accounts, instances, tx, port, server };
        cloud.publish();
        Ok(cloud)
    }

    fn publish(&self) -> Vec<String> {
        publish(&self.tx, build(&self.cfg, &self.accounts, &self.instances))
    }

    fn vm_mut(&mut self, alias: &str) -> &mut Instance {
        self.instances.iter_mut().find(|i| i.alias.as_deref() == Some(alias)).unwrap_or_else(|| panic!("no VM {alias}"))
    }

    /// `dig @127.0.0.1 -p PORT +norec … args`, its standard output.
    async fn dig(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("dig")
            .args(["@127.0.0.1", "-p", &self.port.to_string(), "+norec", "+time=2", "+tries=1"])
            .args(args)
            .output()
            .await
            .context("running dig (Debian package bind9-dnsutils; scripts/test installs it)")?;
        Ok(String::from_utf8(out.stdout)?)
    }

    /// `dig +short`, lines sorted.
    async fn short(&self, args: &[&str]) -> Result<Vec<String>> {
        let mut a = vec!["+short"];
        a.extend_from_slice(args);
        let mut lines: Vec<String> = self.dig(&a).await?.lines().map(str::to_string).collect();
        lines.sort();
        Ok(lines)
    }

    /// The zone's serial as `dig SOA` shows it.
    async fn serial(&self, zone: &str) -> Result<u32> {
        let soa = self.short(&["SOA", zone]).await?;
        let line = soa.first().context("no SOA")?;
        Ok(line.split_whitespace().nth(2).context("SOA without serial")?.parse()?)
    }
}

fn inst(alias_or_uuid: &str, zone: &str) -> String {
    format!("{alias_or_uuid}.inst.{ALICE}.{zone}")
}
fn uuid_of(n: u8) -> String {
    Uuid::from_u128(0x1000 + u128::from(n)).to_string()
}
fn web(zone: &str) -> String {
    format!("web.svc.{ALICE}.{zone}")
}
/// `status: NOERROR` etc. from dig's header.
fn status(out: &str) -> &str {
    out.split("status: ").nth(1).and_then(|s| s.split(',').next()).unwrap_or("")
}
/// The header flags (`qr aa`).
fn flags(out: &str) -> &str {
    out.split(";; flags: ").nth(1).and_then(|s| s.split(';').next()).unwrap_or("")
}
/// Record lines of dig's output: `[name, ttl, class, type, rdata…]`.
fn records(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

#[tokio::test]
async fn instance_resolves_by_alias_and_uuid_each_zone_its_own_addresses() -> Result<()> {
    let cloud = Cloud::start(|_| {}).await?;
    assert_eq!(cloud.short(&["A", &inst("web1", PUB)]).await?, ["198.51.100.1"]);
    assert_eq!(cloud.short(&["A", &inst(&uuid_of(1), PUB)]).await?, ["198.51.100.1"]);
    assert_eq!(cloud.short(&["A", &inst("web1", PRIV)]).await?, ["10.0.0.1"]);
    assert_eq!(cloud.short(&["A", &inst(&uuid_of(1), PRIV)]).await?, ["10.0.0.1"]);
    // Names are case-insensitive; TXT is the VM uuid; the answer is authoritative.
    assert_eq!(cloud.short(&["TXT", &inst("WEB1", PUB).to_uppercase()]).await?, [format!("\"{}\"", uuid_of(1))]);
    let full = cloud.dig(&["A", &inst("web1", PUB)]).await?;
    assert_eq!(status(&full), "NOERROR");
    assert!(flags(&full).split(' ').any(|f| f == "aa"), "{full}");
    // The stopped and the down VMs keep their instance names.
    assert_eq!(cloud.short(&["A", &inst("web3", PUB)]).await?, ["198.51.100.3"]);
    assert_eq!(cloud.short(&["A", &inst("web4", PUB)]).await?, ["198.51.100.4"]);
    // Disabled by tag, and an account with CNS off: no names.
    let hidden = cloud.dig(&["A", &inst("hidden", PUB)]).await?;
    assert_eq!(status(&hidden), "NXDOMAIN");
    let bob = cloud.dig(&["A", &format!("bobvm.inst.{BOB}.{PUB}")]).await?;
    assert_eq!(status(&bob), "NXDOMAIN");
    Ok(())
}

#[tokio::test]
async fn service_lists_only_up_instances_with_srv_ports() -> Result<()> {
    let cloud = Cloud::start(|_| {}).await?;
    assert_eq!(cloud.short(&["A", &web(PUB)]).await?, ["198.51.100.1", "198.51.100.2"]);
    assert_eq!(cloud.short(&["A", &web(PRIV)]).await?, ["10.0.0.1", "10.0.0.2"]);
    assert_eq!(
        cloud.short(&["SRV", &web(PUB)]).await?,
        [format!("0 10 8080 {}.", inst("web1", PUB)), format!("0 10 8080 {}.", inst("web2", PUB)),]
    );
    // The SRV answer brings the targets' addresses along.
    let srv = cloud.dig(&["SRV", &web(PUB)]).await?;
    assert!(srv.contains(";; ADDITIONAL SECTION:"), "{srv}");
    assert!(srv.contains("198.51.100.2"), "{srv}");
    Ok(())
}

#[tokio::test]
async fn stopping_an_instance_takes_it_out_of_its_service_and_grows_the_serial() -> Result<()> {
    let mut cloud = Cloud::start(|_| {}).await?;
    let before = cloud.serial(PUB).await?;
    let private_before = cloud.serial(PRIV).await?;
    assert_eq!(cloud.short(&["A", &web(PUB)]).await?.len(), 2);

    cloud.vm_mut("web2").running = false;
    assert_eq!(cloud.publish(), [PRIV, PUB]);
    assert_eq!(cloud.short(&["A", &web(PUB)]).await?, ["198.51.100.1"]);
    assert_eq!(cloud.short(&["SRV", &web(PUB)]).await?.len(), 1);
    assert_eq!(cloud.short(&["A", &inst("web2", PUB)]).await?, ["198.51.100.2"]);
    let after = cloud.serial(PUB).await?;
    assert!(after > before, "{after} > {before}");
    assert!(cloud.serial(PRIV).await? > private_before);

    // Publishing the same cloud again changes nothing.
    assert!(cloud.publish().is_empty());
    assert_eq!(cloud.serial(PUB).await?, after);
    Ok(())
}

#[tokio::test]
async fn axfr_gives_the_whole_zone_and_ixfr_the_diff() -> Result<()> {
    let mut cloud = Cloud::start(|_| {}).await?;
    let old = cloud.serial(PUB).await?;
    let axfr = records(&cloud.dig(&["AXFR", PUB]).await?);
    let zone = &build(&cloud.cfg, &cloud.accounts, &cloud.instances)[PUB];
    assert_eq!(axfr.len(), zone.len() + 3, "SOA, NS, records, SOA");
    assert_eq!((axfr[0][3].as_str(), axfr[axfr.len() - 1][3].as_str()), ("SOA", "SOA"));
    assert!(axfr.iter().any(|r| r[3] == "NS"));
    let a_web = |r: &Vec<String>, ip: &str| r[0] == format!("{}.", web(PUB)) && r[3] == "A" && r[4] == ip;
    assert!(axfr.iter().any(|r| a_web(r, "198.51.100.2")));
    assert!(!axfr.iter().any(|r| r[0].contains("hidden") || r[0].contains(&BOB.to_string())));

    cloud.vm_mut("web2").running = false;
    cloud.publish();
    let new = cloud.serial(PUB).await?;
    let ixfr = records(&cloud.dig(&[&format!("IXFR={old}"), PUB]).await?);
    let soas: Vec<u32> = ixfr.iter().filter(|r| r[3] == "SOA").map(|r| r[6].parse()).collect::<Result<_, _>>()?;
    assert_eq!(soas, [new, old, new, new], "{ixfr:?}");
    // The diff: web2 left the service (its A, TXT and SRV there), nothing was added.
    let removed: Vec<_> = ixfr.iter().filter(|r| r[3] != "SOA").collect();
    assert_eq!(removed.len(), 3, "{ixfr:?}");
    assert!(removed.iter().all(|r| r[0] == format!("{}.", web(PUB))));
    assert!(removed.iter().any(|r| a_web(r, "198.51.100.2")));

    // A client already at the current serial gets one SOA.
    let current = records(&cloud.dig(&[&format!("IXFR={new}"), PUB]).await?);
    assert_eq!(current.len(), 1);
    Ok(())
}

#[tokio::test]
async fn transfers_are_refused_outside_allow_transfer() -> Result<()> {
    let elsewhere = "10.0.0.0/8".parse()?;
    let cloud = Cloud::start(|cfg| cfg.allow_transfer = vec![elsewhere]).await?;
    for query in ["AXFR", "IXFR=1"] {
        let out = cloud.dig(&["+comments", query, PUB]).await?;
        assert_eq!(status(&out), "REFUSED", "{out}");
        assert!(out.contains("Transfer failed"), "{out}");
        assert!(records(&out).is_empty(), "{out}");
    }
    // Ordinary queries still work.
    assert_eq!(cloud.short(&["A", &inst("web1", PUB)]).await?, ["198.51.100.1"]);
    Ok(())
}

#[tokio::test]
async fn negative_answers_and_names_outside_the_zones() -> Result<()> {
    let cloud = Cloud::start(|_| {}).await?;
    // Outside the zones: SERVFAIL, as Triton CNS answers, not authoritative.
    let outside = cloud.dig(&["A", "www.example.org"]).await?;
    assert_eq!(status(&outside), "SERVFAIL");
    assert!(!flags(&outside).contains("aa"));
    // A missing name: NXDOMAIN with the SOA in authority.
    let nx = cloud.dig(&["A", &inst("nope", PUB)]).await?;
    assert_eq!(status(&nx), "NXDOMAIN");
    assert!(nx.contains(";; AUTHORITY SECTION:") && nx.contains("SOA"), "{nx}");
    // A name without that type, and an empty non-terminal: NODATA.
    for name in [inst("web1", PUB), format!("inst.{ALICE}.{PUB}")] {
        let nodata = cloud.dig(&["AAAA", &name]).await?;
        assert_eq!(status(&nodata), "NOERROR", "{nodata}");
        assert!(nodata.contains("ANSWER: 0,") && nodata.contains("SOA"), "{nodata}");
    }
    // The apex has SOA and NS.
    assert_eq!(cloud.short(&["NS", PUB]).await?, [format!("{}.", cloud.cfg.my_name)]);
    Ok(())
}

#[tokio::test]
async fn big_answers_are_truncated_over_udp_and_complete_over_tcp() -> Result<()> {
    let mut cloud = Cloud::start(|_| {}).await?;
    let template = cloud.instances[0].clone();
    for n in 10..70u8 {
        let mut i = template.clone();
        i.uuid = Uuid::from_u128(0x2000 + u128::from(n));
        i.alias = Some(format!("many{n}"));
        i.nics.truncate(1);
        i.nics[0].ip = IpAddr::V4([198, 51, 100, n].into());
        cloud.instances.push(i);
    }
    cloud.publish();
    let udp = cloud.dig(&["+ignore", "+noedns", "A", &web(PUB)]).await?;
    assert!(flags(&udp).split(' ').any(|f| f == "tc"), "{udp}");
    // dig retries over TCP by itself and gets every address.
    assert_eq!(cloud.short(&["A", &web(PUB)]).await?.len(), 62);
    Ok(())
}

#[tokio::test]
async fn a_bad_packet_does_not_stop_the_server() -> Result<()> {
    let cloud = Cloud::start(|_| {}).await?;
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let mut junk = vec![0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    junk.extend([0x3f; 9]);
    sock.send_to(&junk, (Ipv4Addr::LOCALHOST, cloud.port)).await?;
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf)).await??;
    let reply = Message::from_vec(&buf[..n])?;
    assert_eq!(reply.metadata.id, 0xbeef);
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(cloud.short(&["A", &inst("web1", PUB)]).await?, ["198.51.100.1"]);
    Ok(())
}

#[tokio::test]
async fn notify_reaches_the_peer_when_the_serial_changes() -> Result<()> {
    // A peer that never answers comes first: it must not hold up the other one.
    let dead = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let dead_addr: SocketAddr = dead.local_addr()?;
    let peer = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let peer_addr: SocketAddr = peer.local_addr()?;
    let mut cloud = Cloud::start(|cfg| cfg.notify_peers = vec![dead_addr, peer_addr]).await?;
    cloud.vm_mut("web1").running = false;
    cloud.publish();
    let serial = cloud.serial(PUB).await?;
    // NOTIFYs for the first publication may come first; wait for the one with the new serial.
    let mut buf = [0u8; 2048];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (n, from) = tokio::time::timeout_at(deadline, peer.recv_from(&mut buf)).await.context("no NOTIFY with the new serial")??;
        let m = Message::from_vec(&buf[..n])?;
        assert_eq!(m.metadata.op_code, OpCode::Notify);
        assert_eq!(m.metadata.message_type, MessageType::Query);
        // Acknowledge, as a secondary does.
        let mut ack = Message::response(m.metadata.id, OpCode::Notify);
        ack.add_queries(m.queries.iter().cloned());
        peer.send_to(&ack.to_vec()?, from).await?;
        let zone = m.queries[0].name.to_ascii();
        let got = m.answers.iter().find_map(|r| match &r.data {
            RData::SOA(soa) => Some(soa.serial),
            _ => None,
        });
        if zone == format!("{PUB}.") && got == Some(serial) {
            return Ok(());
        }
    }
}
