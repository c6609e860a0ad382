//! Firewall rules (FWAPI): the records in bucket `fwrules`, who sees and changes them,
//! and which VMs each names.
//!
//! A rule belongs to one account (`owner_uuid`), or is global (`global: true`, no owner):
//! made by operators through the admin API, read-only to every tenant (CloudAPI answers
//! `InvalidArgument` "global rules cannot be modified", as Triton does). The rule text is
//! checked and stored canonical ([`fwrule::canonical`]); what a rule means for each VM is
//! the compiler's ([`fwrule::compile`], [`fwrule::affected`]). Every change wakes the
//! network policy push ([`super::netpolicy`]), which carries the result to the nodes.
//!
//! ```text
//!   admin API / CloudAPI ──► check_create / check_update (pure) ──► fwrules bucket
//!                                                                    │ netpolicy_notify
//!                                                                    ▼
//!                                                  netpolicy pass ──► agents
//! ```

use nereid_store::{Cond, Filter, ListQuery, Path};
use nereid_types::fwrule::{self, FwRule, FwVm};
use nereid_types::spec::{self, Field, Kind, Mode};
use nereid_types::vm::Vm;
use nereid_types::{ApiError, FieldError};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{App, RETRIES, store_error};
use crate::buckets::{FWRULES, VMS};

/// The longest rule text accepted.
pub const MAX_RULE: usize = 8192;

/// A rule's fields as the admin API takes and renders them.
pub const FIELDS: &[Field] = &[
    Field::new("uuid", Kind::Uuid, "Rule UUID (given on create, else made).").immutable(),
    Field::new("owner_uuid", Kind::Uuid, "The account the rule belongs to (none for a global rule).").immutable(),
    Field::new(
        "rule",
        Kind::Str { max: MAX_RULE, check: None },
        "Rule text, e.g. FROM any TO tag \"role\" = \"web\" ALLOW tcp PORT 80 (stored canonical).",
    )
    .required(),
    Field::new("enabled", Kind::Bool, "Whether the rule applies (default false)."),
    Field::new("global", Kind::Bool, "An operator-wide rule, read-only to tenants (no owner_uuid).").immutable(),
    Field::new("description", Kind::Str { max: 1024, check: None }, "Free text."),
    Field::new("log", Kind::Bool, "Log the connections the rule matches (default false)."),
    Field::new("created", Kind::Str { max: 40, check: None }, "When it was made.").read_only(),
    Field::new("updated", Kind::Str { max: 40, check: None }, "When it last changed.").read_only(),
];

/// Who acts on rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// The admin API: every rule, global ones included.
    Operator,
    /// A tenant (CloudAPI): its own rules; global ones read-only.
    Tenant(Uuid),
}

/// The filters of a rule list.
#[derive(Debug, Clone, Default)]
pub struct RuleFilter {
    pub owner_uuid: Option<Uuid>,
    pub global: Option<bool>,
    pub enabled: Option<bool>,
}

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid_parameters(vec![FieldError::invalid(field, message)])
}

/// The rule text, canonical; the parser's message names what is wrong.
pub fn canonical_rule(text: &str) -> Result<String, ApiError> {
    fwrule::canonical(text).map_err(|m| invalid("rule", m))
}

/// A new rule from a create body (pure; `now` stamps it).
pub fn check_create(input: &Map<String, Value>, now: &str) -> Result<FwRule, ApiError> {
    let errors = spec::check(FIELDS, input, Mode::Create, &["uuid"]);
    if !errors.is_empty() {
        return Err(ApiError::invalid_parameters(errors));
    }
    let s = |k: &str| input.get(k).and_then(Value::as_str);
    let b = |k: &str| input.get(k).and_then(Value::as_bool);
    let global = b("global").unwrap_or(false);
    let owner_uuid = s("owner_uuid").and_then(|u| Uuid::parse_str(u).ok());
    match (global, owner_uuid) {
        (true, Some(_)) => return Err(invalid("owner_uuid", "a global rule has no owner")),
        (false, None) => return Err(invalid("owner_uuid", "is required unless the rule is global (global=true)")),
        _ => {}
    }
    Ok(FwRule {
        uuid: s("uuid").and_then(|u| Uuid::parse_str(u).ok()).unwrap_or_else(Uuid::new_v4),
        owner_uuid,
        rule: canonical_rule(s("rule").unwrap_or_default())?,
        enabled: b("enabled").unwrap_or(false),
        global,
        description: s("description").map(str::to_string).filter(|d| !d.is_empty()),
        log: b("log").unwrap_or(false),
        created: Some(now.to_string()),
        updated: Some(now.to_string()),
    })
}

/// A rule changed by an update body (pure): `rule`, `enabled`, `description` (null
/// clears it) and `log` change; the owner, `global` and the UUID stay.
pub fn check_update(cur: &FwRule, input: &Map<String, Value>, now: &str) -> Result<FwRule, ApiError> {
    let mut errors = spec::check(FIELDS, input, Mode::Update, &["uuid", "owner_uuid", "global"]);
    let same = |k: &str, v: Value| input.get(k).is_none_or(|given| *given == v);
    if !same("uuid", Value::String(cur.uuid.to_string())) {
        errors.push(FieldError::invalid("uuid", "cannot be changed"));
    }
    if !same("owner_uuid", cur.owner_uuid.map(|o| Value::String(o.to_string())).unwrap_or(Value::Null)) {
        errors.push(FieldError::invalid("owner_uuid", "cannot be changed (make a new rule for the other account)"));
    }
    if !same("global", Value::Bool(cur.global)) {
        errors.push(FieldError::invalid("global", "cannot be changed"));
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid_parameters(errors));
    }
    let mut next = cur.clone();
    if let Some(r) = input.get("rule").and_then(Value::as_str) {
        next.rule = canonical_rule(r)?;
    }
    if let Some(e) = input.get("enabled").and_then(Value::as_bool) {
        next.enabled = e;
    }
    if let Some(d) = input.get("description") {
        next.description = d.as_str().map(str::to_string).filter(|d| !d.is_empty());
    }
    if let Some(l) = input.get("log").and_then(Value::as_bool) {
        next.log = l;
    }
    next.updated = Some(now.to_string());
    Ok(next)
}

/// Whether `actor` may see the rule.
pub fn visible(rule: &FwRule, actor: Actor) -> bool {
    match actor {
        Actor::Operator => true,
        Actor::Tenant(t) => rule.global || rule.owner_uuid == Some(t),
    }
}

/// Whether `actor` may change the rule: `Ok` or the error to answer (404 for what it
/// cannot see, so other accounts' rules cannot be probed).
pub fn may_change(rule: &FwRule, actor: Actor) -> Result<(), ApiError> {
    match actor {
        Actor::Operator => Ok(()),
        Actor::Tenant(_) if !visible(rule, actor) => Err(not_found(rule.uuid)),
        Actor::Tenant(_) if rule.global => Err(ApiError::new(409, "InvalidArgument", "global rules cannot be modified")),
        Actor::Tenant(_) => Ok(()),
    }
}

fn not_found(uuid: Uuid) -> ApiError {
    ApiError::not_found(format!("firewall rule {uuid} does not exist"))
}

/// What the rule language needs to know of a VM (`None` for a VM without an owner).
pub fn fw_vm(vm: &Vm) -> Option<FwVm> {
    Some(FwVm {
        uuid: vm.uuid,
        owner_uuid: vm.owner_uuid?,
        tags: vm.tags.clone().unwrap_or_default(),
        ips: vm.nics.iter().flatten().filter_map(|n| n.ip.clone()).collect(),
        firewall_enabled: vm.firewall_enabled.unwrap_or(false),
    })
}

/// Whether a VM record counts for firewalls (not destroyed, not failed).
pub fn is_active(vm: &Vm) -> bool {
    !matches!(vm.state.as_deref(), Some("destroyed" | "failed"))
}

/// The rules among `rules` that affect `vm` (pure).
pub fn rules_of_vm<'a>(rules: &'a [FwRule], vm: &FwVm) -> Vec<&'a FwRule> {
    let one = std::slice::from_ref(vm);
    rules.iter().filter(|r| (r.global || r.owner_uuid == Some(vm.owner_uuid)) && fwrule::affected(r, one).contains(&vm.uuid)).collect()
}

impl App {
    /// One rule as `actor` may see it.
    pub async fn get_fwrule(&self, uuid: Uuid, actor: Actor) -> Result<(FwRule, i64), ApiError> {
        match self.read::<FwRule>(FWRULES.name, &uuid.to_string()).await? {
            Some((r, g)) if visible(&r, actor) => Ok((r, g)),
            _ => Err(not_found(uuid)),
        }
    }

    /// The rules `actor` sees, filtered, oldest first.
    pub async fn list_fwrules(&self, actor: Actor, f: &RuleFilter) -> Result<Vec<FwRule>, ApiError> {
        let mut parts = Vec::new();
        if let Actor::Tenant(t) = actor {
            parts.push(Filter::Or(vec![Filter::eq("owner_uuid", t.to_string()), Filter::Absent(Path::field("owner_uuid"))]));
        }
        if let Some(o) = f.owner_uuid {
            parts.push(Filter::eq("owner_uuid", o.to_string()));
        }
        let mut rules: Vec<FwRule> = self.list(FWRULES.name, &ListQuery::filter(Filter::and(parts))).await?;
        rules.retain(|r| visible(r, actor) && f.global.is_none_or(|g| r.global == g) && f.enabled.is_none_or(|e| r.enabled == e));
        rules.sort_by(|a, b| a.created.cmp(&b.created).then(a.uuid.cmp(&b.uuid)));
        Ok(rules)
    }

    /// Makes a rule. A tenant's input is given its own `owner_uuid` by the caller; only
    /// operators make global rules.
    pub async fn create_fwrule(&self, input: &Map<String, Value>, actor: Actor) -> Result<FwRule, ApiError> {
        let rule = check_create(input, &nereid_types::time::now_iso())?;
        if let Actor::Tenant(t) = actor
            && (rule.global || rule.owner_uuid != Some(t))
        {
            return Err(ApiError::new(403, "NotAuthorized", "a tenant makes rules of its own account only"));
        }
        if let Some(o) = rule.owner_uuid {
            self.find_account(&o.to_string())
                .await
                .map_err(|e| if e.status == 404 { invalid("owner_uuid", format!("account {o} does not exist")) } else { e })?;
        }
        match self.write(FWRULES.name, &rule.uuid.to_string(), &rule, Cond::Absent).await {
            Ok(_) => {}
            Err(e) if e.is_conflict() => {
                return Err(ApiError::conflict("InvalidParameters", format!("firewall rule {} already exists", rule.uuid))
                    .with_errors(vec![FieldError::invalid("uuid", "already exists")]));
            }
            Err(e) => return Err(store_error(e)),
        }
        tracing::info!(rule = %rule.uuid, owner = ?rule.owner_uuid, global = rule.global, text = %rule.rule, "firewall rule created");
        self.netpolicy_notify.notify_one();
        Ok(rule)
    }

    /// Changes a rule (`rule`, `enabled`, `description`, `log`).
    pub async fn update_fwrule(&self, uuid: Uuid, input: &Map<String, Value>, actor: Actor) -> Result<FwRule, ApiError> {
        for _ in 0..RETRIES {
            let (cur, generation) = self.get_fwrule(uuid, actor).await?;
            may_change(&cur, actor)?;
            let next = check_update(&cur, input, &nereid_types::time::now_iso())?;
            match self.write(FWRULES.name, &uuid.to_string(), &next, Cond::Generation(generation)).await {
                Ok(_) => {
                    self.netpolicy_notify.notify_one();
                    return Ok(next);
                }
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(ApiError::conflict("ConcurrentModification", format!("firewall rule {uuid} kept changing; retry")))
    }

    /// Removes a rule.
    pub async fn delete_fwrule(&self, uuid: Uuid, actor: Actor) -> Result<(), ApiError> {
        let (cur, generation) = self.get_fwrule(uuid, actor).await?;
        may_change(&cur, actor)?;
        self.store.delete(FWRULES.name, &uuid.to_string(), Cond::Generation(generation)).await.map_err(store_error)?;
        tracing::info!(rule = %uuid, "firewall rule deleted");
        self.netpolicy_notify.notify_one();
        Ok(())
    }

    /// The active VMs (of `owner`, or every account's).
    pub async fn firewall_vms(&self, owner: Option<Uuid>) -> Result<Vec<Vm>, ApiError> {
        let mut parts = vec![Filter::Ne(Path::field("state"), Value::String("destroyed".into()))];
        if let Some(o) = owner {
            parts.push(Filter::eq("owner_uuid", o.to_string()));
        }
        let mut vms: Vec<Vm> = self.list_fast(VMS.name, &ListQuery::filter(Filter::and(parts))).await?;
        vms.retain(is_active);
        Ok(vms)
    }

    /// The VMs a rule affects: its owner's (any account's for a global rule, limited to
    /// `within` when given: a tenant sees only its own).
    pub async fn fwrule_vms(&self, rule: &FwRule, within: Option<Uuid>) -> Result<Vec<Vm>, ApiError> {
        let owner = within.or(rule.owner_uuid);
        let vms = self.firewall_vms(owner).await?;
        let fw: Vec<FwVm> = vms.iter().filter_map(fw_vm).collect();
        let hit = fwrule::affected(rule, &fw);
        Ok(vms.into_iter().filter(|v| hit.contains(&v.uuid)).collect())
    }

    /// The rules that affect a VM (its owner's and global ones).
    pub async fn vm_fwrules(&self, vm: &Vm) -> Result<Vec<FwRule>, ApiError> {
        let Some(fv) = fw_vm(vm) else { return Ok(Vec::new()) };
        let rules = self.list_fwrules(Actor::Tenant(fv.owner_uuid), &RuleFilter::default()).await?;
        Ok(rules_of_vm(&rules, &fv).into_iter().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn a_rule_has_an_owner_or_is_global() {
        let owner = Uuid::new_v4();
        let r = check_create(&obj(json!({"owner_uuid": owner, "rule": "FROM any TO all vms ALLOW tcp PORT 22"})), "t").unwrap();
        assert_eq!((r.owner_uuid, r.global, r.enabled, r.log), (Some(owner), false, false, false));
        let r = check_create(&obj(json!({"global": true, "rule": "FROM any TO all vms ALLOW tcp PORT 22", "enabled": true})), "t").unwrap();
        assert_eq!((r.owner_uuid, r.global, r.enabled), (None, true, true));
        let e = check_create(&obj(json!({"rule": "FROM any TO all vms ALLOW tcp PORT 22"})), "t").unwrap_err();
        assert_eq!((e.status, e.errors[0].field.as_str()), (422, "owner_uuid"));
        let e = check_create(&obj(json!({"global": true, "owner_uuid": owner, "rule": "x"})), "t").unwrap_err();
        assert_eq!(e.errors[0].field, "owner_uuid");
        let e = check_create(&obj(json!({"owner_uuid": owner})), "t").unwrap_err();
        assert_eq!(e.errors[0].field, "rule");
    }

    #[test]
    fn updates_keep_the_owner_and_tenants_cannot_touch_global_rules() {
        let owner = Uuid::new_v4();
        let cur = check_create(&obj(json!({"owner_uuid": owner, "rule": "FROM any TO all vms ALLOW tcp PORT 22"})), "t0").unwrap();
        let next = check_update(&cur, &obj(json!({"enabled": true, "description": "ssh"})), "t1").unwrap();
        assert_eq!((next.enabled, next.description.as_deref(), next.updated.as_deref()), (true, Some("ssh"), Some("t1")));
        let cleared = check_update(&next, &obj(json!({"description": null})), "t2").unwrap();
        assert_eq!(cleared.description, None);
        let e = check_update(&cur, &obj(json!({"owner_uuid": Uuid::new_v4()})), "t1").unwrap_err();
        assert_eq!(e.errors[0].field, "owner_uuid");
        assert!(check_update(&cur, &obj(json!({"owner_uuid": owner})), "t1").is_ok(), "the same owner is no change");

        let global = FwRule { owner_uuid: None, global: true, ..cur.clone() };
        assert!(visible(&global, Actor::Tenant(Uuid::new_v4())));
        let e = may_change(&global, Actor::Tenant(owner)).unwrap_err();
        assert_eq!((e.status, e.code.as_str(), e.message.as_str()), (409, "InvalidArgument", "global rules cannot be modified"));
        assert_eq!(may_change(&cur, Actor::Tenant(Uuid::new_v4())).unwrap_err().status, 404);
        assert!(may_change(&cur, Actor::Tenant(owner)).is_ok());
        assert!(may_change(&global, Actor::Operator).is_ok());
    }
}
