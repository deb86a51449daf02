//! The asset registry: which customer owns a device, how critical it is, where it is, who to
//! call, and what a technician should do for each kind of fault. Priority and respond-by times
//! come from here: asset criticality x customer tier, through a matrix the operator configures.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::detect::FaultKind;
use crate::settings::Invalid;

/// Ticket priority, P1 (most urgent) to P4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub enum Priority {
    P1,
    P2,
    P3,
    #[default]
    P4,
}

impl Priority {
    /// Every priority, most urgent first.
    pub const ALL: [Priority; 4] = [Priority::P1, Priority::P2, Priority::P3, Priority::P4];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::P1 => "P1",
            Priority::P2 => "P2",
            Priority::P3 => "P3",
            Priority::P4 => "P4",
        }
    }
}

/// The customer behind the asset, as the technician needs to know it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerRef {
    pub id: String,
    pub name: String,
    /// `tier1` (strategic), `tier2` (growth), `tier3` (all others).
    pub tier: String,
}

/// The asset (device) as registered by the operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssetRef {
    pub id: String,
    pub model: Option<String>,
    /// `high`, `medium` or `low`.
    pub criticality: String,
    pub location: Option<String>,
    pub safety_critical: bool,
    pub contacts: Vec<String>,
}

/// Customer tiers, most important first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Significant revenue or strategic value.
    Tier1,
    /// Growth potential.
    Tier2,
    /// All others.
    #[default]
    Tier3,
}

impl Tier {
    /// Every tier, most important first.
    pub const ALL: [Tier; 3] = [Tier::Tier1, Tier::Tier2, Tier::Tier3];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Tier1 => "tier1",
            Tier::Tier2 => "tier2",
            Tier::Tier3 => "tier3",
        }
    }

    fn column(self) -> usize {
        match self {
            Tier::Tier1 => 0,
            Tier::Tier2 => 1,
            Tier::Tier3 => 2,
        }
    }
}

/// How much an outage of the asset hurts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Criticality {
    High,
    #[default]
    Medium,
    Low,
}

impl Criticality {
    pub fn as_str(self) -> &'static str {
        match self {
            Criticality::High => "high",
            Criticality::Medium => "medium",
            Criticality::Low => "low",
        }
    }
}

/// A customer.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerConfig {
    pub id: String,
    pub name: String,
    pub tier: Tier,
}

/// A registered device (asset).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    pub id: String,
    pub site: Option<String>,
    /// A customer id from `assets.customers`.
    pub customer: Option<String>,
    pub model: Option<String>,
    #[serde(default)]
    pub criticality: Criticality,
    pub location: Option<String>,
    /// A fault on this asset endangers people: always P1, whatever the tier.
    #[serde(default)]
    pub safety_critical: bool,
    #[serde(default)]
    pub contacts: Vec<String>,
}

/// What to do about one class of fault.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RunbookConfig {
    /// A fault kind (`deviation`, `stuck`, `above_limit`, `below_limit`, ...) for every metric,
    /// or `metric.kind` (e.g. `discharge_temp.deviation`) for one metric; the latter wins.
    pub fault: String,
    pub steps: Vec<String>,
    pub link: Option<String>,
}

/// `[assets]`: the registry, inline or in a separate file.
#[derive(Debug, Clone, Deserialize, serde::Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AssetsConfig {
    /// A separate TOML file with `customers`, `devices` and `runbooks` (same shape as here);
    /// its entries are added to the inline ones. Relative paths are relative to the config file.
    pub file: Option<PathBuf>,
    /// For devices not in the registry.
    pub default_criticality: Criticality,
    pub default_tier: Tier,
    pub customers: Vec<CustomerConfig>,
    pub devices: Vec<DeviceConfig>,
    pub runbooks: Vec<RunbookConfig>,
}

/// The content of `assets.file`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AssetsFile {
    pub customers: Vec<CustomerConfig>,
    pub devices: Vec<DeviceConfig>,
    pub runbooks: Vec<RunbookConfig>,
}

/// `[priority]`: the matrix and the SLA of each priority.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PriorityConfig {
    /// Priority for a high-criticality asset, by tier: `[tier1, tier2, tier3]`.
    pub high: [Priority; 3],
    pub medium: [Priority; 3],
    pub low: [Priority; 3],
    /// How soon a technician must respond, per priority.
    pub respond_within: RespondWithin,
}

/// Respond-by time per priority. Every priority has one: Tier III customers get P4 at worst,
/// which still carries an SLA.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RespondWithin {
    #[serde(rename = "P1", with = "humantime_serde")]
    pub p1: Duration,
    #[serde(rename = "P2", with = "humantime_serde")]
    pub p2: Duration,
    #[serde(rename = "P3", with = "humantime_serde")]
    pub p3: Duration,
    #[serde(rename = "P4", with = "humantime_serde")]
    pub p4: Duration,
}

impl Default for PriorityConfig {
    fn default() -> Self {
        use Priority::*;
        PriorityConfig {
            high: [P1, P2, P3],
            medium: [P2, P3, P4],
            low: [P3, P4, P4],
            respond_within: RespondWithin {
                p1: Duration::from_secs(4 * 3600),
                p2: Duration::from_secs(8 * 3600),
                p3: Duration::from_secs(24 * 3600),
                p4: Duration::from_secs(72 * 3600),
            },
        }
    }
}

impl PriorityConfig {
    /// The SLA of a priority.
    pub fn respond_within(&self, p: Priority) -> Duration {
        match p {
            Priority::P1 => self.respond_within.p1,
            Priority::P2 => self.respond_within.p2,
            Priority::P3 => self.respond_within.p3,
            Priority::P4 => self.respond_within.p4,
        }
    }
}

/// Everything the registry knows about one device, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct AssetInfo {
    pub asset: AssetRef,
    pub customer: Option<CustomerRef>,
    pub tier: Tier,
    pub criticality: Criticality,
    pub priority: Priority,
    pub respond_within: Duration,
}

/// The registry, indexed for lookups on the hot path of ticket creation.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    devices: HashMap<String, DeviceConfig>,
    customers: HashMap<String, CustomerConfig>,
    runbooks: HashMap<String, RunbookConfig>,
    default_criticality: Criticality,
    default_tier: Tier,
    priority: PriorityConfig,
}

impl Registry {
    /// Makes `asset`'s ticket the lowest priority, with that priority's respond-by time: a
    /// notice (a whole site's change of operating context), not a device's fault.
    pub fn lowest_priority(&self, asset: &mut AssetInfo) {
        asset.priority = Priority::P4;
        asset.respond_within = self.priority.respond_within(Priority::P4);
    }

    /// Builds the registry from inline config plus the content of `assets.file`, if any.
    pub fn new(assets: &AssetsConfig, extra: Option<&AssetsFile>, priority: &PriorityConfig) -> Registry {
        let extra = extra.cloned().unwrap_or_default();
        Registry {
            devices: assets.devices.iter().chain(&extra.devices).map(|d| (d.id.clone(), d.clone())).collect(),
            customers: assets.customers.iter().chain(&extra.customers).map(|c| (c.id.clone(), c.clone())).collect(),
            runbooks: assets.runbooks.iter().chain(&extra.runbooks).map(|r| (r.fault.clone(), r.clone())).collect(),
            default_criticality: assets.default_criticality,
            default_tier: assets.default_tier,
            priority: priority.clone(),
        }
    }

    /// Resolves a device: registered data, or defaults for an unknown device.
    pub fn lookup(&self, device: &str) -> AssetInfo {
        let entry = self.devices.get(device);
        let customer = entry.and_then(|d| d.customer.as_ref()).and_then(|c| self.customers.get(c));
        let tier = customer.map(|c| c.tier).unwrap_or(self.default_tier);
        let criticality = entry.map(|d| d.criticality).unwrap_or(self.default_criticality);
        let safety = entry.is_some_and(|d| d.safety_critical);
        let row = match criticality {
            Criticality::High => &self.priority.high,
            Criticality::Medium => &self.priority.medium,
            Criticality::Low => &self.priority.low,
        };
        let priority = if safety { Priority::P1 } else { row[tier.column()] };
        AssetInfo {
            asset: AssetRef {
                id: device.to_string(),
                model: entry.and_then(|d| d.model.clone()),
                criticality: criticality.as_str().to_string(),
                location: entry.and_then(|d| d.location.clone()),
                safety_critical: safety,
                contacts: entry.map(|d| d.contacts.clone()).unwrap_or_default(),
            },
            customer: customer.map(|c| CustomerRef {
                id: c.id.clone(),
                name: c.name.clone(),
                tier: c.tier.as_str().to_string(),
            }),
            tier,
            criticality,
            priority,
            respond_within: self.priority.respond_within(priority),
        }
    }

    /// The asset models of the registered devices, each once.
    pub fn asset_models(&self) -> impl Iterator<Item = &str> {
        let models: std::collections::BTreeSet<&str> =
            self.devices.values().filter_map(|d| d.model.as_deref()).collect();
        models.into_iter()
    }

    /// True when the device is in the asset registry.
    pub fn is_registered(&self, device: &str) -> bool {
        self.devices.contains_key(device)
    }

    /// The registered site of a device, if any.
    pub fn site(&self, device: &str) -> Option<&str> {
        self.devices.get(device).and_then(|d| d.site.as_deref())
    }

    /// The runbook for a fault of a metric: `metric.kind` first, then `kind`.
    pub fn runbook(&self, metric: &str, fault: FaultKind) -> Option<&RunbookConfig> {
        self.runbooks.get(&format!("{metric}.{}", fault.as_str())).or_else(|| self.runbooks.get(fault.as_str()))
    }

    /// Checks references between entries; returns the offending key and why.
    pub fn validate(assets: &AssetsConfig, extra: Option<&AssetsFile>) -> Result<(), Invalid> {
        let extra = extra.cloned().unwrap_or_default();
        let customers: Vec<&CustomerConfig> = assets.customers.iter().chain(&extra.customers).collect();
        let mut seen = std::collections::HashSet::new();
        for (i, c) in customers.iter().enumerate() {
            if c.id.is_empty() || !seen.insert(c.id.as_str()) {
                return Err(Invalid::new(
                    format!("assets.customers[{i}].id"),
                    format!("`{}` is empty or repeated", c.id),
                ));
            }
        }
        let mut seen_devices = std::collections::HashSet::new();
        for (i, d) in assets.devices.iter().chain(&extra.devices).enumerate() {
            if d.id.is_empty() || !seen_devices.insert(d.id.as_str()) {
                return Err(Invalid::new(
                    format!("assets.devices[{i}].id"),
                    format!("`{}` is empty or repeated", d.id),
                ));
            }
            if let Some(c) = &d.customer {
                if !seen.contains(c.as_str()) {
                    return Err(Invalid::new(
                        format!("assets.devices[{i}].customer"),
                        format!("no customer with id `{c}`"),
                    ));
                }
            }
        }
        for (i, r) in assets.runbooks.iter().chain(&extra.runbooks).enumerate() {
            let kind = r.fault.rsplit('.').next().unwrap_or_default();
            let known = FaultKind::ALL.iter().chain(&[FaultKind::Silent, FaultKind::Multivariate]);
            if !known.clone().any(|k| k.as_str() == kind) {
                let kinds: Vec<_> = known.map(|k| k.as_str()).collect();
                return Err(Invalid::new(
                    format!("assets.runbooks[{i}].fault"),
                    format!("`{}` does not end in a fault kind ({})", r.fault, kinds.join(", ")),
                ));
            }
            if r.steps.is_empty() {
                return Err(Invalid::new(format!("assets.runbooks[{i}].steps"), "list at least one step"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        let assets: AssetsConfig = toml::from_str(
            r#"
            [[customers]]
            id = "acme"
            name = "ACME Foods"
            tier = "tier1"
            [[customers]]
            id = "corner"
            name = "Corner Shop"
            tier = "tier3"
            [[devices]]
            id = "comp-1"
            customer = "acme"
            criticality = "high"
            [[devices]]
            id = "comp-2"
            customer = "corner"
            criticality = "low"
            [[devices]]
            id = "ammonia-1"
            customer = "corner"
            criticality = "low"
            safety_critical = true
            [[runbooks]]
            fault = "deviation"
            steps = ["Check the sensor"]
            [[runbooks]]
            fault = "discharge_temp.deviation"
            steps = ["Check the condenser fan"]
            "#,
        )
        .unwrap();
        Registry::new(&assets, None, &PriorityConfig::default())
    }

    #[test]
    fn priority_follows_criticality_and_tier() {
        let r = registry();
        let tier1_high = r.lookup("comp-1");
        assert_eq!(tier1_high.priority, Priority::P1);
        assert_eq!(tier1_high.respond_within, Duration::from_secs(4 * 3600));
        assert_eq!(tier1_high.customer.unwrap().tier, "tier1");
        assert_eq!(r.lookup("comp-2").priority, Priority::P4);
        assert_eq!(r.lookup("unknown").priority, Priority::P4, "medium x tier3 by default");
    }

    #[test]
    fn safety_critical_forces_p1_whatever_the_tier() {
        let info = registry().lookup("ammonia-1");
        assert_eq!(info.tier, Tier::Tier3);
        assert_eq!(info.priority, Priority::P1);
        assert!(info.asset.safety_critical);
    }

    #[test]
    fn metric_runbook_wins_over_fault_runbook() {
        let r = registry();
        assert_eq!(r.runbook("discharge_temp", FaultKind::Deviation).unwrap().steps[0], "Check the condenser fan");
        assert_eq!(r.runbook("current", FaultKind::Deviation).unwrap().steps[0], "Check the sensor");
        assert!(r.runbook("current", FaultKind::Stuck).is_none());
    }

    #[test]
    fn unknown_customer_reference_is_named() {
        let assets: AssetsConfig = toml::from_str("[[devices]]\nid = \"d\"\ncustomer = \"ghost\"\n").unwrap();
        let Invalid { key, reason: why } = Registry::validate(&assets, None).unwrap_err();
        assert_eq!(key, "assets.devices[0].customer");
        assert!(why.contains("ghost"));
    }
}
