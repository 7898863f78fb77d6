//! The Kafka bus: one topic keyed by app key, so each app's lines land in one partition and keep
//! their order; one consumer group per shuttle deployment; offsets committed only once every
//! drain has accounted for a line (see [`crate::bus`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use wharf_config::LogLine;

use crate::Error;
use crate::bus::{Ack, Acker, Bus, Consumed, OffsetTracker};
use crate::metrics::Metrics;

/// Where and how to reach Kafka.
#[derive(Debug, Clone)]
pub struct KafkaOptions {
    /// `host:port,host:port`.
    pub brokers: String,
    pub topic: String,
    /// One consumer group per shuttle deployment.
    pub group: String,
    /// Partitions of the topic when this shuttle creates it.
    pub partitions: i32,
}

impl KafkaOptions {
    pub fn new(brokers: impl Into<String>) -> KafkaOptions {
        KafkaOptions {
            brokers: brokers.into(),
            topic: "wharf-logs".to_owned(),
            group: "wharf-logshuttle".to_owned(),
            partitions: 8,
        }
    }
}

struct Commits {
    tracker: OffsetTracker,
    /// Next offset to commit, per partition, not yet sent to the broker.
    dirty: HashMap<i32, i64>,
}

struct KafkaAcker {
    commits: Mutex<Commits>,
}

impl Acker for KafkaAcker {
    fn done(&self, partition: i32, offset: i64) {
        let mut c = self.commits.lock();
        if let Some(next) = c.tracker.done(partition, offset) {
            c.dirty.insert(partition, next);
        }
    }
}

/// The Kafka implementation of [`Bus`].
pub struct KafkaBus {
    opts: KafkaOptions,
    producer: FutureProducer,
    consumer: Mutex<Option<Arc<StreamConsumer>>>,
    acker: Arc<KafkaAcker>,
    metrics: Metrics,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("opts", &self.opts)
            .finish()
    }
}

impl KafkaBus {
    /// Connect and create the topic if it is missing. The group is joined by
    /// [`Bus::subscribe`]; a bus that only publishes (a producer elsewhere) never joins.
    pub async fn connect(opts: KafkaOptions, metrics: Metrics) -> Result<KafkaBus, Error> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &opts.brokers)
            .create()?;
        let topic = NewTopic::new(&opts.topic, opts.partitions, TopicReplication::Fixed(1));
        let aopts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = admin.create_topics([&topic], &aopts).await?;
        for r in results {
            match r {
                Ok(_) => {
                    tracing::info!(topic = %opts.topic, partitions = opts.partitions, "created the log topic")
                }
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => {
                    return Err(Error::KafkaSetup(format!(
                        "cannot create topic {t:?}: {code}"
                    )));
                }
            }
        }
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &opts.brokers)
            .set("linger.ms", "5")
            .set("max.in.flight.requests.per.connection", "1")
            .set("message.timeout.ms", "60000")
            .set("partitioner", "murmur2_random")
            .create()?;
        Ok(KafkaBus {
            opts,
            producer,
            consumer: Mutex::new(None),
            acker: Arc::new(KafkaAcker {
                commits: Mutex::new(Commits {
                    tracker: OffsetTracker::default(),
                    dirty: HashMap::new(),
                }),
            }),
            metrics,
            tasks: Mutex::new(Vec::new()),
        })
    }

    fn commit_dirty(&self, mode: CommitMode) {
        if let Some(c) = self.consumer.lock().clone() {
            commit_dirty(&c, &self.acker, &self.opts.topic, mode);
        }
    }
}

fn commit_dirty(consumer: &StreamConsumer, acker: &KafkaAcker, topic: &str, mode: CommitMode) {
    let dirty: Vec<(i32, i64)> = acker.commits.lock().dirty.drain().collect();
    if dirty.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (p, next) in &dirty {
        let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(*next));
    }
    if let Err(e) = consumer.commit(&tpl, mode) {
        tracing::warn!(error = %e, "offset commit failed; will retry");
        let mut c = acker.commits.lock();
        for (p, next) in dirty {
            let e = c.dirty.entry(p).or_insert(next);
            *e = (*e).max(next);
        }
    }
}

#[async_trait::async_trait]
impl Bus for KafkaBus {
    async fn publish(&self, lines: &mut Vec<LogLine>) -> Result<(), Error> {
        let mut futures = Vec::with_capacity(lines.len());
        for line in lines.iter() {
            let payload = serde_json::to_vec(line).map_err(|e| Error::KafkaSetup(e.to_string()))?;
            let mut record = FutureRecord::to(&self.opts.topic)
                .key(&line.app)
                .payload(&payload);
            loop {
                match self.producer.send_result(record) {
                    Ok(f) => {
                        futures.push(f);
                        break;
                    }
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                        r,
                    )) => {
                        record = r;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(e.into()),
                }
            }
        }
        for f in futures {
            match f.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(e.into()),
                Err(_) => return Err(Error::Closed),
            }
        }
        lines.clear();
        Ok(())
    }

    async fn subscribe(&self) -> Result<mpsc::Receiver<Vec<Consumed>>, Error> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.opts.brokers)
            .set("group.id", &self.opts.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .create()?;
        consumer.subscribe(&[&self.opts.topic])?;
        let consumer = Arc::new(consumer);
        *self.consumer.lock() = Some(consumer.clone());
        let (tx, rx) = mpsc::channel::<Vec<Consumed>>(64);
        let acker = self.acker.clone();
        let metrics = self.metrics.clone();
        let reader_consumer = consumer.clone();
        let reader = tokio::spawn(async move {
            let consumer = reader_consumer;
            // One stream for the consumer's life: polling fresh `recv()` futures and dropping
            // them when pending can lose a wake-up under load.
            let mut stream = consumer.stream();
            loop {
                use futures::{FutureExt as _, StreamExt as _};
                let mut batch = Vec::new();
                let Some(first) = stream.next().await else {
                    return;
                };
                if !take(first, &acker, &metrics, &mut batch) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                while batch.len() < 512 {
                    match stream.next().now_or_never() {
                        Some(Some(r)) => {
                            if !take(r, &acker, &metrics, &mut batch) {
                                break;
                            }
                        }
                        _ => break,
                    }
                }
                if !batch.is_empty() && tx.send(batch).await.is_err() {
                    return;
                }
            }
        });
        let acker = self.acker.clone();
        let topic = self.opts.topic.clone();
        let metrics = self.metrics.clone();
        let committer = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            let mut n = 0u64;
            loop {
                tick.tick().await;
                commit_dirty(&consumer, &acker, &topic, CommitMode::Async);
                n += 1;
                if n.is_multiple_of(4) {
                    let c = consumer.clone();
                    let m = metrics.clone();
                    let t = topic.clone();
                    let _ = tokio::task::spawn_blocking(move || update_lag(&c, &t, &m)).await;
                }
            }
        });
        self.tasks.lock().extend([reader, committer]);
        Ok(rx)
    }

    async fn shutdown(&self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        self.commit_dirty(CommitMode::Sync);
        let _ = self.producer_flush();
    }

    fn kind(&self) -> &'static str {
        "kafka"
    }
}

impl KafkaBus {
    fn producer_flush(&self) -> Result<(), Error> {
        use rdkafka::producer::Producer as _;
        self.producer.flush(Duration::from_secs(5))?;
        Ok(())
    }
}

/// Register and decode one record; `false` on a consume error.
fn take(
    msg: Result<rdkafka::message::BorrowedMessage<'_>, rdkafka::error::KafkaError>,
    acker: &Arc<KafkaAcker>,
    metrics: &Metrics,
    batch: &mut Vec<Consumed>,
) -> bool {
    let msg = match msg {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "kafka consume error");
            return false;
        }
    };
    let (partition, offset) = (msg.partition(), msg.offset());
    acker.commits.lock().tracker.register(partition, offset);
    let ack = Ack::new(partition, offset, acker.clone());
    let line = msg
        .payload()
        .and_then(|p| serde_json::from_slice::<LogLine>(p).ok());
    drop(msg);
    match line {
        Some(line) => batch.push(Consumed { line, ack }),
        None => {
            metrics
                .ingest_errors
                .with_label_values(&["kafka", "bad payload"])
                .inc();
            tracing::warn!(
                partition,
                offset,
                "skipping a record that is not a log line"
            );
            ack.done();
        }
    }
    true
}

/// Consumer lag per partition: high watermark minus position.
fn update_lag(consumer: &StreamConsumer, topic: &str, metrics: &Metrics) {
    let Ok(pos) = consumer.position() else { return };
    for el in pos.elements_for_topic(topic) {
        let Offset::Offset(at) = el.offset() else {
            continue;
        };
        if let Ok((_, high)) =
            consumer.fetch_watermarks(topic, el.partition(), Duration::from_secs(2))
        {
            metrics
                .kafka_lag
                .with_label_values(&[&el.partition().to_string()])
                .set((high - at).max(0));
        }
    }
    drop(pos);
}
