//! Drains against real receivers on 127.0.0.1: rsyslog over TCP, TLS and UDP writing files,
//! an HTTPS receiver, a receiver killed and brought back, and one that never reads.

mod common;

use std::time::Duration;

use common::*;
use wharf_config::LogSettings;
use wharf_logshuttle::{Filter, Shuttle, wire};

fn expected(lines: &[wharf_config::LogLine], host: &str) -> Vec<String> {
    lines
        .iter()
        .map(|l| wire::encode_message(l, host))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_tcp_tls_udp_drains_deliver_exact_lines() {
    let pki = pki();
    let tcp = Rsyslog::start(Proto::Tcp, None);
    let tls = Rsyslog::start(Proto::Tls, Some(&pki));
    let udp = Rsyslog::start(Proto::Udp, None);
    let p = plan(
        vec![AppSpec {
            name: "api",
            space: "default",
            token: None,
            drains: vec![
                (tcp.url(), Some("d.tcp".into())),
                (tls.url(), Some("d.tls".into())),
                (udp.url(), Some("d.udp".into())),
            ],
        }],
        LogSettings::default(),
    );
    let mut opts = options();
    opts.tls = Some(wharf_logshuttle::tls::client_config_from_pem(pki.ca_pem.as_bytes()).unwrap());
    let shuttle = Shuttle::start(opts, p).await.unwrap();
    let sink = shuttle.sink();
    let mut sent = Vec::new();
    for i in 0..50 {
        let mut l = line(
            "api-default",
            if i % 2 == 0 { "web.1" } else { "router" },
            &format!("line {i} with ünïcode and [brackets]"),
        );
        if i % 2 == 1 {
            l.source = wharf_config::Source::Heroku;
        }
        sent.push(l.clone());
        sink.send(l);
    }
    for (r, host) in [(&tcp, "d.tcp"), (&tls, "d.tls"), (&udp, "d.udp")] {
        wait_for(60, &format!("{:?} receiver", r.proto), || {
            r.lines().len() >= sent.len()
        })
        .await;
        assert_eq!(r.lines(), expected(&sent, host), "{:?} drain", r.proto);
    }
    assert!(tls.lines()[0].starts_with("<190>1 "));
    assert!(tls.lines()[1].starts_with("<158>1 "));
    let delivered = shuttle
        .metrics()
        .drain_delivered
        .with_label_values(&[
            "api-default",
            &wharf_config::shuttle_plan::drain_id("api-default", &tcp.url()),
        ])
        .get();
    assert_eq!(delivered, 50);
    shuttle.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_drain_verifies_the_server_certificate() {
    let pki = pki();
    let other = common::pki();
    let tls = Rsyslog::start(Proto::Tls, Some(&pki));
    let p = plan(
        vec![app("api", None, vec![tls.url()])],
        LogSettings::default(),
    );
    let mut opts = options();
    // Trust a different CA: the handshake must fail and nothing be delivered.
    opts.tls =
        Some(wharf_logshuttle::tls::client_config_from_pem(other.ca_pem.as_bytes()).unwrap());
    let shuttle = Shuttle::start(opts, p).await.unwrap();
    shuttle.sink().send(line("api-default", "web.1", "secret"));
    let id = wharf_config::shuttle_plan::drain_id("api-default", &tls.url());
    let m = shuttle.metrics().clone();
    // The drain keeps retrying; the receiver never gets the line.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(tls.lines().is_empty());
    assert_eq!(
        m.drain_connected
            .with_label_values(&["api-default", &id])
            .get(),
        0
    );
    assert_eq!(
        m.drain_delivered
            .with_label_values(&["api-default", &id])
            .get(),
        0
    );
    shuttle.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_drain_headers_batching_and_retry_with_same_frame_id() {
    let pki = pki();
    let recv = HttpsReceiver::start(&pki, vec![503]).await;
    let url = format!("https://user:pa%40ss@127.0.0.1:{}/logs?x=1", recv.port);
    let p = plan(
        vec![AppSpec {
            name: "api",
            space: "default",
            token: None,
            drains: vec![(url, Some("d.https".into()))],
        }],
        LogSettings::default(),
    );
    let mut opts = options();
    opts.tls = Some(wharf_logshuttle::tls::client_config_from_pem(pki.ca_pem.as_bytes()).unwrap());
    opts.http_batch_lines = 10;
    opts.http_linger = Duration::from_millis(300);
    let shuttle = Shuttle::start(opts, p).await.unwrap();
    let sink = shuttle.sink();
    let sent: Vec<_> = (0..25)
        .map(|i| line("api-default", "web.1", &format!("https {i}")))
        .collect();
    for l in &sent {
        sink.send(l.clone());
    }
    let delivered = || {
        recv.seen
            .lock()
            .iter()
            .filter(|s| s.status == 200)
            .map(|s| wire::split_logplex_body(&s.body).unwrap().len())
            .sum::<usize>()
    };
    wait_for(60, "all 25 lines over HTTPS", || delivered() >= 25).await;
    let seen = recv.seen.lock().clone();
    assert_eq!(seen[0].status, 503);
    assert_eq!(seen[1].status, 200);
    let fid = |s: &Seen| s.headers["logplex-frame-id"].to_str().unwrap().to_owned();
    assert_eq!(
        fid(&seen[0]),
        fid(&seen[1]),
        "a retry carries the same Frame-Id"
    );
    assert_eq!(seen[0].body, seen[1].body);
    let mut got = Vec::new();
    for s in seen.iter().filter(|s| s.status == 200) {
        assert_eq!(s.path, "/logs");
        assert_eq!(s.headers["content-type"], "application/logplex-1");
        assert_eq!(s.headers["logplex-drain-token"], "d.https");
        assert!(
            s.headers["user-agent"]
                .to_str()
                .unwrap()
                .starts_with("Wharf-Logshuttle/")
        );
        assert_eq!(s.headers["authorization"], "Basic dXNlcjpwYUBzcw==");
        let frames = wire::split_logplex_body(&s.body).unwrap();
        assert_eq!(
            s.headers["logplex-msg-count"].to_str().unwrap(),
            frames.len().to_string()
        );
        assert!(frames.len() <= 10, "batches hold at most 10 lines");
        got.extend(
            frames
                .iter()
                .map(|f| String::from_utf8(f.to_vec()).unwrap()),
        );
    }
    let ids: std::collections::BTreeSet<_> = seen.iter().skip(1).map(fid).collect();
    assert_eq!(ids.len(), seen.len() - 1, "each batch has its own Frame-Id");
    assert_eq!(got, expected(&sent, "d.https"));
    let id = wharf_config::shuttle_plan::drain_id("api-default", &shuttle_url(&recv));
    assert!(
        shuttle
            .metrics()
            .drain_retried
            .with_label_values(&["api-default", &id])
            .get()
            >= 10
    );
    shuttle.shutdown(Duration::from_secs(5)).await;
}

fn shuttle_url(r: &HttpsReceiver) -> String {
    format!("https://user:pa%40ss@127.0.0.1:{}/logs?x=1", r.port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_drain_drops_a_batch_on_other_4xx() {
    let pki = pki();
    let recv = HttpsReceiver::start(&pki, vec![400]).await;
    let url = format!("https://127.0.0.1:{}/", recv.port);
    let p = plan(
        vec![app("api", None, vec![url.clone()])],
        LogSettings::default(),
    );
    let mut opts = options();
    opts.tls = Some(wharf_logshuttle::tls::client_config_from_pem(pki.ca_pem.as_bytes()).unwrap());
    let shuttle = Shuttle::start(opts, p).await.unwrap();
    shuttle
        .sink()
        .send(line("api-default", "web.1", "rejected"));
    let id = wharf_config::shuttle_plan::drain_id("api-default", &url);
    let m = shuttle.metrics().clone();
    wait_for(30, "the batch counted as dropped", || {
        m.drain_dropped
            .with_label_values(&["api-default", &id])
            .get()
            == 1
    })
    .await;
    shuttle
        .sink()
        .send(line("api-default", "web.1", "accepted"));
    wait_for(30, "the next batch delivered", || {
        m.drain_delivered
            .with_label_values(&["api-default", &id])
            .get()
            == 1
    })
    .await;
    assert_eq!(recv.seen.lock().len(), 2, "no retry of a 400");
    shuttle.shutdown(Duration::ZERO).await;
}

/// Current-thread runtime: a burst sent from the test body reaches the drain buffer whole,
/// so the number dropped is exact.
#[tokio::test]
async fn receiver_down_then_back_buffered_lines_arrive_and_overflow_says_l10() {
    let mut rs = Rsyslog::start(Proto::Tcp, None);
    let settings = LogSettings {
        drain_buffer_lines: 10,
        ..LogSettings::default()
    };
    let p = plan(
        vec![AppSpec {
            name: "api",
            space: "default",
            token: None,
            drains: vec![(rs.url(), Some("d.t".into()))],
        }],
        settings,
    );
    let shuttle = Shuttle::start(options(), p).await.unwrap();
    let sink = shuttle.sink();
    let first: Vec<_> = (0..5)
        .map(|i| line("api-default", "web.1", &format!("a{i}")))
        .collect();
    first.iter().for_each(|l| sink.send(l.clone()));
    wait_for(30, "first lines", || rs.lines().len() == 5).await;

    // Receiver down: lines wait in the buffer, then arrive when it is back.
    rs.kill();
    let second: Vec<_> = (0..5)
        .map(|i| line("api-default", "web.1", &format!("b{i}")))
        .collect();
    second.iter().for_each(|l| sink.send(l.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    rs.restart();
    wait_for(60, "buffered lines after restart", || {
        rs.lines().len() >= 10
    })
    .await;
    let mut want = expected(&first, "d.t");
    want.extend(expected(&second, "d.t"));
    assert_eq!(rs.lines(), want);

    // Down again, longer than the stall deadline (1 s), and a burst of 25 into a buffer of
    // 10: the drain holds the 10 it took before it saw the receiver gone, 10 wait in the
    // buffer and hold the bus back until the deadline; then the drain is declared stalled and
    // the oldest 5 in the buffer are dropped. Back again: those 10, the L10 notice, the last 10.
    rs.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third: Vec<_> = (0..25)
        .map(|i| line("api-default", "web.1", &format!("c{i}")))
        .collect();
    third.iter().for_each(|l| sink.send(l.clone()));
    let id = wharf_config::shuttle_plan::drain_id("api-default", &rs.url());
    let m = shuttle.metrics().clone();
    wait_for(30, "the drain declared stalled", || {
        m.drain_stalled
            .with_label_values(&["api-default", &id])
            .get()
            == 1
    })
    .await;
    rs.restart();
    wait_for(60, "L10 and the last 20 lines", || rs.lines().len() >= 31).await;
    let got = rs.lines();
    assert_eq!(got.len(), 31, "{got:#?}");
    assert_eq!(got[10..20].to_vec(), expected(&third[..10], "d.t"));
    let l10 = &got[20];
    assert!(l10.starts_with("<158>1 "), "{l10}");
    assert!(
        l10.contains(
            " d.t heroku logplex - - Error L10 (output buffer overflow): 5 messages dropped since "
        ),
        "{l10}"
    );
    assert_eq!(got[21..].to_vec(), expected(&third[15..], "d.t"));
    assert_eq!(
        m.drain_stalled
            .with_label_values(&["api-default", &id])
            .get(),
        0,
        "caught up"
    );
    assert_eq!(
        m.drain_dropped
            .with_label_values(&["api-default", &id])
            .get(),
        5
    );
    // The notice is in the app's stream too.
    let hist = shuttle.history("api-default", 1500, &Filter::default());
    assert!(
        hist.iter()
            .any(|l| l.process == "logplex" && l.line.contains("5 messages dropped"))
    );
    shuttle.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_never_reads_does_not_slow_the_others() {
    // Accepts and never reads.
    let stalled = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stalled_port = stalled.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = stalled.accept().await {
            held.push(s);
        }
    });
    let same_app = Rsyslog::start(Proto::Tcp, None);
    let other_app = Rsyslog::start(Proto::Tcp, None);
    let stalled_url = format!("syslog://127.0.0.1:{stalled_port}");
    let settings = LogSettings {
        drain_buffer_lines: 5_000,
        ..LogSettings::default()
    };
    let p = plan(
        vec![
            app("a", None, vec![stalled_url.clone(), same_app.url()]),
            app("b", None, vec![other_app.url()]),
        ],
        settings,
    );
    let shuttle = Shuttle::start(options(), p).await.unwrap();
    let sink = shuttle.sink();
    let pad = "x".repeat(200);
    let total = 60_000;
    let chunk = 2_000;
    let m = shuttle.metrics().clone();
    let a_id = wharf_config::shuttle_plan::drain_id("a-default", &same_app.url());
    let b_id = wharf_config::shuttle_plan::drain_id("b-default", &other_app.url());
    let s_id = wharf_config::shuttle_plan::drain_id("a-default", &stalled_url);
    let mut sent = 0;
    while sent < total {
        for i in sent..sent + chunk {
            sink.send(line("a-default", "web.1", &format!("{i} {pad}")));
            sink.send(line("b-default", "web.1", &format!("{i} {pad}")));
        }
        sent += chunk;
        // Keep the healthy drains within their buffers; the stalled one is never waited for.
        let want = (sent - chunk) as u64;
        wait_for(60, "healthy drains to keep up", || {
            m.drain_delivered
                .with_label_values(&["a-default", &a_id])
                .get()
                >= want
                && m.drain_delivered
                    .with_label_values(&["b-default", &b_id])
                    .get()
                    >= want
        })
        .await;
    }
    wait_for(60, "all lines at both healthy receivers", || {
        same_app.lines().len() >= total && other_app.lines().len() >= total
    })
    .await;
    for r in [&same_app, &other_app] {
        let got = r.lines();
        assert_eq!(got.len(), total);
        for (i, l) in got.iter().enumerate() {
            assert!(
                l.ends_with(&format!(" - - {i} {pad}")),
                "line {i} out of order: {l}"
            );
        }
    }
    assert_eq!(
        m.drain_dropped
            .with_label_values(&["a-default", &a_id])
            .get(),
        0
    );
    assert_eq!(
        m.drain_dropped
            .with_label_values(&["b-default", &b_id])
            .get(),
        0
    );
    assert!(
        m.drain_dropped
            .with_label_values(&["a-default", &s_id])
            .get()
            > 0,
        "the stalled drain sheds"
    );
    assert!(
        m.drain_buffer
            .with_label_values(&["a-default", &s_id])
            .get()
            <= 5_000
    );
    shuttle.shutdown(Duration::ZERO).await;
    hold.abort();
}
