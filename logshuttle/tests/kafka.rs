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
    }
}

fn two_apps(drain: &str) -> wharf_config::ShuttlePlan {
    plan(
        vec![
            AppSpec {
                name: "a",
                space: "default",
                token: None,
                drains: vec![(drain.to_owned(), Some("d.a".into()))],
            },
            AppSpec {
                name: "b",
                space: "default",
                token: None,
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
    });
    let _shuttle = Shuttle::start(opts, two_apps(v[3])).await.unwrap();
    tokio::time::sleep(Duration::from_secs(300)).await;
}

fn spawn_child(k: &KafkaOptions, drain: &str, log: &std::path::Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(std::env::current_exe().unwrap())
        .args(["child_shuttle_node", "--exact", "--nocapture"])
        .env(
            "WHARF_TEST_CHILD",
            format!("{}|{}|{}|{}", k.brokers, k.topic, k.group, drain),
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
    let k = kafka_opts(&broker.brokers());
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
