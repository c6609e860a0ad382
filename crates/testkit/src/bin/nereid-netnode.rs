//! A compute node's networking without the rest of the agent, for tests: run inside a
//! network namespace (`ip netns exec NODE nereid-netnode --nic-tag … --underlay TAG`),
//! it keeps one `nereid_agent::net::Net` and applies the JSON commands it reads, one per
//! line on stdin, answering each with one line on stdout:
//!
//! ```text
//!   {"attach": <Definition>}          → {"ok": null} | {"err": "…"}
//!   {"detach": [<vm uuid>, <nics>]}   → {"ok": null}
//!   {"policy": <NetPolicy>}           → {"ok": null} | {"err": "…"}
//!   {"adopt": [<Definition>…]}        → {"ok": null}   (the running VMs, at "agent start")
//!   {"gateways": null}                → {"ok": [<this node's gateway namespaces>]}
//!   {"mtus": {<tag>: <mtu>}}          → {"ok": [<problems>]}
//!   {"own_namespace": null}           → {"ok": <whether the agent would see a namespace of its own>}
//! ```
//! (The agent's net code reads `/sys/class/net`, which only a process started by `ip
//! netns exec` sees for its namespace — hence a process, not a thread.)

use std::io::{BufRead, Write};

use nereid_agent::net::{Net, fabric_gw, parse_nic_tag};
use serde_json::{Value, json};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut tags = Vec::new();
    let mut underlay = nereid_types::fabric::DEFAULT_UNDERLAY_TAG.to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match (a.as_str(), it.next()) {
            ("--nic-tag", Some(v)) => match parse_nic_tag(v) {
                Ok(t) => tags.push(t),
                Err(e) => fail(&e),
            },
            ("--underlay", Some(v)) => underlay = v.clone(),
            _ => fail(&format!("usage: nereid-netnode [--nic-tag TAG=IFACE]… [--underlay TAG] (got {a:?})")),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap_or_else(|e| fail(&e.to_string()));
    let net = Net::new(tags).with_underlay_tag(&underlay);
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let reply = match serde_json::from_str::<Value>(&line) {
            Ok(cmd) => rt.block_on(run(&net, cmd)),
            Err(e) => Err(format!("not JSON: {e}")),
        };
        let text = match reply {
            Ok(v) => json!({ "ok": v }),
            Err(e) => json!({ "err": e }),
        };
        if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
            break;
        }
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("nereid-netnode: {msg}");
    std::process::exit(2)
}

async fn run(net: &Net, cmd: Value) -> Result<Value, String> {
    let Some((verb, arg)) = cmd.as_object().and_then(|o| o.iter().next()) else { return Err("expected {verb: argument}".into()) };
    let parse = |what: &str| format!("{verb}: bad {what}");
    match verb.as_str() {
        "attach" => {
            let def = serde_json::from_value(arg.clone()).map_err(|e| format!("{}: {e}", parse("definition")))?;
            net.attach(&def).await.map(|_| Value::Null)
        }
        "detach" => {
            let (vm, nics): (uuid::Uuid, usize) =
                serde_json::from_value(arg.clone()).map_err(|e| format!("{}: {e}", parse("[vm, nics]")))?;
            net.detach(vm, nics).await;
            Ok(Value::Null)
        }
        "policy" => {
            let p = serde_json::from_value(arg.clone()).map_err(|e| format!("{}: {e}", parse("policy")))?;
            net.apply_policy(&p).await.map(|()| Value::Null)
        }
        "adopt" => {
            let defs: Vec<nereid_types::agent::Definition> =
                serde_json::from_value(arg.clone()).map_err(|e| format!("{}: {e}", parse("definitions")))?;
            net.adopt(&defs).await;
            Ok(Value::Null)
        }
        "gateways" => Ok(json!(fabric_gw::present(&fabric_gw::node_suffix()).into_values().collect::<Vec<_>>())),
        "mtus" => {
            let w = serde_json::from_value(arg.clone()).map_err(|e| format!("{}: {e}", parse("MTUs")))?;
            Ok(json!(net.check_mtus(&w).await))
        }
        "own_namespace" => Ok(json!(nereid_agent::identity::in_own_network_namespace())),
        other => Err(format!("unknown command {other:?}")),
    }
}
