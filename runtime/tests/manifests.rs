//! Every manifest under `deploy/kubernetes/` parses into its k8s-openapi type, with no field
//! the type does not know (a round trip gives back the same document), and the RBAC grants
//! exactly what the Kubernetes runtime touches.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn round_trip<T: DeserializeOwned + Serialize>(doc: &Value, file: &str) {
    let typed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{file}: {} {}: {e}", doc["kind"], doc["metadata"]["name"]));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(
        &back, doc,
        "{file}: {} {} has fields its type does not know (or wrong types)",
        doc["kind"], doc["metadata"]["name"]
    );
}

fn documents() -> Vec<(String, Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        for d in serde_yaml::Deserializer::from_str(&text) {
            let v = serde_yaml::Value::deserialize(d).unwrap_or_else(|e| panic!("{name}: {e}"));
            if v.is_null() {
                continue;
            }
            out.push((name.clone(), serde_json::to_value(v).unwrap()));
        }
    }
    out
}

use serde::Deserialize;

#[test]
fn every_manifest_parses_into_its_type() {
    let docs = documents();
    let mut kinds = BTreeMap::<String, usize>::new();
    for (file, doc) in &docs {
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        match (
            doc["apiVersion"].as_str().unwrap_or_default(),
            kind.as_str(),
        ) {
            ("v1", "Namespace") => round_trip::<Namespace>(doc, file),
            ("v1", "ServiceAccount") => round_trip::<ServiceAccount>(doc, file),
            ("v1", "ConfigMap") => round_trip::<ConfigMap>(doc, file),
            ("v1", "Secret") => round_trip::<Secret>(doc, file),
            ("v1", "Service") => round_trip::<Service>(doc, file),
            ("apps/v1", "Deployment") => round_trip::<Deployment>(doc, file),
            ("policy/v1", "PodDisruptionBudget") => round_trip::<PodDisruptionBudget>(doc, file),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => round_trip::<ClusterRole>(doc, file),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                round_trip::<ClusterRoleBinding>(doc, file)
            }
            (v, k) => panic!("{file}: no check for {v} {k}: add it here"),
        }
        *kinds.entry(kind).or_default() += 1;
    }
    assert_eq!(
        kinds["Deployment"], 3,
        "router, log shuttle and control plane"
    );
}

fn find<'a>(docs: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    &docs
        .iter()
        .find(|(_, d)| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
        .1
}

#[test]
fn router_is_behind_a_load_balancer_and_settings_are_wired() {
    let docs = documents();
    let svc: Service =
        serde_json::from_value(find(&docs, "Service", "wharf-router").clone()).unwrap();
    let spec = svc.spec.unwrap();
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    let ports: BTreeSet<i32> = spec.ports.unwrap().iter().map(|p| p.port).collect();
    assert_eq!(ports, BTreeSet::from([80, 443]));
    let settings = find(&docs, "ConfigMap", "wharf-settings");
    assert!(settings["data"]["WHARF_KAFKA"].is_string());
    let db = find(&docs, "Secret", "wharf-database");
    assert!(
        db["stringData"]["WHARF_DATABASE_URL"]
            .as_str()
            .unwrap()
            .starts_with("postgres://")
    );
    let control: Deployment =
        serde_json::from_value(find(&docs, "Deployment", "wharf-control").clone()).unwrap();
    let pod = control.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("wharf-control"));
    let from: Vec<String> = pod.containers[0]
        .env_from
        .iter()
        .flatten()
        .filter_map(|e| {
            e.secret_ref
                .as_ref()
                .map(|s| s.name.clone())
                .or(e.config_map_ref.as_ref().map(|c| c.name.clone()))
        })
        .collect();
    assert_eq!(
        from,
        vec!["wharf-settings", "wharf-database", "wharf-control-token"]
    );
    // Only the control plane may talk to the API.
    for name in ["wharf-router", "wharf-logshuttle"] {
        let sa = find(&docs, "ServiceAccount", name);
        assert_eq!(sa["automountServiceAccountToken"], false, "{name}");
    }
}

#[test]
fn rbac_is_least_privilege_and_covers_the_runtime() {
    let docs = documents();
    let role: ClusterRole =
        serde_json::from_value(find(&docs, "ClusterRole", "wharf-runtime").clone()).unwrap();
    let mut granted: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for rule in role.rules.unwrap() {
        for g in rule.api_groups.clone().unwrap_or_default() {
            for r in rule.resources.clone().unwrap_or_default() {
                assert_ne!(r, "*", "no wildcard resources");
                for v in &rule.verbs {
                    assert_ne!(v, "*", "no wildcard verbs");
                    granted
                        .entry((g.clone(), r.clone()))
                        .or_default()
                        .insert(v.clone());
                }
            }
        }
    }
    let needs: &[(&str, &str, &[&str])] = &[
        ("", "namespaces", &["get", "create", "patch"]),
        ("", "secrets", &["list", "create", "patch", "delete"]),
        ("", "services", &["list", "create", "patch", "delete"]),
        ("", "pods", &["get", "list", "watch", "delete"]),
        ("", "pods/log", &["get"]),
        (
            "apps",
            "deployments",
            &["get", "list", "create", "patch", "delete"],
        ),
        ("batch", "jobs", &["create", "patch"]),
        ("batch", "cronjobs", &["list", "create", "patch", "delete"]),
        ("discovery.k8s.io", "endpointslices", &["list", "watch"]),
    ];
    for (g, r, verbs) in needs {
        let have = granted
            .get(&(g.to_string(), r.to_string()))
            .unwrap_or_else(|| panic!("the runtime needs {g}/{r}"));
        let want: BTreeSet<String> = verbs.iter().map(|v| v.to_string()).collect();
        assert_eq!(
            have, &want,
            "verbs on {g}/{r}: exactly what the runtime calls"
        );
    }
    // Nothing beyond what the runtime uses.
    let allowed: BTreeSet<(String, String)> = needs
        .iter()
        .map(|(g, r, _)| (g.to_string(), r.to_string()))
        .collect();
    for k in granted.keys() {
        assert!(
            allowed.contains(k),
            "{k:?} is granted but not used by the runtime"
        );
    }
    let binding = find(&docs, "ClusterRoleBinding", "wharf-runtime");
    assert_eq!(binding["subjects"][0]["name"], "wharf-control");
    assert_eq!(binding["roleRef"]["name"], "wharf-runtime");
}
