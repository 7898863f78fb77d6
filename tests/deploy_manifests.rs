//! The commands in `deploy/kubernetes` are commands this binary takes: every Deployment's
//! container is started with its manifest's args and environment (ConfigMap and Secret values
//! included) and must get past argument parsing. Nothing it would connect to exists here, so each
//! either waits for its peers (router, shuttle) or stops on the unreachable store (control).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn documents() -> Vec<serde_yaml::Value> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for chunk in text.split("\n---") {
            let v: serde_yaml::Value = serde_yaml::from_str(chunk).unwrap();
            if !v.is_null() {
                docs.push(v);
            }
        }
    }
    docs
}

fn str_map(v: &serde_yaml::Value) -> BTreeMap<String, String> {
    v.as_mapping()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            (
                k.as_str().unwrap().to_owned(),
                v.as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn every_deployment_starts_with_its_manifest_args_and_env() {
    let docs = documents();
    let named = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind} {name} not in deploy/kubernetes"))
    };
    let deployments: Vec<_> = docs.iter().filter(|d| d["kind"] == "Deployment").collect();
    assert_eq!(deployments.len(), 3, "control, router, log shuttle");
    for d in deployments {
        let name = d["metadata"]["name"].as_str().unwrap();
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        let mut env = BTreeMap::new();
        for from in c["envFrom"].as_sequence().into_iter().flatten() {
            if let Some(cm) = from["configMapRef"]["name"].as_str() {
                env.extend(str_map(&named("ConfigMap", cm)["data"]));
            }
            if let Some(s) = from["secretRef"]["name"].as_str() {
                env.extend(str_map(&named("Secret", s)["stringData"]));
            }
        }
        for e in c["env"].as_sequence().into_iter().flatten() {
            env.insert(
                e["name"].as_str().unwrap().to_owned(),
                e["value"].as_str().unwrap().to_owned(),
            );
        }
        let args: Vec<String> = c["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
        let data = tempfile::tempdir().unwrap();
        // Paths the pods mount are redirected to scratch; listeners to ports of our own choosing
        // would change what is tested, so the waiting commands are stopped before they bind.
        for v in env.values_mut() {
            *v = v.replace("/var/lib/wharf", &data.path().display().to_string());
        }
        let args: Vec<String> = args
            .iter()
            .map(|a| a.replace("/var/cache/wharf", &data.path().display().to_string()))
            .collect();
        let mut child = Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(&args)
            .env_clear()
            .envs(&env)
            .env("PATH", std::env::var_os("PATH").unwrap())
            .env("WHARF_CONTROL_URL", "http://127.0.0.1:9")
            .env("WHARF_DATABASE_URL", "postgres://nobody@127.0.0.1:9/none")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let end = Instant::now() + Duration::from_secs(3);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() > end {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        // clap exits 2 on a usage error; anything else means the arguments were taken.
        assert_ne!(
            status.and_then(|s| s.code()),
            Some(2),
            "{name}: `wharf {}` refused its arguments:\n{err}",
            args.join(" ")
        );
        assert!(!err.contains("unexpected argument"), "{name}: {err}");
    }
}
