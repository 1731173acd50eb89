//! The names and states of the isolation layers, shared by the jail init (which
//! applies them), the supervisor (which measures them) and `csv-agent doctor`.

use serde::{Deserialize, Serialize};

/// Every layer, in the order `csv-agent doctor` prints them. The names are a
/// command-line contract: other tools parse them.
pub const LAYER_NAMES: [&str; 14] = [
    "user_namespace",
    "pid_namespace",
    "mount_namespace",
    "network_namespace",
    "ipc_namespace",
    "uts_namespace",
    "cgroup_namespace",
    "filesystem",
    "landlock",
    "capabilities",
    "no_new_privs",
    "seccomp",
    "cgroup_limits",
    "rlimits",
];

/// The namespace layers, which the jail init creates in one `unshare`: the
/// first seven of [`LAYER_NAMES`].
pub const NAMESPACE_LAYERS: &[&str] = LAYER_NAMES.as_slice().split_at(7).0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerStatus {
    /// Applied and confirmed by a measurement.
    Active,
    /// Could not be applied on this host (the detail says why).
    Unavailable,
    /// Turned off on purpose.
    Disabled,
}

impl LayerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            LayerStatus::Active => "active",
            LayerStatus::Unavailable => "unavailable",
            LayerStatus::Disabled => "disabled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    pub name: String,
    pub status: LayerStatus,
    pub detail: String,
}

impl Layer {
    pub fn new(name: &str, status: LayerStatus, detail: impl Into<String>) -> Self {
        Layer {
            name: name.to_string(),
            status,
            detail: detail.into(),
        }
    }
    pub fn active(name: &str, detail: impl Into<String>) -> Self {
        Self::new(name, LayerStatus::Active, detail)
    }
    pub fn unavailable(name: &str, detail: impl Into<String>) -> Self {
        Self::new(name, LayerStatus::Unavailable, detail)
    }
}

/// What a sandbox really has: one entry per layer of [`LAYER_NAMES`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsolationReport {
    pub layers: Vec<Layer>,
    /// How workers are told apart by the kernel: each its own uid, or one
    /// uid for all (then seccomp argument filters and Landlock scoping do
    /// it). Not a layer: both modes run without `--allow-degraded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_isolation: Option<WorkerIsolation>,
}

/// The worker-isolation mode and what it means on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerIsolation {
    /// `per_worker_uid` or `single_uid`.
    pub mode: String,
    pub detail: String,
}

impl WorkerIsolation {
    pub const PER_WORKER_UID: &'static str = "per_worker_uid";
    pub const SINGLE_UID: &'static str = "single_uid";

    pub fn per_worker_uid(detail: impl Into<String>) -> Self {
        WorkerIsolation {
            mode: Self::PER_WORKER_UID.to_string(),
            detail: detail.into(),
        }
    }
    pub fn single_uid(detail: impl Into<String>) -> Self {
        WorkerIsolation {
            mode: Self::SINGLE_UID.to_string(),
            detail: detail.into(),
        }
    }
}

impl IsolationReport {
    pub fn get(&self, name: &str) -> Option<&Layer> {
        self.layers.iter().find(|l| l.name == name)
    }

    /// Insert or replace the entry for a layer.
    pub fn set(&mut self, layer: Layer) {
        match self.layers.iter_mut().find(|l| l.name == layer.name) {
            Some(existing) => *existing = layer,
            None => self.layers.push(layer),
        }
    }

    /// Layers that are not active, in contract order.
    pub fn degraded(&self) -> Vec<&Layer> {
        self.layers
            .iter()
            .filter(|l| l.status != LayerStatus::Active)
            .collect()
    }

    pub fn all_active(&self) -> bool {
        LAYER_NAMES.iter().all(|name| {
            self.get(name)
                .map(|l| l.status == LayerStatus::Active)
                .unwrap_or(false)
        })
    }

    /// Sort into contract order; layers that were never measured are listed as
    /// unavailable rather than silently missing.
    pub fn normalize(&mut self) {
        for name in LAYER_NAMES {
            if self.get(name).is_none() {
                self.layers.push(Layer::unavailable(
                    name,
                    "not measured (the jail did not start)",
                ));
            }
        }
        self.layers.sort_by_key(|l| {
            LAYER_NAMES
                .iter()
                .position(|n| *n == l.name)
                .unwrap_or(usize::MAX)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_layers_lead_the_contract_list() {
        assert_eq!(NAMESPACE_LAYERS, &LAYER_NAMES[..NAMESPACE_LAYERS.len()]);
    }

    #[test]
    fn normalize_fills_missing_layers_as_unavailable_in_contract_order() {
        let mut report = IsolationReport::default();
        report.set(Layer::active("seccomp", "mode 2"));
        report.set(Layer::active("user_namespace", "0 65534 1"));
        report.normalize();
        let names: Vec<_> = report.layers.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, LAYER_NAMES.to_vec());
        assert_eq!(
            report.get("landlock").map(|l| l.status),
            Some(LayerStatus::Unavailable)
        );
        assert!(!report.all_active());
        assert_eq!(report.degraded().len(), 12);
    }
}
