//! Ingest paths: Logplex `POST /logs` (without a socket and once for real), syslog over TCP
//! (both framings) and UDP, with bad input on each.

mod common;

use std::io::{Read as _, Write as _};
use std::time::Duration;

use axum::body::Body;
use common::*;
use tower::ServiceExt as _;
use wharf_config::{LogSettings, Source};
use wharf_logshuttle::{Filter, Handle, Shuttle};

async fn shuttle() -> Handle {
    let p = plan(
        vec![
            app("api", Some("tok-api"), vec![]),
            app("web", Some("tok-web"), vec![]),
        ],
        LogSettings::default(),
    );
    Shuttle::start(options(), p).await.unwrap()
}

fn frames(msgs: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        wharf_logshuttle::wire::push_octet_counted(&mut out, m.as_bytes());
    }
    out
}

fn basic(token: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("token:{token}"))
    )
}

async fn post(
    h: &Handle,
    auth: Option<&str>,
    ctype: &str,
    count: Option<&str>,
    body: Vec<u8>,
) -> (u16, String) {
    let mut req = http::Request::post("/logs").header("content-type", ctype);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    if let Some(c) = count {
        req = req.header("logplex-msg-count", c);
    }
    let resp = h
        .http_router()
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

const M1: &str = "<190>1 2026-11-23T09:30:00.000001+00:00 host app web.1 - - first";
const M2: &str = "<158>1 2026-11-23T09:30:00.000002+00:00 host heroku router - - at=info path=/";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logplex_post_accepts_good_and_refuses_bad_with_reasons() {
    let h = shuttle().await;
    let lp = "application/logplex-1";
    let auth = basic("tok-api");
    let (s, _) = post(&h, Some(&auth), lp, Some("2"), frames(&[M1, M2])).await;
    assert_eq!(s, 204);
    wait_for(30, "posted lines", || {
        h.history("api-default", 10, &Filter::default()).len() == 2
    })
    .await;
    let got = h.history("api-default", 10, &Filter::default());
    assert_eq!(
        (got[0].source, got[0].process.as_str(), got[0].line.as_str()),
        (Source::App, "web.1", "first")
    );
    assert_eq!(got[0].timestamp_us % 1_000_000, 1);
    assert_eq!(
        (got[1].source, got[1].process.as_str()),
        (Source::Heroku, "router")
    );

    // (Authorization, Content-Type, Logplex-Msg-Count, body, status, reason in the body)
    type Case<'a> = (
        Option<String>,
        &'a str,
        Option<&'a str>,
        Vec<u8>,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            None,
            lp,
            Some("1"),
            frames(&[M1]),
            401,
            "Basic authentication",
        ),
        (
            Some(basic("wrong")),
            lp,
            Some("1"),
            frames(&[M1]),
            401,
            "unknown log token",
        ),
        (
            Some(auth.clone()),
            "text/plain",
            Some("1"),
            frames(&[M1]),
            400,
            "application/logplex-1",
        ),
        (
            Some(auth.clone()),
            lp,
            None,
            frames(&[M1]),
            400,
            "Logplex-Msg-Count",
        ),
        (
            Some(auth.clone()),
            lp,
            Some("3"),
            frames(&[M1, M2]),
            400,
            "holds 2 frames",
        ),
        (
            Some(auth.clone()),
            lp,
            Some("1"),
            b"abc <190>1".to_vec(),
            400,
            "expected an octet count",
        ),
        (
            Some(auth.clone()),
            lp,
            Some("1"),
            b"99 <190>1 short".to_vec(),
            400,
            "claims 99 bytes",
        ),
        (
            Some(auth.clone()),
            lp,
            Some("1"),
            frames(&[&format!("{M1}{}", "x".repeat(10_300))]),
            400,
            "over the 10240-byte limit",
        ),
        (
            Some(auth.clone()),
            lp,
            Some("1"),
            frames(&["not syslog"]),
            400,
            "frame 1: not RFC 5424",
        ),
    ];
    for (auth, ctype, count, body, want, reason) in cases {
        let (s, text) = post(&h, auth.as_deref(), ctype, count, body).await;
        assert_eq!(s, want, "{reason}: {text}");
        assert!(text.contains(reason), "{text:?} should say {reason:?}");
    }
    // Nothing of the refused requests got in, and a good one still works.
    let (s, _) = post(&h, Some(&basic("tok-web")), lp, Some("1"), frames(&[M1])).await;
    assert_eq!(s, 204);
    wait_for(30, "web line", || {
        h.history("web-default", 10, &Filter::default()).len() == 1
    })
    .await;
    assert_eq!(h.history("api-default", 10, &Filter::default()).len(), 2);
    assert!(
        h.metrics()
            .ingest_errors
            .with_label_values(&["http", "auth"])
            .get()
            >= 2
    );
    h.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logplex_post_over_a_real_socket() {
    let h = shuttle().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(axum::serve(listener, h.http_router()).into_future());
    let body = frames(&[M1]);
    let resp = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "POST /logs HTTP/1.1\r\nHost: x\r\nContent-Type: application/logplex-1\r\nLogplex-Msg-Count: 1\r\nAuthorization: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            basic("tok-api"),
            body.len()
        )
        .unwrap();
        s.write_all(&body).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
    .await
    .unwrap();
    assert!(resp.starts_with("HTTP/1.1 204"), "{resp}");
    wait_for(30, "line", || {
        h.history("api-default", 10, &Filter::default()).len() == 1
    })
    .await;
    server.abort();
    h.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_tcp_both_framings_and_bad_framing_closes_only_that_connection() {
    let h = shuttle().await;
    let sd =
        r#"<190>1 2026-11-23T09:30:00.000001+00:00 host app web.1 - [wharf token="tok-api"] octet"#;
    let nl = r#"<190>1 2026-11-23T09:30:00.000002+00:00 host app web.2 - [wharf token="tok-api"] newline"#;
    let no_token = "<190>1 - host app web.3 - - no token here";
    let l = h
        .bind_syslog_tcp("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let bound = h
        .bind_syslog_tcp("127.0.0.1:0".parse().unwrap(), Some("tok-web".into()))
        .await
        .unwrap();
    let (a, b) = (l.local_addr(), bound.local_addr());
    let mut good = std::net::TcpStream::connect(a).unwrap();
    let mut bytes = frames(&[sd]);
    bytes.extend_from_slice(format!("{nl}\n").as_bytes());
    bytes.extend_from_slice(&frames(&[no_token]));
    good.write_all(&bytes).unwrap();
    // A bad octet count: that connection is closed.
    let closed = tokio::task::spawn_blocking(move || {
        let mut bad = std::net::TcpStream::connect(a).unwrap();
        bad.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        bad.write_all(b"12x4 garbage").unwrap();
        let mut buf = [0u8; 8];
        matches!(bad.read(&mut buf), Ok(0) | Err(_))
    })
    .await
    .unwrap();
    assert!(closed, "bad framing closes the connection");
    // The good connection still works after that.
    good.write_all(&frames(&[
        r#"<190>1 - host app web.1 - [wharf token="tok-api"] after"#,
    ]))
    .unwrap();
    // A listener bound to an app's token needs none in the message.
    let mut other = std::net::TcpStream::connect(b).unwrap();
    other
        .write_all(&frames(&["<14>1 - host app run.1 - - bound listener"]))
        .unwrap();
    wait_for(30, "tcp lines", || {
        h.history("api-default", 10, &Filter::default()).len() == 3
            && h.history("web-default", 10, &Filter::default()).len() == 1
    })
    .await;
    let got: Vec<_> = h
        .history("api-default", 10, &Filter::default())
        .into_iter()
        .map(|l| l.line)
        .collect();
    assert_eq!(got, ["octet", "newline", "after"]);
    assert_eq!(
        h.history("web-default", 10, &Filter::default())[0].process,
        "run.1"
    );
    let m = h.metrics();
    assert_eq!(
        m.ingest_errors
            .with_label_values(&["syslog-tcp", "framing"])
            .get(),
        1
    );
    assert_eq!(
        m.ingest_errors
            .with_label_values(&["syslog-tcp", "token"])
            .get(),
        1
    );
    h.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_udp_good_and_bad_datagrams() {
    let h = shuttle().await;
    let l = h
        .bind_syslog_udp("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.send_to(b"garbage", l.local_addr()).unwrap();
    s.send_to(
        br#"<190>1 - h app web.1 - [x token="nope"] unknown token"#,
        l.local_addr(),
    )
    .unwrap();
    s.send_to(
        br#"<190>1 - h app web.1 - [x token="tok-api"] udp line"#,
        l.local_addr(),
    )
    .unwrap();
    wait_for(30, "udp line", || {
        h.history("api-default", 10, &Filter::default()).len() == 1
    })
    .await;
    assert_eq!(
        h.history("api-default", 10, &Filter::default())[0].line,
        "udp line"
    );
    let m = h.metrics();
    wait_for(30, "errors counted", || {
        m.ingest_errors
            .with_label_values(&["syslog-udp", "syslog"])
            .get()
            == 1
            && m.ingest_errors
                .with_label_values(&["syslog-udp", "token"])
                .get()
                == 1
    })
    .await;
    h.shutdown(Duration::ZERO).await;
}

/// A `POST /logs` is gathered in the bus's own form and its lines' rates are checked as they
/// are gathered: the excess is dropped with a notice, the POST still answers 204.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logplex_post_lines_are_held_to_the_apps_rate() {
    let mut p = plan(
        vec![app("api", Some("tok-api"), vec![])],
        LogSettings::default(),
    );
    p.apps.get_mut("api-default").unwrap().log_rate = wharf_config::Rate::new(5, 10);
    let h = Shuttle::start(options(), p).await.unwrap();
    let msgs: Vec<String> = (0..100)
        .map(|i| format!("<190>1 - host app web.1 - - n{i}"))
        .collect();
    let refs: Vec<&str> = msgs.iter().map(String::as_str).collect();
    let t = std::time::Instant::now();
    let (status, body) = post(
        &h,
        Some(&basic("tok-api")),
        "application/logplex-1",
        Some("100"),
        frames(&refs),
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let secs = t.elapsed().as_secs_f64().ceil() as usize;
    let history = || h.history("api-default", 2000, &Filter::default());
    wait_for(30, "notice", || {
        history().iter().any(|l| l.line.contains("Log rate limit"))
    })
    .await;
    let kept = history().iter().filter(|l| l.line.starts_with('n')).count();
    assert!(
        kept >= 10 && kept <= 10 + 5 * (secs + 1),
        "kept {kept} of 100 in {secs}s"
    );
}
