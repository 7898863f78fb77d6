//! testssl.sh (Debian package `testssl.sh`) against the router's HTTPS listener: no protocol
//! below TLS 1.2, no weak cipher, no known vulnerability. Slow (minutes), so ignored in the
//! test suite; `benches/testssl.sh` runs it and prints the summary kept in SECURITY.md.

// The figures and findings printed are this test's report.
#![allow(clippy::print_stdout)]

mod support;

use std::process::Command;

use support::*;

/// testssl finding ids that must read "not offered".
const OLD_PROTOCOLS: [&str; 4] = ["SSLv2", "SSLv3", "TLS1", "TLS1_1"];
/// Cipher categories that must not be offered.
const WEAK_CIPHERS: [&str; 6] = [
    "cipherlist_NULL",
    "cipherlist_aNULL",
    "cipherlist_EXPORT",
    "cipherlist_LOW",
    "cipherlist_3DES_IDEA",
    "cipherlist_AVERAGE",
];
/// Findings about the test certificate itself (rcgen's 1975–4096 validity, no CRL or OCSP
/// URI): properties of the issuing CA, which operators choose, not of the router's TLS.
fn about_the_test_certificate(id: &str) -> bool {
    matches!(id, "cert_validityPeriod" | "cert_revocation")
}

#[test]
#[ignore = "slow: run by benches/testssl.sh"]
fn testssl_finds_no_old_protocol_weak_cipher_or_vulnerability() {
    let pki = Pki::new();
    let dyno = Dyno::start("web.1");
    let mut s = base(&pki);
    let app = add_app(&mut s, "api", "prod", &[dyno.addr]);
    let sink = Collect::default();
    let r = start(&s, &sink);
    let https = r.addrs().https.unwrap();
    let host = format!("{app}.{DOMAIN}");
    let json = pki.dir.path().join("testssl.json");

    let out = Command::new("testssl")
        .args([
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "off",
            "--nodns",
            "none",
            "--ip",
            "127.0.0.1",
            "--protocols",
            "--std",
            "--fs",
            "--vulnerable",
            "--server-defaults",
            "--add-ca",
        ])
        .arg(pki.ca_path())
        .arg("--jsonfile")
        .arg(&json)
        .arg(format!("https://{host}:{}/", https.port()))
        .output()
        .expect("testssl runs (apt-get install testssl.sh)");
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!(
            "no JSON from testssl ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let findings: Vec<serde_json::Value> = serde_json::from_str(&text).expect("testssl JSON");
    let get = |id: &str| {
        findings
            .iter()
            .find(|f| f["id"] == id)
            .map(|f| {
                (
                    f["severity"].as_str().unwrap_or("").to_owned(),
                    f["finding"].as_str().unwrap_or("").to_owned(),
                )
            })
            .unwrap_or_else(|| ("(absent)".into(), "(absent)".into()))
    };

    println!("| testssl.sh check | severity | finding |");
    println!("|---|---|---|");
    for f in &findings {
        let id = f["id"].as_str().unwrap_or("");
        if id.starts_with("cipher-")
            || id.starts_with("cipher_")
            || id.starts_with("clientsimulation")
        {
            continue;
        }
        println!(
            "| {id} | {} | {} |",
            f["severity"].as_str().unwrap_or(""),
            f["finding"].as_str().unwrap_or("").replace('|', "/")
        );
    }

    let mut problems = Vec::new();
    for p in OLD_PROTOCOLS {
        let (_, finding) = get(p);
        if !finding.starts_with("not offered") {
            problems.push(format!("{p}: {finding}"));
        }
    }
    for c in WEAK_CIPHERS {
        let (_, finding) = get(c);
        if !finding.starts_with("not offered") {
            problems.push(format!("{c}: {finding}"));
        }
    }
    for f in &findings {
        let sev = f["severity"].as_str().unwrap_or("");
        let id = f["id"].as_str().unwrap_or("");
        if matches!(sev, "MEDIUM" | "HIGH" | "CRITICAL") && !about_the_test_certificate(id) {
            problems.push(format!("{id} ({sev}): {}", f["finding"]));
        }
    }
    assert!(
        problems.is_empty(),
        "testssl found problems:\n{}",
        problems.join("\n")
    );
}
