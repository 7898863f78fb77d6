//! The Kafka bus against librdkafka's in-process mock cluster: fast checks of its rules — each
//! app's lines in order, an offset committed only once every share of its lines is done, a
//! restarted consumer resuming from the committed offset, broker errors surfaced. The proof end
//! to end against a real broker stays in tests/kafka.rs.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use wharf_logshuttle::{Ack, Bus, Consumed, Error, KafkaBus, KafkaOptions, Metrics, RecordFormat};

const PARTITIONS: i32 = 4;

struct Mock {
    cluster: MockCluster<'static, DefaultProducerContext>,
    opts: KafkaOptions,
}

impl Mock {
    /// A one-broker cluster with the topic made in advance (the mock has no CreateTopics, which
    /// the bus then tolerates because the topic exists).
    fn start() -> Mock {
        Mock::start_writing(RecordFormat::default())
    }

    /// [`Mock::start`], its bus writing records in `format`.
    fn start_writing(format: RecordFormat) -> Mock {
        init_logs();
        let cluster = MockCluster::new(1).unwrap();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let opts = KafkaOptions {
            brokers: cluster.bootstrap_servers(),
            topic: format!("logs-{id}"),
            group: format!("shuttle-{id}"),
            partitions: PARTITIONS,
            instance: None,
            record_format: format,
        };
        cluster.create_topic(&opts.topic, PARTITIONS, 1).unwrap();
        Mock { cluster, opts }
    }

    async fn bus(&self) -> (KafkaBus, Metrics) {
        let metrics = Metrics::new(prometheus::Registry::new()).unwrap();
        let bus = KafkaBus::connect(self.opts.clone(), metrics.clone())
            .await
            .unwrap();
        (bus, metrics)
    }

    /// The first 3 bytes of every record on the topic (its format's magic), read by a consumer
    /// of its own.
    fn magics(&self) -> Vec<Vec<u8>> {
        use rdkafka::message::Message as _;
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.opts.brokers)
            .set("group.id", format!("{}-raw", self.opts.group))
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(&self.opts.topic, p, Offset::Beginning)
                .unwrap();
        }
        c.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let mut quiet = 0;
        while quiet < 5 {
            match c.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    out.push(
                        m.payload()
                            .unwrap_or_default()
                            .iter()
                            .take(3)
                            .copied()
                            .collect(),
                    );
                    quiet = 0;
                }
                _ => quiet += 1,
            }
        }
        out
    }

    /// The group's committed offsets, all partitions together (one app: one partition used).
    fn committed(&self) -> i64 {
        let opts = self.opts.clone();
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &opts.brokers)
            .set("group.id", &opts.group)
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition(&opts.topic, p);
        }
        let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
        let sum = got
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            })
            .sum();
        // Before the consumer goes (see shared/DEPENDENCIES.md).
        drop(got);
        sum
    }
}

fn lines(app: &str, from: usize, to: usize) -> Vec<wharf_config::LogLine> {
    (from..to)
        .map(|i| line(app, "web.1", &format!("{app} {i}")))
        .collect()
}

/// A consumed line with its own share of its record's acknowledgement, as a drain holds it.
struct Got {
    line: wharf_config::LogLine,
    ack: Ack,
}

/// Receive until `n` lines have come (bounded), each with a share of its acknowledgement (the
/// record's own share is done, as the dispatcher does).
async fn recv_n(rx: &mut mpsc::Receiver<Vec<Consumed>>, n: usize) -> Vec<Got> {
    let mut got = Vec::new();
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.len() < n {
        match tokio::time::timeout_at(end, rx.recv()).await {
            Ok(Some(batch)) => {
                for c in batch {
                    for line in c.lines {
                        got.push(Got {
                            line,
                            ack: c.ack.share(),
                        });
                    }
                    c.ack.done();
                }
            }
            Ok(None) => panic!("the bus closed after {} of {n} lines", got.len()),
            Err(_) => panic!("{} of {n} lines within 60 s", got.len()),
        }
    }
    got
}

fn seq(c: &Got) -> usize {
    c.line.line.rsplit(' ').next().unwrap().parse().unwrap()
}

async fn wait_committed(mock: &Mock, want: i64, what: &str) {
    let end = std::time::Instant::now() + Duration::from_secs(30);
    let mut last = mock.committed();
    while last != want && std::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(200)).await;
        last = mock.committed();
    }
    assert_eq!(last, want, "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_apps_lines_arrive_in_order_across_publishes() {
    in_order_across_publishes(RecordFormat::V4).await;
}

/// Written in the format older shuttles read (a rolling upgrade), read back the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_apps_lines_arrive_in_order_in_the_older_record_format() {
    in_order_across_publishes(RecordFormat::V2).await;
}

async fn in_order_across_publishes(format: RecordFormat) {
    let mock = Mock::start_writing(format);
    let (bus, _) = mock.bus().await;
    let mut rx = bus.subscribe().await.unwrap();
    let apps = ["a-default", "b-default", "c-default"];
    let per = 1_200;
    // Interleaved apps, uneven publishes: several records per app and publish.
    let mut i = 0;
    while i < per {
        let step = (i % 7 + 1) * 100;
        let to = (i + step).min(per);
        let mut batch = Vec::new();
        for k in i..to {
            for app in apps {
                batch.extend(lines(app, k, k + 1));
            }
        }
        bus.publish(&mut batch).await.unwrap();
        assert!(batch.is_empty());
        i = to;
    }
    let got = recv_n(&mut rx, per * apps.len()).await;
    let mut by_app: HashMap<String, Vec<usize>> = HashMap::new();
    for c in got {
        by_app
            .entry(c.line.app.to_string())
            .or_default()
            .push(seq(&c));
        c.ack.done();
    }
    for app in apps {
        assert_eq!(by_app[app], (0..per).collect::<Vec<_>>(), "{app} in order");
    }
    bus.shutdown().await;
    let want: &[u8] = match format {
        RecordFormat::V2 => b"WL\x02",
        RecordFormat::V4 => b"WL\x04",
    };
    let magics = mock.magics();
    assert!(!magics.is_empty());
    assert!(magics.iter().all(|m| m == want), "{magics:?}");
}

/// Two drains hold a share of every line: the offset of a record moves only once both are done
/// with all of its lines, and only over a done prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offset_is_committed_only_once_every_drain_is_done() {
    let mock = Mock::start();
    let (bus, _) = mock.bus().await;
    let mut rx = bus.subscribe().await.unwrap();
    // Three publishes of one app: three records, offsets 0, 1, 2 of one partition.
    for r in 0..3 {
        let mut batch = lines("a-default", r * 10, r * 10 + 10);
        bus.publish(&mut batch).await.unwrap();
    }
    let got = recv_n(&mut rx, 30).await;
    let mut drain_a = Vec::new();
    let mut drain_b = Vec::new();
    for c in got {
        drain_a.push((seq(&c), c.ack.share()));
        drain_b.push((seq(&c), c.ack.share()));
        c.ack.done(); // the share recv_n took for this line
    }
    // Drain a delivers everything; drain b the first and the third record, and the second but
    // its last line.
    for (_, a) in drain_a {
        a.done();
    }
    let mut held = Vec::new();
    for (i, a) in drain_b {
        if i == 19 {
            held.push(a);
        } else {
            a.done();
        }
    }
    wait_committed(&mock, 1, "record 0 done by both drains: committed up to 1").await;
    // Several commit rounds later, still 1: record 1 waits for its last line at drain b.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(mock.committed(), 1, "record 2 is done, but record 1 is not");
    for a in held {
        a.done();
    }
    wait_committed(&mock, 3, "every record done: committed up to 3").await;
    bus.shutdown().await;
}

/// A share dropped without `done` (a crash) commits nothing; a new consumer of the group starts
/// at the first record that was not accounted for, and gets everything after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_consumer_resumes_from_the_committed_offset() {
    let mock = Mock::start();
    let (first, _) = mock.bus().await;
    for r in 0..5 {
        let mut batch = lines("a-default", r * 10, r * 10 + 10);
        first.publish(&mut batch).await.unwrap();
    }
    let mut rx = first.subscribe().await.unwrap();
    let got = recv_n(&mut rx, 50).await;
    for c in got {
        // Records 0..3 delivered; from line 30 on, the shuttle "crashes" before delivering.
        if seq(&c) < 30 {
            c.ack.done();
        } else {
            drop(c);
        }
    }
    wait_committed(&mock, 3, "records 0, 1, 2 committed").await;
    first.shutdown().await;
    drop(rx);
    drop(first);
    let (second, _) = mock.bus().await;
    let mut rx = second.subscribe().await.unwrap();
    let got = recv_n(&mut rx, 20).await;
    let seqs: Vec<usize> = got.iter().map(seq).collect();
    assert_eq!(
        seqs,
        (30..50).collect::<Vec<_>>(),
        "from the committed offset on"
    );
    for c in got {
        c.ack.done();
    }
    wait_committed(&mock, 5, "the second consumer commits the rest").await;
    second.shutdown().await;
}

/// The broker refusing a produce fails the publish (the lines stay with the caller, to publish
/// again) and counts the error; a refused offset commit is counted and retried, not forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_errors_are_surfaced_and_commits_retried() {
    let mock = Mock::start();
    let (bus, metrics) = mock.bus().await;
    let errors = |op: &str| metrics.kafka_errors.with_label_values(&[op]).get();
    mock.cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let mut batch = lines("a-default", 0, 10);
    let err = bus.publish(&mut batch).await.unwrap_err();
    assert!(matches!(err, Error::Kafka(_)), "{err}");
    assert!(err.to_string().contains("too large"), "{err}");
    assert_eq!(batch.len(), 10, "the lines stay with the caller");
    assert_eq!(errors("produce"), 1);
    bus.publish(&mut batch).await.unwrap();
    assert!(batch.is_empty());

    let mut rx = bus.subscribe().await.unwrap();
    let got = recv_n(&mut rx, 10).await;
    // The broker refuses the next offset commits a few times (one error each).
    mock.cluster.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED; 3],
    );
    for c in got {
        c.ack.done();
    }
    wait_committed(&mock, 1, "the commit retried until the broker took it").await;
    assert!(errors("commit") >= 1, "the refused commits were counted");
    bus.shutdown().await;
}
