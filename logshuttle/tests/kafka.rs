//! The Kafka bus against a real Kafka-protocol broker (tansu with sqlite storage) started here:
//! end to end through a drain, and a shuttle killed with SIGKILL mid-stream and restarted.

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use wharf_config::LogSettings;
use wharf_logshuttle::{Bus, BusChoice, Filter, KafkaBus, KafkaOptions, Shuttle, wire};

fn kafka_opts(brokers: &str) -> KafkaOptions {
    let id = uuid::Uuid::new_v4().simple().to_string();
    KafkaOptions {
        brokers: brokers.to_owned(),
        topic: format!("logs-{id}"),
        group: format!("shuttle-{id}"),
        partitions: 4,
        instance: None,
        record_format: Default::default(),
    }
}

fn two_apps(drain: &str) -> wharf_config::ShuttlePlan {
    plan(
        vec![
            AppSpec {
                name: "a",
                space: "default",
                token: Some("tok-a"),
                drains: vec![(drain.to_owned(), Some("d.a".into()))],
            },
            AppSpec {
                name: "b",
                space: "default",
                token: Some("tok-b"),
                drains: vec![(drain.to_owned(), Some("d.b".into()))],
            },
        ],
        LogSettings::default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_bus_end_to_end_through_a_drain() {
    let broker = Tansu::start();
    let rs = Rsyslog::start(Proto::Tcp, None);
    let mut opts = options();
    opts.bus = BusChoice::Kafka(kafka_opts(&broker.brokers()));
    let shuttle = Shuttle::start(opts, two_apps(&rs.url())).await.unwrap();
    assert_eq!(shuttle.bus_kind(), "kafka");
    let sink = shuttle.sink();
    let mut sent: HashMap<&str, Vec<String>> = HashMap::new();
    for i in 0..300 {
        for (app, host) in [("a-default", "d.a"), ("b-default", "d.b")] {
            let l = line(app, "web.1", &format!("{app} {i}"));
            sent.entry(host)
                .or_default()
                .push(wire::encode_message(&l, host));
            sink.send(l);
        }
    }
    wait_for(90, "600 lines via Kafka", || rs.lines().len() >= 600).await;
    let got = rs.lines();
    assert_eq!(got.len(), 600);
    for (host, want) in &sent {
        let mine: Vec<String> = got
            .iter()
            .filter(|l| l.contains(&format!(" {host} ")))
            .cloned()
            .collect();
        assert_eq!(&mine, want, "app of {host}: every line once, in order");
    }
    assert_eq!(
        shuttle.history("a-default", 1500, &Filter::default()).len(),
        300
    );
    shuttle.shutdown(Duration::from_secs(10)).await;
}

/// Not a test on its own: the shuttle process the crash test starts and kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_shuttle_node() {
    let Ok(spec) = std::env::var("WHARF_TEST_CHILD") else {
        return;
    };
    let v: Vec<&str> = spec.split('|').collect();
    let mut opts = options();
    opts.bus = BusChoice::Kafka(KafkaOptions {
        brokers: v[0].to_owned(),
        topic: v[1].to_owned(),
        group: v[2].to_owned(),
        partitions: 4,
        instance: v.get(4).filter(|i| !i.is_empty()).map(|i| (*i).to_owned()),
        record_format: Default::default(),
    });
    let shuttle = Shuttle::start(opts, two_apps(v[3])).await.unwrap();
    if let Ok(port_file) = std::env::var("WHARF_TEST_HTTP_PORT_FILE") {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(wharf_logshuttle::Handle::serve(l, shuttle.http_router()));
        std::fs::write(port_file, port.to_string()).unwrap();
    }
    tokio::time::sleep(Duration::from_secs(300)).await;
}

fn spawn_child(k: &KafkaOptions, drain: &str, log: &std::path::Path) -> Child {
    spawn_child_with(k, drain, log, None)
}

fn spawn_child_with(
    k: &KafkaOptions,
    drain: &str,
    log: &std::path::Path,
    http_port_file: Option<&std::path::Path>,
) -> Child {
    let log = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    if let Some(f) = http_port_file {
        cmd.env("WHARF_TEST_HTTP_PORT_FILE", f);
    }
    cmd.args(["child_shuttle_node", "--exact", "--nocapture"])
        .env(
            "WHARF_TEST_CHILD",
            format!(
                "{}|{}|{}|{}|{}",
                k.brokers,
                k.topic,
                k.group,
                drain,
                k.instance.as_deref().unwrap_or_default()
            ),
        )
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Per app: the sequence numbers received, in arrival order.
fn received(rs: &Rsyslog) -> HashMap<String, Vec<usize>> {
    let mut out: HashMap<String, Vec<usize>> = HashMap::new();
    for l in rs.lines() {
        let Some(msg) = l.split(" - - ").nth(1) else {
            continue;
        };
        let mut it = msg.split(' ');
        let (Some(app), Some(n)) = (it.next(), it.next()) else {
            continue;
        };
        if let Ok(n) = n.parse() {
            out.entry(app.to_owned()).or_default().push(n);
        }
    }
    out
}

fn complete(r: &HashMap<String, Vec<usize>>, n: usize) -> bool {
    ["a-default", "b-default"].iter().all(|a| {
        let mut seen = vec![false; n];
        r.get(*a)
            .into_iter()
            .flatten()
            .for_each(|&i| seen[i] = true);
        seen.iter().all(|s| *s)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuttle_killed_mid_stream_and_restarted_loses_nothing_and_keeps_order() {
    let broker = Tansu::start();
    let rs = Rsyslog::start(Proto::Tcp, None);
    // The same shuttle restarted: the same static member of the group. (A new dynamic member
    // joining while the killed one is still registered can be left with no partitions by
    // tansu 0.6: see `KafkaOptions::instance`.)
    let k = KafkaOptions {
        instance: Some("shuttle-1".to_owned()),
        ..kafka_opts(&broker.brokers())
    };
    let metrics = wharf_logshuttle::Metrics::new(prometheus::Registry::new()).unwrap();
    let producer = KafkaBus::connect(k.clone(), metrics).await.unwrap();
    let n = 4_000;
    let publish = |from: usize, to: usize| {
        let mut lines = Vec::new();
        for i in from..to {
            for app in ["a-default", "b-default"] {
                lines.push(line(app, "web.1", &format!("{app} {i}")));
            }
        }
        lines
    };
    let mut first = publish(0, n / 2);
    producer.publish(&mut first).await.unwrap();
    let log1 = rs.dir.path().join("child1.log");
    let log2 = rs.dir.path().join("child2.log");
    let mut child = spawn_child(&k, &rs.url(), &log1);
    wait_for(90, "the first shuttle to deliver some lines", || {
        rs.lines().len() >= 500
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let before = rs.lines().len();
    assert!(before < n * 2, "killed mid-stream");
    let mut second = publish(n / 2, n);
    producer.publish(&mut second).await.unwrap();
    let mut child = spawn_child(&k, &rs.url(), &log2);
    let ok = {
        let end = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            if complete(&received(&rs), n) {
                break true;
            }
            if std::time::Instant::now() > end {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    if !ok {
        let r = received(&rs);
        for (app, seq) in &r {
            let mut seen = vec![false; n];
            seq.iter().for_each(|&i| seen[i] = true);
            let missing: Vec<usize> = (0..n).filter(|&i| !seen[i]).collect();
            eprintln!(
                "{app}: {} received, {} missing, first missing {:?}",
                seq.len(),
                missing.len(),
                missing.first()
            );
        }
        for l in [&log1, &log2] {
            let text = std::fs::read_to_string(l).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!(
                "--- {} (last 40 lines, newest first)\n{}",
                l.display(),
                tail.join("\n")
            );
        }
        eprintln!(
            "--- tansu\n{}",
            std::fs::read_to_string(broker.dir.path().join("tansu.log"))
                .unwrap_or_default()
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert!(ok, "every line arrives at least once");
    for (app, seq) in received(&rs) {
        // In order per app: dropping repeats (redelivery after the crash) leaves 0..n.
        let mut seen = vec![false; n];
        let firsts: Vec<usize> = seq
            .iter()
            .copied()
            .filter(|&i| !std::mem::replace(&mut seen[i], true))
            .collect();
        assert_eq!(firsts, (0..n).collect::<Vec<_>>(), "{app} in order");
        // A repeat only ever restarts from an earlier committed point and runs forward.
        for w in seq.windows(2) {
            assert!(
                w[1] == w[0] + 1 || w[1] <= w[0],
                "{app}: a gap {} → {}",
                w[0],
                w[1]
            );
        }
    }
}

/// A backlog on Kafka and a drain that is slow but keeps reading: the bus waits for it (nothing
/// dropped, no L10, every line in order), while in the same shuttle a drain that never reads is
/// declared stalled after the deadline and sheds, and the other app's drain gets every line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_drain_holds_the_bus_back_and_a_stalled_one_is_cut_loose() {
    let broker = Tansu::start();
    let k = kafka_opts(&broker.brokers());
    // A few MB/s through an 8 KiB receive buffer: far slower than Kafka hands out the backlog.
    let slow = SlowReceiver::start(16 * 1024, Duration::from_millis(5));
    let stalled = StalledReceiver::start().await;
    let other = Rsyslog::start(Proto::Tcp, None);
    // More than the kernel's socket buffers of the stalled connection hold.
    let n = 30_000;
    let pad = "y".repeat(200);
    let mut backlog = Vec::new();
    for i in 0..n {
        backlog.push(line("a-default", "web.1", &format!("{i} {pad}")));
        backlog.push(line("b-default", "web.1", &format!("{i} {pad}")));
    }
    let metrics = wharf_logshuttle::Metrics::new(prometheus::Registry::new()).unwrap();
    let producer = KafkaBus::connect(k.clone(), metrics).await.unwrap();
    producer.publish(&mut backlog).await.unwrap();

    let settings = LogSettings {
        drain_buffer_lines: 200,
        ..LogSettings::default()
    };
    let p = plan(
        vec![
            app("a", None, vec![slow.url()]),
            app("b", None, vec![stalled.url(), other.url()]),
        ],
        settings,
    );
    let mut opts = options();
    opts.bus = BusChoice::Kafka(k);
    opts.drain_stall_timeout = Duration::from_secs(2);
    let shuttle = Shuttle::start(opts, p).await.unwrap();
    let m = shuttle.metrics().clone();
    let id = |app: &str, url: &str| wharf_config::shuttle_plan::drain_id(app, url);
    let (slow_id, stalled_id, other_id) = (
        id("a-default", &slow.url()),
        id("b-default", &stalled.url()),
        id("b-default", &other.url()),
    );
    // The consumer-lag gauge shows the backlog the slow drain holds back, then none.
    let lag = || -> i64 {
        (0..4)
            .map(|p| m.kafka_lag.with_label_values(&[&p.to_string()]).get())
            .sum()
    };
    let mut max_lag = 0;
    wait_for(
        240,
        "every line at the slow drain and the other app's drain",
        || {
            max_lag = max_lag.max(lag());
            slow.frames.lock().len() >= n && other.lines().len() >= n
        },
    )
    .await;
    assert!(max_lag > 0, "the lag gauge showed the backlog");
    wait_for(30, "the lag gauge back to 0", || lag() == 0).await;
    let got = slow.frames.lock().clone();
    assert_eq!(got.len(), n, "no L10, no repeats");
    for (i, f) in got.iter().enumerate() {
        assert!(
            f.ends_with(&format!(" - - {i} {pad}")),
            "slow drain, line {i}: {f}"
        );
    }
    let got = other.lines();
    assert_eq!(got.len(), n);
    for (i, f) in got.iter().enumerate() {
        assert!(
            f.ends_with(&format!(" - - {i} {pad}")),
            "other app, line {i}: {f}"
        );
    }
    let dropped = |app: &str, d: &str| m.drain_dropped.with_label_values(&[app, d]).get();
    assert_eq!(
        dropped("a-default", &slow_id),
        0,
        "the slow drain lost nothing"
    );
    assert_eq!(dropped("b-default", &other_id), 0);
    assert!(
        dropped("b-default", &stalled_id) > 0,
        "the stalled drain sheds"
    );
    assert_eq!(
        m.drain_stalled
            .with_label_values(&["b-default", &stalled_id])
            .get(),
        1
    );
    assert_eq!(
        m.drain_stalled
            .with_label_values(&["a-default", &slow_id])
            .get(),
        0
    );
    shuttle.shutdown(Duration::ZERO).await;
}

/// `POST /logs` with `lines` for app a; the status code.
fn post_lines(port: u16, from: usize, to: usize) -> u16 {
    post_lines_timeout(port, from, to, Duration::from_secs(60)).0
}

/// `POST /logs` with `lines` for app a, waiting at most `timeout` for the answer: the status
/// (0 when none came) and the body.
fn post_lines_timeout(port: u16, from: usize, to: usize, timeout: Duration) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut body = Vec::new();
    for i in from..to {
        let m = format!("<190>1 2026-11-23T10:00:00.000000+00:00 h app web.1 - - a-default {i}");
        wire::push_octet_counted(&mut body, m.as_bytes());
    }
    let auth = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode("token:tok-a")
    };
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    write!(
        s,
        "POST /logs HTTP/1.1\r\nHost: x\r\nContent-Type: application/logplex-1\r\nLogplex-Msg-Count: {}\r\nAuthorization: Basic {auth}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        to - from,
        body.len()
    )
    .unwrap();
    s.write_all(&body).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Accepted means durable: every line of every `POST /logs` answered 204 arrives after the
/// shuttle is killed with SIGKILL right after answering, and restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logplex_lines_answered_204_survive_a_kill() {
    let broker = Tansu::start();
    let rs = Rsyslog::start(Proto::Tcp, None);
    let k = KafkaOptions {
        instance: Some("shuttle-1".to_owned()),
        ..kafka_opts(&broker.brokers())
    };
    let port_file = rs.dir.path().join("http-port");
    let log1 = rs.dir.path().join("child1.log");
    let mut child = spawn_child_with(&k, &rs.url(), &log1, Some(&port_file));
    let mut port = 0u16;
    wait_for(90, "the child's HTTP port", || {
        port = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0);
        port != 0
    })
    .await;
    let batches = 20;
    let per = 200;
    let acked = tokio::task::spawn_blocking(move || {
        let mut acked = 0;
        for b in 0..batches {
            if post_lines(port, b * per, (b + 1) * per) != 204 {
                break;
            }
            acked = (b + 1) * per;
        }
        acked
    })
    .await
    .unwrap();
    // Killed right after its last answer: whatever it acknowledged must be on Kafka already.
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(acked, batches * per, "every POST answered 204");
    let log2 = rs.dir.path().join("child2.log");
    let mut child = spawn_child(&k, &rs.url(), &log2);
    let seen = || {
        let mut seen = vec![false; acked];
        for n in received(&rs).remove("a-default").unwrap_or_default() {
            if n < acked {
                seen[n] = true;
            }
        }
        seen.iter().filter(|s| **s).count()
    };
    let end = std::time::Instant::now() + Duration::from_secs(120);
    while seen() < acked && std::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        seen(),
        acked,
        "every acknowledged line arrives at least once"
    );
}

/// One `POST /logs` of the outage test: its lines, status, body, and when it was answered.
#[derive(Debug, Clone)]
struct Post {
    from: usize,
    to: usize,
    status: u16,
    body: String,
    answered: std::time::Instant,
}

/// The broker stopped (SIGKILL) for 30 s and restarted under steady `POST /logs` ingest: every
/// POST is answered — 204 only for lines the broker acknowledged, else 503 with the reason
/// within the ack timeout, never a hang — every 204'd line reaches the drain after the restart,
/// and nothing reaches it that was not sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_for_30_s_under_ingest_loses_no_acknowledged_line() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let mut broker = Tansu::start();
    let rs = Rsyslog::start(Proto::Tcp, None);
    let mut opts = options();
    opts.bus = BusChoice::Kafka(kafka_opts(&broker.brokers()));
    opts.ingest_ack_timeout = Duration::from_secs(5);
    let shuttle = Shuttle::start(opts, two_apps(&rs.url())).await.unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(wharf_logshuttle::Handle::serve(l, shuttle.http_router()));

    // Two clients, each POSTing 20 lines every 100 ms until told to stop.
    let per = 20;
    let next = std::sync::Arc::new(AtomicUsize::new(0));
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let posts = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<Post>::new()));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (next, stop, posts) = (next.clone(), stop.clone(), posts.clone());
            tokio::task::spawn_blocking(move || {
                while !stop.load(Ordering::Acquire) {
                    let b = next.fetch_add(1, Ordering::AcqRel);
                    let (from, to) = (b * per, (b + 1) * per);
                    let (status, body) =
                        post_lines_timeout(port, from, to, Duration::from_secs(30));
                    let answered = std::time::Instant::now();
                    posts.lock().push(Post {
                        from,
                        to,
                        status,
                        body,
                        answered,
                    });
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        })
        .collect();
    let count = |status: u16| posts.lock().iter().filter(|p| p.status == status).count();
    wait_for(60, "ingest flowing", || count(204) >= 20).await;

    broker.stop();
    let stopped = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(30)).await;
    broker.restart();
    let restarted = std::time::Instant::now();
    wait_for(60, "a 204 after the restart", || {
        posts
            .lock()
            .iter()
            .any(|p| p.status == 204 && p.answered > restarted)
    })
    .await;
    let recovered = restarted.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Release);
    for c in clients {
        c.await.unwrap();
    }

    let posts = posts.lock().clone();
    let sent: usize = posts.iter().map(|p| p.to).max().unwrap_or(0);
    let mut acked = std::collections::BTreeSet::new();
    let mut refused = std::collections::BTreeSet::new();
    for p in &posts {
        match p.status {
            204 => acked.extend(p.from..p.to),
            503 => {
                assert!(
                    p.body.contains("send them again"),
                    "a 503 says why: {:?}",
                    p.body
                );
                refused.extend(p.from..p.to);
            }
            other => panic!("POST {}..{}: status {other} ({:?})", p.from, p.to, p.body),
        }
    }
    let refused_during_outage = posts
        .iter()
        .filter(|p| p.status == 503 && p.answered > stopped)
        .count();
    assert!(
        refused_during_outage > 0,
        "ingest refused while the broker was away"
    );
    let got = || -> std::collections::BTreeSet<usize> {
        received(&rs)
            .remove("a-default")
            .unwrap_or_default()
            .into_iter()
            .collect()
    };
    let delivery = std::time::Instant::now();
    wait_for(60, "every acknowledged line at the drain", || {
        acked.is_subset(&got())
    })
    .await;
    let delivered_in = delivery.elapsed();
    let got = got();
    assert!(
        got.iter().all(|i| *i < sent),
        "only lines that were sent arrive"
    );
    let missing: Vec<_> = acked.difference(&got).collect();
    assert!(missing.is_empty(), "acknowledged lines lost: {missing:?}");
    let refused_but_delivered = refused.intersection(&got).count();
    let total = received(&rs).remove("a-default").unwrap_or_default().len();
    eprintln!(
        "broker outage: POSTs {} (204: {}, 503: {}), lines acknowledged {}, refused {} \
         (of which delivered anyway {}), acknowledged lost {}, lines at the drain {} \
         (repeats {}), first 204 {:.1} s after the restart, backlog delivered {:.1} s later",
        posts.len(),
        count_status(&posts, 204),
        count_status(&posts, 503),
        acked.len(),
        refused.len(),
        refused_but_delivered,
        missing.len(),
        got.len(),
        total - got.len(),
        recovered.as_secs_f64(),
        delivered_in.as_secs_f64()
    );
    shuttle.shutdown(Duration::ZERO).await;
}

fn count_status(posts: &[Post], status: u16) -> usize {
    posts.iter().filter(|p| p.status == status).count()
}

/// Syslog over TCP has no acknowledgement: what a connection has read and the broker has not
/// yet acknowledged is what a crash would lose. With the broker away, a connection reads on
/// until `syslog_window_bytes` of frames wait for it (plus one hand-over) and then stops
/// reading, so its sender is held back by TCP instead; the gauge shows the bytes at stake. Once
/// the broker is back every line the sender wrote arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_syslog_connection_holds_at_most_its_window_while_the_broker_is_away() {
    use std::io::Write as _;
    const WINDOW: usize = 1024 * 1024;
    const N: usize = 20_000;
    let mut broker = Tansu::start();
    let rs = Rsyslog::start(Proto::Tcp, None);
    let mut opts = options();
    opts.bus = BusChoice::Kafka(kafka_opts(&broker.brokers()));
    opts.syslog_window_bytes = WINDOW;
    let shuttle = Shuttle::start(opts, two_apps(&rs.url())).await.unwrap();
    let listener = shuttle
        .bind_syslog_tcp("127.0.0.1:0".parse().unwrap(), Some("tok-a".into()))
        .await
        .unwrap();
    let addr = listener.local_addr();
    // ~1 KiB lines, octet-counted.
    let pad = "x".repeat(1_000);
    let frame = |i: usize| {
        let msg = format!(
            "<190>1 2026-12-07T00:00:00.000000+00:00 host app web.1 - - a-default {i} {pad}"
        );
        format!("{} {msg}", msg.len()).into_bytes()
    };
    let mut client = std::net::TcpStream::connect(addr).unwrap();
    client.write_all(&frame(0)).unwrap();
    wait_for(60, "the first line through Kafka", || {
        received(&rs)
            .get("a-default")
            .is_some_and(|v| v.contains(&0))
    })
    .await;

    broker.stop();
    let frames: Vec<u8> = (1..N).flat_map(frame).collect();
    let total = frames.len();
    let writer = tokio::task::spawn_blocking(move || {
        // Blocks once the shuttle stops reading; goes on when the broker is back.
        client.write_all(&frames).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        client
    });
    let gauge = shuttle.metrics().syslog_inflight_bytes.clone();
    let mut most = 0;
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < end {
        most = most.max(gauge.get());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let bound = WINDOW + 256 * 1024 + frame(N).len();
    assert!(
        most as usize >= WINDOW,
        "the connection read on up to its window: {most} bytes at most"
    );
    assert!(
        (most as usize) <= bound,
        "at most the window and one hand-over wait for the broker: {most} > {bound} \
         (the sender wrote {total} bytes)"
    );
    assert!(!writer.is_finished(), "the sender is held back by TCP");

    broker.restart();
    let _client = writer.await.unwrap();
    wait_for(120, "every line after the broker is back", || {
        let got = received(&rs).remove("a-default").unwrap_or_default();
        let mut seen = vec![false; N];
        got.iter().for_each(|&i| seen[i] = true);
        seen.iter().all(|s| *s)
    })
    .await;
    let got = received(&rs).remove("a-default").unwrap();
    let mut first = Vec::new();
    let mut seen = vec![false; N];
    for i in got {
        if !std::mem::replace(&mut seen[i], true) {
            first.push(i);
        }
    }
    assert_eq!(first, (0..N).collect::<Vec<_>>(), "in order");
    wait_for(30, "nothing at stake any more", || gauge.get() == 0).await;
    drop(listener);
    shuttle.shutdown(Duration::from_secs(10)).await;
}
