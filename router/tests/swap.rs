//! Hot swap under load: 100 table swaps while clients keep requesting, 0 failed requests.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_swaps_under_load_lose_nothing() {
    let pki = Pki::new();
    let dynos: Vec<Dyno> = (1..=3).map(|i| Dyno::start(&format!("web.{i}"))).collect();
    let mut a = base(&pki);
    let app = add_app(&mut a, "api", "prod", &[dynos[0].addr, dynos[1].addr]);
    let mut b = base(&pki);
    add_app(&mut b, "api", "prod", &[dynos[1].addr, dynos[2].addr]);
    b.sites.push(wharf_config::Site {
        domain: "www.example.com".into(),
        internal: false,
    });
    b.routes.push(wharf_config::Route {
        site: "www.example.com".into(),
        source_path: "/".into(),
        app: app.clone(),
        target_path: "/".into(),
    });
    let (ta, tb) = (compile(&a), compile(&b));
    let router = Arc::new(start(&a, &Collect::default()));
    let https = router.addrs().https.unwrap();
    let host = format!("{app}.{DOMAIN}");

    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .resolve(&host, https)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (client, done, ok, failed) = (client.clone(), done.clone(), ok.clone(), failed.clone());
        let url = format!("https://{host}:{}/x", https.port());
        clients.push(tokio::spawn(async move {
            // Bounded: stops when the swaps are done, or after 20 000 requests.
            for _ in 0..20_000 {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                match client.get(&url).send().await {
                    Ok(r) => {
                        let status = r.status();
                        if status == 200 && r.bytes().await.is_ok() {
                            ok.fetch_add(1, Ordering::Relaxed)
                        } else {
                            eprintln!("status {status}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    }
                    Err(e) => {
                        eprintln!("error {e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    for i in 0..100 {
        let t = if i % 2 == 0 { tb.clone() } else { ta.clone() };
        let r = router.clone();
        tokio::task::spawn_blocking(move || r.apply(t).unwrap())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(router.version(), 101);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests during swaps"
    );
    assert!(
        ok.load(Ordering::Relaxed) >= 100,
        "the load loop ran: {}",
        ok.load(Ordering::Relaxed)
    );
}
