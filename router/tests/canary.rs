//! Canary releases through the router: an exact weighted split, stickiness, and an abort that
//! fires for a canary answering 500s and never for a healthy one.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::*;
use wharf_config::*;

fn canary_snapshot(
    pki: &Pki,
    stable: &Dyno,
    canary: &Dyno,
    weight: u32,
    sticky: bool,
) -> (Snapshot, String) {
    let mut s = base(pki);
    let app = add_app(&mut s, "api", "prod", &[stable.addr]);
    s.releases.push(Release {
        app: app.clone(),
        version: 2,
        artifact: Artifact::Image("test:2".into()),
        config_vars: Default::default(),
    });
    s.endpoints.push(Endpoint {
        app: app.clone(),
        release: 2,
        process: "web.1".into(),
        address: canary.addr,
        state: DynoState::Up,
    });
    s.canaries.push(Canary {
        app: app.clone(),
        stable_release: 1,
        canary_release: 2,
        weight,
        sticky,
        abort: AbortPolicy {
            enabled: true,
            window_secs: 60,
            min_requests: 50,
            z_threshold: 2.326,
            min_rate_delta: 0.02,
        },
    });
    (s, app)
}

async fn count(
    client: &reqwest::Client,
    url: &str,
    n: usize,
    headers: &[(&str, &str)],
) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let mut req = client.get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.unwrap();
        let dyno = r
            .headers()
            .get("x-dyno")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let _ = r.bytes().await;
        *seen.entry(dyno).or_default() += 1;
    }
    seen
}

fn client(pki: &Pki, host: &str, addr: std::net::SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .resolve(host, addr)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_is_exact_and_a_healthy_canary_is_left_alone() {
    let pki = Pki::new();
    let (stable, canary) = (Dyno::start("stable"), Dyno::start("canary"));
    let (s, app) = canary_snapshot(&pki, &stable, &canary, 10, false);
    let r = start(&s, &Collect::default());
    let mut events = r.events();
    let https = r.addrs().https.unwrap();
    let host = format!("{app}.{DOMAIN}");
    let c = client(&pki, &host, https);
    let seen = count(&c, &format!("https://{host}:{}/", https.port()), 2000, &[]).await;
    // Exactly 10 %: the split is counted, not drawn.
    assert_eq!(seen.get("canary").copied(), Some(200), "{seen:?}");
    assert_eq!(seen.get("stable").copied(), Some(1800), "{seen:?}");
    assert!(
        events.try_recv().is_err(),
        "a healthy canary is not aborted"
    );
    // A request is counted in its logging phase, after the client has its response: wait
    // (bounded) for the last one to land rather than read the metrics at once.
    let want =
        "wharf_router_canary_requests_total{app=\"api-prod\",class=\"2xx\",side=\"canary\"} 200";
    let mut m = String::new();
    for _ in 0..100 {
        m = String::from_utf8(r.metrics().render()).unwrap();
        if m.contains(want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(m.contains(want), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_aborted_with_its_figures() {
    let pki = Pki::new();
    let (stable, canary) = (Dyno::start("stable"), Dyno::failing("canary", 500));
    let (s, app) = canary_snapshot(&pki, &stable, &canary, 50, false);
    let sink = Collect::default();
    let r = start(&s, &sink);
    let mut events = r.events();
    let https = r.addrs().https.unwrap();
    let host = format!("{app}.{DOMAIN}");
    let c = client(&pki, &host, https);
    let url = format!("https://{host}:{}/", https.port());
    let seen = count(&c, &url, 200, &[]).await;
    assert!(seen.get("canary").copied().unwrap_or(0) >= 50, "{seen:?}");
    let ev = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .unwrap()
        .unwrap();
    match ev {
        RouterEvent::CanaryAborted {
            app: a,
            canary_release,
            stable: st,
            canary: ca,
            z,
            ..
        } => {
            assert_eq!((a.as_str(), canary_release), (app.as_str(), 2));
            assert!(ca.requests >= 50 && ca.errors_5xx == ca.requests, "{ca:?}");
            assert!(st.requests >= 50 && st.errors_5xx == 0, "{st:?}");
            assert!(z > 2.326, "{z}");
        }
    }
    assert!(
        r.canary_figures(&app).unwrap().1,
        "the in-process view shows the abort"
    );
    // After the abort, every request goes to stable.
    let seen = count(&c, &url, 100, &[]).await;
    assert_eq!(seen.get("stable").copied(), Some(100), "{seen:?}");
    // The verdict survives a swap of the same canary release.
    r.apply(support::compile(&s)).unwrap();
    let seen = count(&c, &url, 50, &[]).await;
    assert_eq!(seen.get("stable").copied(), Some(50), "{seen:?}");
    let m = String::from_utf8(r.metrics().render()).unwrap();
    assert!(
        m.contains("wharf_router_canary_aborts_total{app=\"api-prod\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_canary_keeps_a_client_on_its_side() {
    let pki = Pki::new();
    let (stable, canary) = (Dyno::start("stable"), Dyno::start("canary"));
    let (s, app) = canary_snapshot(&pki, &stable, &canary, 30, true);
    let r = start(&s, &Collect::default());
    let https = r.addrs().https.unwrap();
    let host = format!("{app}.{DOMAIN}");
    let c = client(&pki, &host, https);
    let url = format!("https://{host}:{}/", https.port());
    // A first request without a cookie is told its side.
    let resp = c.get(&url).send().await.unwrap();
    let cookie = resp
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cookie.starts_with("wharf-canary="), "{cookie}");
    for side in ["canary", "stable"] {
        let seen = count(&c, &url, 30, &[("cookie", &format!("wharf-canary={side}"))]).await;
        assert_eq!(seen.get(side).copied(), Some(30), "{side}: {seen:?}");
    }
}
