//! A VM's NICs after it exists: VMAPI's `add_nics`, `update_nics` and `remove_nics`
//! actions, checked here and carried out by the jobs of the same names
//! (`jobs/nics.rs`), and CloudAPI's AddNic, which makes the NAPI NIC at once (so
//! `GET …/nics/:mac` answers `provisioning` from the first second, as Triton's does) and
//! hands it to an `add_nics` job that owns it: a failed job deletes it again.
//!
//! What the jobs keep true once they end: NAPI's NICs of a VM and the VM record's `nics`
//! name the same MACs; exactly one of them is primary (CloudAPI's `primaryIp` and `ips`
//! follow it); a NIC taken off a VM is deleted in NAPI, which frees its address.

use nereid_types::job::Job;
use nereid_types::mac::Mac;
use nereid_types::nic::Nic;
use nereid_types::spec::{self, Mode};
use nereid_types::vm::{self, Vm};
use nereid_types::{ApiError, FieldError};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use nereid_store::{Filter, ListQuery};

use super::App;
use crate::buckets::NICS;
use crate::jobs::new_job;

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::validation_409(vec![FieldError::invalid(field, message)])
}

/// Whether two MAC texts name the same address (any separators, any case).
pub fn same_mac(a: &str, b: &str) -> bool {
    matches!((Mac::parse(a), Mac::parse(b)), (Ok(x), Ok(y)) if x == y)
}

/// A MAC in NAPI's form (`90:b8:d0:…`), or the text as given when it does not parse.
pub fn canonical_mac(s: &str) -> String {
    Mac::parse(s).map(|m| m.to_string()).unwrap_or_else(|_| s.to_string())
}

/// What AddNic did.
pub enum AddedNic {
    /// A new NIC (state `provisioning`) and the job that puts it on the VM.
    Added(Box<Nic>, Box<Job>),
    /// The VM already has a NIC on that network (CloudAPI answers 302 to it).
    Exists(Box<Nic>),
}

impl App {
    /// The VM's NICs in NAPI: those the record lists, in its order, then any others NAPI
    /// says belong to the VM (being added).
    pub async fn vm_nics(&self, vm: &Vm) -> Result<Vec<Nic>, ApiError> {
        let filter = Filter::and(vec![Filter::eq("belongs_to_uuid", vm.uuid.to_string()), Filter::eq("belongs_to_type", "zone")]);
        let mut all: Vec<Nic> = self.list(NICS.name, &ListQuery::filter(filter)).await?;
        let order: Vec<String> = vm.nics.iter().flatten().map(|d| d.mac.clone()).collect();
        all.sort_by_key(|n| order.iter().position(|m| same_mac(m, &n.mac)).unwrap_or(usize::MAX));
        Ok(all)
    }

    /// The VM a NIC action acts on, and its server: a hardware VM that has finished provisioning.
    async fn nic_action_vm(&self, uuid: Uuid) -> Result<(Vm, Uuid), ApiError> {
        let (vm, _) = self.get_vm(uuid, None).await?;
        let server = Self::check_actionable(&vm)?;
        Ok((vm, server))
    }

    /// Checks that the VM's server has one of each group of nic tags the new NICs need.
    async fn check_server_tags(&self, server: Uuid, groups: &[(String, Vec<String>)]) -> Result<(), ApiError> {
        let (s, _) = self.get_server_record(server).await?;
        let have = nereid_types::sysinfo::nic_tags(&s.sysinfo);
        for (field, group) in groups {
            if !group.iter().any(|t| have.contains(t)) {
                // Tenants see this message too: it names no server.
                return Err(invalid(
                    field,
                    format!("the VM's server does not support that network (it has no nic tag {})", group.join(" or ")),
                ));
            }
        }
        Ok(())
    }

    /// The NIC model new NICs of this VM get: that of its NICs, else virtio.
    fn nic_model(vm: &Vm) -> String {
        vm.nics.iter().flatten().next().map(|d| d.model.clone()).unwrap_or_else(|| "virtio".into())
    }

    /// `?action=add_nics`: NICs on `networks` (made by the job) or existing NAPI NICs
    /// made for this VM (`macs`). A running VM is stopped and started again.
    pub async fn add_nics(&self, uuid: Uuid, input: &Map<String, Value>) -> Result<Job, ApiError> {
        let errors = spec::check(vm::ADD_NICS_FIELDS, input, Mode::Update, &[]);
        if !errors.is_empty() {
            return Err(ApiError::validation_409(errors));
        }
        let (vm, server) = self.nic_action_vm(uuid).await?;
        let owner = vm.owner_uuid.unwrap_or_default();
        let mut params = Map::new();
        match (input.get("networks"), input.get("macs")) {
            (Some(raw), None) => {
                let (mut nets, tags) = self.resolve_networks(owner, raw).await?;
                // CreateVm makes the first network primary when none says so; here the
                // VM keeps its primary unless a new one asks.
                let asked = raw.as_array().into_iter().flatten().any(|n| n.get("primary").and_then(Value::as_bool) == Some(true));
                if !asked {
                    for n in &mut nets {
                        n.primary = false;
                    }
                }
                let groups: Vec<(String, Vec<String>)> = tags.into_iter().enumerate().map(|(i, t)| (format!("networks[{i}]"), t)).collect();
                self.check_server_tags(server, &groups).await?;
                params.insert("networks".into(), json!(nets));
            }
            (None, Some(raw)) => {
                let mut macs = Vec::new();
                for (i, m) in raw.as_array().into_iter().flatten().enumerate() {
                    let text = m.as_str().unwrap_or_default();
                    let field = format!("macs[{i}]");
                    let nic = match self.get_nic(text).await {
                        Ok((n, _)) => n,
                        Err(e) if e.status == 404 => return Err(invalid(&field, format!("NIC {text} does not exist in NAPI"))),
                        Err(e) => return Err(e),
                    };
                    if nic.owner_uuid != owner {
                        return Err(invalid(
                            &field,
                            format!("NIC {} is owned by {}, not by the VM's owner {owner}", nic.mac, nic.owner_uuid),
                        ));
                    }
                    if nic.belongs_to_uuid != uuid || nic.belongs_to_type != "zone" {
                        return Err(invalid(
                            &field,
                            format!("NIC {} belongs to {} {}, not to VM {uuid}", nic.mac, nic.belongs_to_type, nic.belongs_to_uuid),
                        ));
                    }
                    if vm.nics.iter().flatten().any(|d| same_mac(&d.mac, &nic.mac)) {
                        return Err(invalid(&field, format!("VM {uuid} already has NIC {}", nic.mac)));
                    }
                    let tag = nic.nic_tag.clone().unwrap_or_default();
                    self.check_server_tags(server, &[(field, vec![tag])]).await?;
                    macs.push(nic.mac);
                }
                params.insert("macs".into(), json!(macs));
            }
            _ => {
                return Err(ApiError::validation_409(vec![
                    FieldError::missing("networks"),
                    FieldError::invalid("macs", "give either networks or macs (not both)"),
                ]));
            }
        }
        params.insert("nic_model".into(), json!(Self::nic_model(&vm)));
        params.insert("restart".into(), json!(true));
        self.queue(new_job("add_nics", uuid, Some(server), vm.owner_uuid, params), Vec::new()).await
    }

    /// `?action=update_nics`: a new primary (restarts a running VM) or spoofing flags (live).
    pub async fn update_nics(&self, uuid: Uuid, input: &Map<String, Value>) -> Result<Job, ApiError> {
        let errors = spec::check(vm::UPDATE_NICS_FIELDS, input, Mode::Create, &[]);
        if !errors.is_empty() {
            return Err(ApiError::validation_409(errors));
        }
        let (vm, server) = self.nic_action_vm(uuid).await?;
        let mut changes = Vec::new();
        let mut restart = false;
        for (i, c) in input.get("nics").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let Some(o) = c.as_object() else { continue };
            let mac = o.get("mac").and_then(Value::as_str).unwrap_or_default();
            let Some(def) = vm.nics.iter().flatten().find(|d| same_mac(&d.mac, mac)) else {
                return Err(invalid(&format!("nics[{i}].mac"), format!("VM {uuid} has no NIC {mac}")));
            };
            if o.get("primary").and_then(Value::as_bool) == Some(true) && !def.primary {
                // The guest's default route and first NIC change: the VM restarts.
                restart = true;
            }
            let mut change: Map<String, Value> = o.iter().filter(|(k, _)| *k != "interface").map(|(k, v)| (k.clone(), v.clone())).collect();
            change.insert("mac".into(), json!(def.mac));
            changes.push(Value::Object(change));
        }
        let mut params = Map::new();
        params.insert("nics".into(), Value::Array(changes));
        params.insert("restart".into(), json!(restart));
        self.queue(new_job("update_nics", uuid, Some(server), vm.owner_uuid, params), Vec::new()).await
    }

    /// `?action=remove_nics`: takes NICs off the VM (a running VM is stopped and started
    /// again) and deletes them in NAPI, freeing their addresses.
    pub async fn remove_nics(&self, uuid: Uuid, input: &Map<String, Value>) -> Result<Job, ApiError> {
        let errors = spec::check(vm::REMOVE_NICS_FIELDS, input, Mode::Create, &[]);
        if !errors.is_empty() {
            return Err(ApiError::validation_409(errors));
        }
        let (vm, server) = self.nic_action_vm(uuid).await?;
        let mut macs = Vec::new();
        for (i, m) in input.get("macs").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let text = m.as_str().unwrap_or_default();
            let Some(def) = vm.nics.iter().flatten().find(|d| same_mac(&d.mac, text)) else {
                return Err(invalid(&format!("macs[{i}]"), format!("VM {uuid} has no NIC {text}")));
            };
            macs.push(def.mac.clone());
        }
        let left = vm.nics.iter().flatten().filter(|d| !macs.contains(&d.mac)).count();
        if left == 0 {
            return Err(invalid("macs", format!("would leave VM {uuid} without a NIC: a VM keeps at least one (delete the VM instead)")));
        }
        let mut params = Map::new();
        params.insert("macs".into(), json!(macs));
        params.insert("restart".into(), json!(true));
        self.queue(new_job("remove_nics", uuid, Some(server), vm.owner_uuid, params), Vec::new()).await
    }

    /// CloudAPI's AddNic: a NIC on `network` (a network or pool the caller has checked
    /// the owner may use), made in NAPI now with state `provisioning`, and an `add_nics`
    /// job that owns it. A VM that already has a NIC on that network gets that one back.
    pub async fn add_nic_now(&self, uuid: Uuid, network: Uuid, ip: Option<&str>, primary: bool) -> Result<AddedNic, ApiError> {
        let (vm, server) = self.nic_action_vm(uuid).await?;
        let owner = vm.owner_uuid.unwrap_or_default();
        let mut entry = json!({"uuid": network});
        if let Some(ip) = ip {
            entry["ip"] = json!(ip);
        }
        let (nets, tags) = self.resolve_networks(owner, &json!([entry])).await?;
        if let Some(existing) = self.vm_nics(&vm).await?.into_iter().find(|n| n.network_uuid == Some(network)) {
            return Ok(AddedNic::Exists(Box::new(existing)));
        }
        let groups: Vec<(String, Vec<String>)> = tags.into_iter().map(|t| ("network".to_string(), t)).collect();
        self.check_server_tags(server, &groups).await?;
        let target = nets.first().map(|n| n.target).unwrap_or(network);
        let mut body = json!({"owner_uuid": owner, "belongs_to_uuid": uuid, "belongs_to_type": "zone", "cn_uuid": server,
            "state": "provisioning", "primary": false, "network_uuid": target, "model": Self::nic_model(&vm)});
        if let Some(ip) = ip {
            body["ip"] = json!(ip);
        }
        let Value::Object(body) = body else { return Err(ApiError::internal("NIC body is not an object")) };
        let nic = self.create_nic(&body).await?;
        let mut params = Map::new();
        params.insert("macs".into(), json!([nic.mac]));
        params.insert("owned".into(), json!([nic.mac]));
        if primary {
            params.insert("primary_mac".into(), json!(nic.mac));
        }
        params.insert("nic_model".into(), json!(Self::nic_model(&vm)));
        params.insert("restart".into(), json!(true));
        match self.queue(new_job("add_nics", uuid, Some(server), vm.owner_uuid, params), Vec::new()).await {
            Ok(job) => Ok(AddedNic::Added(Box::new(nic), Box::new(job))),
            Err(e) => {
                if let Err(e2) = self.delete_nic(&nic.mac).await {
                    tracing::warn!(mac = %nic.mac, error = %e2.message, "could not delete the NIC of an add_nics job that was never queued");
                }
                Err(e)
            }
        }
    }

    /// CloudAPI's RemoveNic: the `remove_nics` job for one NIC of the VM.
    pub async fn remove_nic(&self, uuid: Uuid, mac: &str) -> Result<Job, ApiError> {
        self.remove_nics(uuid, json!({"macs": [mac]}).as_object().unwrap_or(&Map::new())).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_compare_in_any_form() {
        assert!(same_mac("90:b8:d0:00:00:0a", "90B8D000000A"));
        assert!(!same_mac("90:b8:d0:00:00:0a", "90:b8:d0:00:00:0b"));
        assert!(!same_mac("x", "x"), "text that is no MAC matches nothing");
        assert_eq!(canonical_mac("90B8D000000A"), "90:b8:d0:00:00:0a");
    }
}
