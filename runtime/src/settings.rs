//! Which runtime to run, as configuration: `{"kind": "local", ...}` or `{"kind": "kubernetes", ...}`.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::kubernetes::{KubeConfig, KubeRuntime};
use crate::local::{LocalConfig, LocalRuntime};
use crate::{Runtime, RuntimeError, Sink};

/// The runtime section of Wharf's settings. Every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum RuntimeSettings {
    /// Child processes of this one (the default of `wharf up`).
    Local(LocalSettings),
    /// Deployments on the cluster found by the usual kubeconfig / in-cluster rules.
    Kubernetes(KubeSettings),
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        RuntimeSettings::Local(LocalSettings::default())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalSettings {
    pub port_start: u16,
    pub port_end: u16,
    pub boot_timeout_secs: u64,
    pub grace_period_secs: u64,
    pub drain_secs: u64,
}

impl Default for LocalSettings {
    fn default() -> Self {
        let d = LocalConfig::default();
        LocalSettings {
            port_start: d.ports.start,
            port_end: d.ports.end,
            boot_timeout_secs: d.boot_timeout.as_secs(),
            grace_period_secs: d.grace_period.as_secs(),
            drain_secs: d.drain_period.as_secs(),
        }
    }
}

impl LocalSettings {
    pub fn config(&self) -> LocalConfig {
        LocalConfig {
            ports: self.port_start..self.port_end,
            boot_timeout: Duration::from_secs(self.boot_timeout_secs),
            grace_period: Duration::from_secs(self.grace_period_secs),
            drain_period: Duration::from_secs(self.drain_secs),
            ..LocalConfig::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubeSettings {
    pub field_manager: String,
    pub default_port: u16,
    pub grace_period_secs: i64,
    pub progress_deadline_secs: i32,
    pub reconcile_interval_secs: u64,
}

impl Default for KubeSettings {
    fn default() -> Self {
        let d = KubeConfig::default();
        KubeSettings {
            field_manager: d.field_manager,
            default_port: d.default_port,
            grace_period_secs: d.grace_period_secs,
            progress_deadline_secs: d.progress_deadline_secs,
            reconcile_interval_secs: d.reconcile_interval.as_secs(),
        }
    }
}

impl KubeSettings {
    pub fn config(&self) -> KubeConfig {
        KubeConfig {
            field_manager: self.field_manager.clone(),
            default_port: self.default_port,
            grace_period_secs: self.grace_period_secs,
            progress_deadline_secs: self.progress_deadline_secs,
            reconcile_interval: Duration::from_secs(self.reconcile_interval_secs.max(1)),
            ..KubeConfig::default()
        }
    }
}

/// Build the configured runtime, started. Kubernetes connects with the inferred client config
/// (in-cluster service account, else kubeconfig).
pub async fn build(
    settings: &RuntimeSettings,
    sink: Sink,
) -> Result<Arc<dyn Runtime>, RuntimeError> {
    match settings {
        RuntimeSettings::Local(s) => {
            if s.port_start >= s.port_end {
                return Err(RuntimeError::Failed(format!(
                    "empty port range {}..{}",
                    s.port_start, s.port_end
                )));
            }
            Ok(Arc::new(LocalRuntime::new(s.config(), sink)))
        }
        RuntimeSettings::Kubernetes(s) => {
            let client = kube::Client::try_default().await?;
            let rt = KubeRuntime::new(client, s.config(), sink);
            rt.start();
            Ok(Arc::new(rt))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_selects_the_runtime_and_fields_default() {
        let s: RuntimeSettings =
            serde_json::from_str(r#"{"kind": "local", "drain_secs": 1}"#).unwrap();
        let RuntimeSettings::Local(l) = &s else {
            panic!("{s:?}")
        };
        assert_eq!(l.drain_secs, 1);
        assert_eq!(l.boot_timeout_secs, 60);
        assert_eq!(l.grace_period_secs, 30);
        let s: RuntimeSettings = serde_json::from_str(r#"{"kind": "kubernetes"}"#).unwrap();
        assert_eq!(s, RuntimeSettings::Kubernetes(KubeSettings::default()));
        assert!(
            serde_json::from_str::<RuntimeSettings>(r#"{"kind": "local", "bogus": 1}"#).is_err()
        );
        assert!(serde_json::from_str::<RuntimeSettings>(r#"{"kind": "nomad"}"#).is_err());
    }

    #[tokio::test]
    async fn builds_a_local_runtime() {
        struct Null;
        impl wharf_config::LineSink for Null {
            fn send(&self, _: wharf_config::LogLine) {}
        }
        let sink: Sink = Arc::new(Null);
        let rt = build(&RuntimeSettings::default(), sink.clone())
            .await
            .unwrap();
        assert!(rt.dynos().is_empty());
        rt.shutdown().await;
        let bad = RuntimeSettings::Local(LocalSettings {
            port_start: 10,
            port_end: 10,
            ..LocalSettings::default()
        });
        assert!(build(&bad, sink).await.is_err());
    }
}
