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
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use wharf_config::{CompactString, LogLine};

use crate::Error;
use crate::bus::{Ack, Acker, Bus, Consumed, Gathered, LineRef, OffsetTracker, Receipt};
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
    /// Static group membership (`group.instance.id`): one id per shuttle of the group, the same
    /// across its restarts, so that a restarted shuttle takes its predecessor's place at once.
    /// Without it, a shuttle killed (not stopped) stays a member until its session times out;
    /// on tansu 0.6 a shuttle that joined meanwhile can then be left with no partitions at all
    /// (the broker never asks it to rejoin), and nothing is delivered.
    pub instance: Option<String>,
    /// The record format this shuttle writes: 4 (the default), or 2, which shuttles before
    /// format 4 can read — for a rolling upgrade, until no older shuttle consumes the topic
    /// (an older shuttle skips a record it cannot read, and counts it as a bad payload).
    pub record_format: RecordFormat,
}

/// The Kafka record formats a shuttle can write (see [`encode_records`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RecordFormat {
    /// Field by field a line, zstd-compressed (`WL\x02`): read by every shuttle.
    V2,
    /// Texts together, then the lines' other fields, zstd-compressed (`WL\x04`).
    #[default]
    V4,
}

impl std::str::FromStr for RecordFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<RecordFormat, String> {
        match s {
            "2" => Ok(RecordFormat::V2),
            "4" => Ok(RecordFormat::V4),
            _ => Err(format!("record format {s:?}: 2 or 4")),
        }
    }
}

impl KafkaOptions {
    pub fn new(brokers: impl Into<String>) -> KafkaOptions {
        KafkaOptions {
            brokers: brokers.into(),
            topic: "wharf-logs".to_owned(),
            group: "wharf-logshuttle".to_owned(),
            partitions: 8,
            instance: None,
            record_format: RecordFormat::default(),
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
    /// Held while a commit is on its way: one at a time, so a shutdown's last commit waits
    /// for the one the committer has in flight.
    committing: Mutex<()>,
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
    /// To the compressing thread (see [`Bus::send`]).
    packer: mpsc::Sender<Pack>,
    /// Record bodies the packer is done with.
    pool: Arc<BodyPool>,
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
        ensure_topic(&opts).await?;
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &opts.brokers)
            // The broker's work goes by requests (tansu: one storage transaction per produce
            // request, statements prepared anew) more than by bytes: 25 ms lets a busy
            // connection's records share a request (BENCHMARKS.md), and stays well inside a
            // log line's patience.
            .set("linger.ms", "25")
            .set("max.in.flight.requests.per.connection", "1")
            .set("message.timeout.ms", "60000")
            .set("partitioner", "murmur2_random")
            .create()?;
        let pool = Arc::new(BodyPool::default());
        let packer = spawn_packer(
            opts.topic.clone(),
            producer.clone(),
            metrics.clone(),
            pool.clone(),
        )?;
        Ok(KafkaBus {
            opts,
            producer,
            packer,
            pool,
            consumer: Mutex::new(None),
            acker: Arc::new(KafkaAcker {
                commits: Mutex::new(Commits {
                    tracker: OffsetTracker::default(),
                    dirty: HashMap::new(),
                }),
                committing: Mutex::new(()),
            }),
            metrics,
            tasks: Mutex::new(Vec::new()),
        })
    }

    async fn commit_dirty(&self) {
        let Some(c) = self.consumer.lock().clone() else {
            return;
        };
        let (acker, topic, metrics) = (
            self.acker.clone(),
            self.opts.topic.clone(),
            self.metrics.clone(),
        );
        let _ =
            tokio::task::spawn_blocking(move || commit_dirty(&c, &acker, &topic, &metrics)).await;
    }
}

/// One [`Bus::send`]'s records, plain (version 1), for the compressing thread, and where the
/// delivery futures of their produce go.
struct Pack {
    records: Vec<(String, Vec<u8>)>,
    reply: tokio::sync::oneshot::Sender<Result<Vec<DeliveryFuture>, Error>>,
}

/// Sends waiting for the compressing thread, at most: beyond, `send` waits (the bus is full).
const PACKS: usize = 8;

/// The thread that compresses records and hands them to the producer, in the order of the
/// sends: zstd is the largest single cost of a line on its way in, and here it runs beside
/// the connection that reads and parses the next lines instead of in between.
fn spawn_packer(
    topic: String,
    producer: FutureProducer,
    metrics: Metrics,
    pool: Arc<BodyPool>,
) -> Result<mpsc::Sender<Pack>, Error> {
    let (tx, mut rx) = mpsc::channel::<Pack>(PACKS);
    std::thread::Builder::new()
        .name("kafka-packer".to_owned())
        .spawn(move || {
            while let Some(pack) = rx.blocking_recv() {
                let produced = produce_all(&topic, &producer, &metrics, &pool, pack.records);
                let _ = pack.reply.send(produced);
            }
        })?;
    Ok(tx)
}

/// Compress and produce `records` in order; the first refusal other than a full queue stops
/// the rest (the caller hears of it and sends them all again).
fn produce_all(
    topic: &str,
    producer: &FutureProducer,
    metrics: &Metrics,
    pool: &BodyPool,
    records: Vec<(String, Vec<u8>)>,
) -> Result<Vec<DeliveryFuture>, Error> {
    let mut futures = Vec::with_capacity(records.len());
    for (key, plain) in records {
        let payload = compress(&plain);
        pool.give(plain);
        let mut record = FutureRecord::to(topic).key(&key).payload(&payload);
        loop {
            match producer.send_result(record) {
                Ok(f) => {
                    futures.push(f);
                    break;
                }
                Err((
                    rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                    r,
                )) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => {
                    metrics.kafka_errors.with_label_values(&["produce"]).inc();
                    return Err(e.into());
                }
            }
        }
    }
    Ok(futures)
}

/// Create the topic unless it exists. A broker without CreateTopics (or a principal not allowed
/// to create topics) is fine as long as the topic is there already.
async fn ensure_topic(opts: &KafkaOptions) -> Result<(), Error> {
    let admin: Arc<AdminClient<DefaultClientContext>> = Arc::new(
        ClientConfig::new()
            .set("bootstrap.servers", &opts.brokers)
            // Asking whether the topic exists must not create it with the broker's defaults.
            .set("allow.auto.create.topics", "false")
            .create()?,
    );
    if topic_exists(&admin, &opts.topic).await {
        return Ok(());
    }
    let topic = NewTopic::new(&opts.topic, opts.partitions, TopicReplication::Fixed(1));
    let aopts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let failed = match admin.create_topics([&topic], &aopts).await {
        Ok(results) => match results.into_iter().next() {
            Some(Ok(_)) => {
                tracing::info!(topic = %opts.topic, partitions = opts.partitions, "created the log topic");
                return Ok(());
            }
            None | Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => return Ok(()),
            Some(Err((t, code))) => format!("cannot create topic {t:?}: {code}"),
        },
        Err(e) => format!("cannot create topic {:?}: {e}", opts.topic),
    };
    if topic_exists(&admin, &opts.topic).await {
        tracing::info!(topic = %opts.topic, reason = %failed, "using the existing log topic");
        Ok(())
    } else {
        Err(Error::KafkaSetup(failed))
    }
}

/// Whether the broker knows `topic`, with partitions.
async fn topic_exists(admin: &Arc<AdminClient<DefaultClientContext>>, topic: &str) -> bool {
    let (admin, topic) = (admin.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        admin
            .inner()
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .is_ok_and(|md| {
                md.topics()
                    .iter()
                    .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
            })
    })
    .await
    .unwrap_or(false)
}

/// Commit what is accounted for and wait for the broker's answer: a failed commit puts its
/// offsets back to go with the next one (an asynchronous commit's failure would only be logged
/// by librdkafka, and those offsets not committed until more lines came). Blocks: call it from
/// a blocking thread.
fn commit_dirty(consumer: &StreamConsumer, acker: &KafkaAcker, topic: &str, metrics: &Metrics) {
    let _one = acker.committing.lock();
    let dirty: Vec<(i32, i64)> = acker.commits.lock().dirty.drain().collect();
    if dirty.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (p, next) in &dirty {
        let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(*next));
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
        metrics.kafka_errors.with_label_values(&["commit"]).inc();
        tracing::warn!(error = %e, "offset commit failed; will retry");
        let mut c = acker.commits.lock();
        for (p, next) in dirty {
            let e = c.dirty.entry(p).or_insert(next);
            *e = (*e).max(next);
        }
    }
}

/// Lines of one app travel together: a record holds up to this many lines or bytes (plus the
/// line that crossed the mark). tansu prepares and runs SQL statements per record, both when it
/// stores one and when it serves one, so few large records cost it far less than many small
/// ones (BENCHMARKS.md). The byte cap keeps even an incompressible record (≤ 512 KiB and one
/// 64 KiB line) under the producer's `message.max.bytes` (1 000 000).
const RECORD_LINES: usize = 4096;
const RECORD_BYTES: usize = 512 * 1024;
/// `WL` and format version 1 (plain, field by field a line): read, no longer written.
const MAGIC: &[u8; 3] = b"WL\x01";
/// `WL` and format version 2: version 1's body compressed with zstd. Read, no longer written.
const MAGIC_ZSTD: &[u8; 3] = b"WL\x02";
/// `WL` and format version 3 (plain): the lines' texts together, then their other fields.
const MAGIC_V3: &[u8; 3] = b"WL\x03";
/// `WL` and format version 4: version 3's body compressed with zstd (what is written).
const MAGIC_V3_ZSTD: &[u8; 3] = b"WL\x04";
/// zstd's fastest positive level: log lines shrink several times over for a few ns a byte,
/// and every byte saved is one the broker does not store, copy and read back.
const ZSTD_LEVEL: i32 = 1;
/// Level 1's match table is 2^13 entries for a 512 KiB record; 2^12 stays in the core's L1
/// data cache: on router lines 8 % faster and 2 % smaller, on other logs 10 % faster and 1 %
/// larger (BENCHMARKS.md).
const ZSTD_HASH_LOG: u32 = 12;
/// A compressed record says how long it is uncompressed; more than this is refused.
const MAX_RECORD_BODY: usize = 64 * 1024 * 1024;

/// Record payloads for `lines`: per app (the record key), in order, `RECORD_LINES` at most.
///
/// Format: `WL\x04`, the body's length (u32, little-endian), then the body compressed with
/// zstd (`WL\x03` and the body, plain, when compression does not pay). The body: app and
/// space (u16 length + bytes each), the number of lines and the bytes of their texts (u32
/// little-endian each), the texts one after the other, then per line: flags (u8: bit 0 the
/// source is `heroku`, bit 1 a process name follows — on the first line and whenever it
/// changes — as u16 length + bytes), the timestamp (µs) less the previous line's (the first:
/// less 0) zigzag LEB128, and the text's length (LEB128). Texts apart from the binary fields
/// compress better and faster (7.8 % fewer bytes on router lines) and are checked for UTF-8
/// in one pass. Versions 1 and 2 (field by field a line; `WL\x01`, `WL\x02`) are still read.
/// One record per batch of an app's lines keeps the broker's per-record work (and the
/// consumer's) off the per-line path; compression keeps its per-byte work down.
pub fn encode_records(lines: &[LogLine]) -> Vec<(String, Vec<u8>)> {
    encode_plain(lines)
        .into_iter()
        .map(|(app, plain)| {
            let packed = compress(&plain);
            (app, packed)
        })
        .collect()
}

thread_local! {
    static ZSTD: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    static UNZSTD: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    /// A record's body, decompressed: kept for the thread's next record (a fresh few hundred
    /// KiB each time cost page faults and copies as it grew).
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The thread's scratch buffer, empty, for `f`.
fn with_scratch<T>(f: impl FnOnce(&mut Vec<u8>) -> T) -> T {
    let mut buf = SCRATCH.take();
    buf.clear();
    let out = f(&mut buf);
    SCRATCH.set(buf);
    out
}

/// Plain payload (version 1 or 3) → compressed (version 2 or 4); the plain one stays if
/// compression fails (it cannot, short of memory) or does not pay.
fn compress(plain: &[u8]) -> Vec<u8> {
    let body = &plain[MAGIC.len()..];
    let mut out = Vec::with_capacity(7 + zstd::compress_bound(body.len()));
    out.extend_from_slice(&plain[..2]);
    out.push(plain[2] + 1);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    let mut out = std::io::Cursor::new(out);
    out.set_position(7);
    let packed = ZSTD.with_borrow_mut(|z| {
        if z.is_none() {
            *z = zstd::bulk::Compressor::new(ZSTD_LEVEL)
                .ok()
                .and_then(|mut c| {
                    c.set_parameter(zstd::stream::raw::CParameter::HashLog(ZSTD_HASH_LOG))
                        .ok()?;
                    Some(c)
                });
        }
        z.as_mut()?.compress_to_buffer(body, &mut out).ok()
    });
    let out = out.into_inner();
    match packed {
        Some(n) if n > 0 && out.len() == 7 + n && out.len() < plain.len() => out,
        _ => plain.to_vec(),
    }
}

/// A version 2 payload (after its magic) → version 1's body, in `body`.
fn decompress(p: &[u8], body: &mut Vec<u8>) -> Result<(), String> {
    let (len, frame) = p
        .split_first_chunk::<4>()
        .ok_or_else(|| "record ends early".to_owned())?;
    let len = u32::from_le_bytes(*len) as usize;
    if len > MAX_RECORD_BODY {
        return Err(format!("record body of {len} bytes is too long"));
    }
    body.clear();
    body.reserve(len);
    UNZSTD.with_borrow_mut(|z| {
        if z.is_none() {
            *z = Some(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?);
        }
        let z = z.as_mut().expect("set above");
        // Into the buffer's capacity at most (`len`, or what an earlier record left).
        let n = z
            .decompress_to_buffer(frame, body)
            .map_err(|e| format!("bad compressed record: {e}"))?;
        if n != len {
            return Err(format!("compressed record: {n} bytes, {len} announced"));
        }
        Ok(())
    })
}

fn encode_plain(lines: &[LogLine]) -> Vec<(String, Vec<u8>)> {
    Records::default().of(lines)
}

/// Plain record bodies given back by the packer once their records are compressed, for the
/// next records: a body that grew to a few hundred KiB is not grown (copied) again, nor are
/// its pages faulted in again. At most `POOL_BODIES` are kept (≈ 10 MiB).
#[derive(Debug, Default)]
pub(crate) struct BodyPool(Mutex<Vec<Vec<u8>>>);

const POOL_BODIES: usize = 16;
/// A fresh body's capacity: a quiet connection's record stays in it.
const FRESH_BODY: usize = 16 * 1024;

impl BodyPool {
    fn take(pool: Option<&BodyPool>) -> Vec<u8> {
        pool.and_then(|p| p.0.lock().pop())
            .unwrap_or_else(|| Vec::with_capacity(FRESH_BODY))
    }

    fn give(&self, mut body: Vec<u8>) {
        // A body that took one huge line is not kept.
        if body.capacity() > 2 * RECORD_BYTES {
            return;
        }
        body.clear();
        let mut p = self.0.lock();
        if p.len() < POOL_BODIES {
            p.push(body);
        }
    }
}

/// Kafka record bodies (version 3, plain, see [`encode_records`]) built a line at a time:
/// one open record per app, closed at `RECORD_LINES` lines, at `RECORD_BYTES` bytes or when
/// the app's space changes. The syslog ingest writes the lines it reads straight into them,
/// so no [`LogLine`] is built (allocated, copied, dropped) for a line that is only going to
/// be encoded.
#[derive(Debug, Default)]
pub struct Records {
    /// Closed records, in order per app.
    done: Vec<(String, Vec<u8>)>,
    open: Vec<OpenRecord>,
    /// Which `open` record is whose, for a hand-over of many apps' lines.
    index: HashMap<CompactString, usize>,
    /// `open[last]` took the previous line: a connection's lines are mostly one app's.
    last: usize,
    lines: usize,
    pool: Option<Arc<BodyPool>>,
}

#[derive(Debug)]
struct OpenRecord {
    app: CompactString,
    space: CompactString,
    /// Header, then the texts; the other fields join at [`OpenRecord::close`].
    body: Vec<u8>,
    /// The lines' other fields.
    fields: Vec<u8>,
    /// Where the header's line count is.
    counts_at: usize,
    lines: usize,
    /// The previous line's process and timestamp.
    process: CompactString,
    timestamp_us: i64,
}

impl OpenRecord {
    fn new(app: &str, space: &str, body: Vec<u8>) -> OpenRecord {
        let mut o = OpenRecord {
            app: app.into(),
            space: space.into(),
            body,
            fields: Vec::new(),
            counts_at: 0,
            lines: 0,
            process: CompactString::default(),
            timestamp_us: 0,
        };
        o.start();
        o
    }

    fn start(&mut self) {
        self.body.clear();
        self.body.extend_from_slice(MAGIC_V3);
        put_str16(&mut self.body, &self.app);
        put_str16(&mut self.body, &self.space);
        self.counts_at = self.body.len();
        self.body.extend_from_slice(&[0; 8]);
        self.fields.clear();
        self.lines = 0;
        self.timestamp_us = 0;
    }

    fn len(&self) -> usize {
        self.body.len() + self.fields.len()
    }

    fn push(&mut self, l: &LineRef<'_>) {
        let text = l.line.as_bytes();
        self.body.extend_from_slice(text);
        let new_process = self.lines == 0 || self.process != l.process;
        let f = &mut self.fields;
        f.push(u8::from(l.source == wharf_config::Source::Heroku) | (u8::from(new_process) << 1));
        if new_process {
            put_str16(f, l.process);
            self.process = l.process.into();
        }
        let delta = l.timestamp_us.wrapping_sub(self.timestamp_us);
        put_varint(f, ((delta << 1) ^ (delta >> 63)) as u64);
        put_varint(f, text.len() as u64);
        self.timestamp_us = l.timestamp_us;
        self.lines += 1;
    }

    /// The finished body (its counts filled in, its fields after the texts).
    fn close(&mut self) {
        let texts = self.body.len() - self.counts_at - 8;
        let at = self.counts_at;
        self.body[at..at + 4].copy_from_slice(&(self.lines as u32).to_le_bytes());
        self.body[at + 4..at + 8].copy_from_slice(&(texts as u32).to_le_bytes());
        self.body.extend_from_slice(&self.fields);
    }
}

fn put_varint(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push(v as u8 | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

impl Records {
    pub(crate) fn with_pool(pool: Arc<BodyPool>) -> Records {
        Records {
            pool: Some(pool),
            ..Records::default()
        }
    }

    /// Lines pushed since the last [`Records::finish`].
    pub fn len(&self) -> usize {
        self.lines
    }

    pub fn is_empty(&self) -> bool {
        self.lines == 0
    }

    pub fn push(&mut self, l: LineRef<'_>) {
        let i = if self.open.get(self.last).is_some_and(|o| o.app == l.app) {
            self.last
        } else if let Some(&i) = self.index.get(l.app) {
            i
        } else {
            let o = OpenRecord::new(l.app, l.space, BodyPool::take(self.pool.as_deref()));
            self.index.insert(o.app.clone(), self.open.len());
            self.open.push(o);
            self.open.len() - 1
        };
        self.last = i;
        let o = &mut self.open[i];
        if o.lines > 0 && (o.lines >= RECORD_LINES || o.len() >= RECORD_BYTES || o.space != l.space)
        {
            o.close();
            let next = BodyPool::take(self.pool.as_deref());
            self.done
                .push((o.app.to_string(), std::mem::replace(&mut o.body, next)));
            if o.space != l.space {
                o.space = l.space.into();
            }
            o.start();
        }
        o.push(&l);
        self.lines += 1;
    }

    /// The records of `lines` (after any pushed before).
    fn of(mut self, lines: &[LogLine]) -> Vec<(String, Vec<u8>)> {
        for l in lines {
            self.push(LineRef::of(l));
        }
        self.finish()
    }

    /// The records, keyed by app, in order per app; the builder is left empty.
    pub fn finish(&mut self) -> Vec<(String, Vec<u8>)> {
        let mut out = std::mem::take(&mut self.done);
        for mut o in self.open.drain(..) {
            if o.lines > 0 {
                o.close();
                out.push((o.app.into_string(), o.body));
            } else if let Some(p) = &self.pool {
                p.give(o.body);
            }
        }
        self.index.clear();
        self.last = 0;
        self.lines = 0;
        out
    }
}

fn put_str16(b: &mut Vec<u8>, s: &str) {
    // Names and process types are short; anything longer is cut at a character boundary.
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    b.extend_from_slice(&(end as u16).to_le_bytes());
    b.extend_from_slice(&s.as_bytes()[..end]);
}

/// The lines of a record payload; a JSON line (the format before batching) is read too.
pub fn decode_record(p: &[u8]) -> Result<Vec<LogLine>, String> {
    if p.first() == Some(&b'{') {
        return serde_json::from_slice::<LogLine>(p)
            .map(|l| vec![l])
            .map_err(|e| e.to_string());
    }
    if let Some(packed) = p.strip_prefix(MAGIC_V3_ZSTD) {
        with_scratch(|body| {
            decompress(packed, body)?;
            decode_v3(body)
        })
    } else if let Some(body) = p.strip_prefix(MAGIC_V3) {
        decode_v3(body)
    } else if let Some(packed) = p.strip_prefix(MAGIC_ZSTD) {
        with_scratch(|body| {
            decompress(packed, body)?;
            decode_body(body)
        })
    } else if let Some(body) = p.strip_prefix(MAGIC) {
        decode_body(body)
    } else {
        Err("not a log record (unknown format)".to_owned())
    }
}

/// Plain version-3 records → plain version 1 (which the packer compresses to version 2), for
/// [`RecordFormat::V2`].
fn to_format_1(records: Vec<(String, Vec<u8>)>) -> Result<Vec<(String, Vec<u8>)>, String> {
    records
        .into_iter()
        .map(|(key, body)| {
            let lines = decode_record(&body)?;
            Ok((key, encode_v1(&lines)))
        })
        .collect()
}

/// A version-1 record (plain) of one app's `lines`.
fn encode_v1(lines: &[LogLine]) -> Vec<u8> {
    let mut b = MAGIC.to_vec();
    if let Some(first) = lines.first() {
        put_str16(&mut b, &first.app);
        put_str16(&mut b, &first.space);
    }
    for l in lines {
        b.push(u8::from(l.source == wharf_config::Source::Heroku));
        b.extend_from_slice(&l.timestamp_us.to_le_bytes());
        put_str16(&mut b, &l.process);
        b.extend_from_slice(&(l.line.len() as u32).to_le_bytes());
        b.extend_from_slice(l.line.as_bytes());
    }
    b
}

/// A record body being read.
struct R<'a>(&'a [u8]);

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("record ends early".to_owned());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn str_n(&mut self, n: usize) -> Result<&'a str, String> {
        std::str::from_utf8(self.take(n)?).map_err(|_| "text is not UTF-8".to_owned())
    }
    fn str16(&mut self) -> Result<&'a str, String> {
        let b = self.take(2)?;
        self.str_n(u16::from_le_bytes([b[0], b[1]]) as usize)
    }
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("a number runs past 64 bits".to_owned())
    }
}

/// Version 3's body → its lines.
fn decode_v3(body: &[u8]) -> Result<Vec<LogLine>, String> {
    let mut r = R(body);
    let app = CompactString::from(r.str16()?);
    let space = CompactString::from(r.str16()?);
    let n = r.u32()? as usize;
    let texts_len = r.u32()? as usize;
    // One pass over every text; each line's is then cut at a character boundary or refused.
    let texts = r.str_n(texts_len)?;
    // A line takes at least 2 bytes of fields: a count beyond that is a lie.
    if n > r.0.len() / 2 {
        return Err(format!("record claims {n} lines"));
    }
    let mut lines = Vec::with_capacity(n);
    let (mut at, mut ts) = (0usize, 0i64);
    let mut process = CompactString::default();
    for _ in 0..n {
        let flags = r.take(1)?[0];
        if flags & !3 != 0 {
            return Err(format!("unknown line flags {flags:#x}"));
        }
        if flags & 2 != 0 {
            process = r.str16()?.into();
        }
        let z = r.varint()?;
        ts = ts.wrapping_add((z >> 1) as i64 ^ -((z & 1) as i64));
        let len = usize::try_from(r.varint()?).map_err(|_| "text length")?;
        let line = at
            .checked_add(len)
            .and_then(|end| texts.get(at..end))
            .ok_or_else(|| "a text runs past its section or splits a character".to_owned())?;
        at += len;
        lines.push(LogLine {
            app: app.clone(),
            space: space.clone(),
            source: if flags & 1 != 0 {
                wharf_config::Source::Heroku
            } else {
                wharf_config::Source::App
            },
            process: process.clone(),
            timestamp_us: ts,
            line: line.to_owned(),
        });
    }
    if at != texts.len() || !r.0.is_empty() {
        return Err("record has bytes past its lines".to_owned());
    }
    Ok(lines)
}

/// Version 1's body → its lines.
fn decode_body(body: &[u8]) -> Result<Vec<LogLine>, String> {
    let mut r = R(body);
    let app = CompactString::from(r.str16()?);
    let space = CompactString::from(r.str16()?);
    let mut lines = Vec::with_capacity((body.len() / 128).min(RECORD_LINES));
    while !r.0.is_empty() {
        let source = match r.take(1)?[0] {
            0 => wharf_config::Source::App,
            1 => wharf_config::Source::Heroku,
            x => return Err(format!("unknown source {x}")),
        };
        let ts = r.take(8)?;
        let ts = i64::from_le_bytes(ts.try_into().map_err(|_| "ts")?);
        let process = r.str16()?.into();
        let n = r.u32()?;
        let line = r.str_n(n as usize)?.to_owned();
        lines.push(LogLine {
            app: app.clone(),
            space: space.clone(),
            source,
            process,
            timestamp_us: ts,
            line,
        });
    }
    Ok(lines)
}

#[async_trait::async_trait]
impl Bus for KafkaBus {
    async fn send(&self, lines: &mut Vec<LogLine>) -> Result<Receipt, Error> {
        // Encoded here (the lines stay with the caller, to send again on failure), compressed
        // and produced by the packer thread in send order.
        let records = Records::with_pool(self.pool.clone()).of(lines);
        self.send_records(records).await
    }

    fn gather(&self) -> Gathered {
        Gathered::Records(Records::with_pool(self.pool.clone()))
    }

    async fn send_gathered(&self, gathered: &mut Gathered) -> Result<Receipt, Error> {
        if let Gathered::Records(r) = gathered {
            return self.send_records(r.finish()).await;
        }
        let mut lines = gathered.take_lines()?;
        self.send(&mut lines).await
    }

    async fn subscribe(&self) -> Result<mpsc::Receiver<Vec<Consumed>>, Error> {
        let mut config = ClientConfig::new();
        if let Some(id) = &self.opts.instance {
            config.set("group.instance.id", id);
        }
        let consumer: StreamConsumer = config
            .set("bootstrap.servers", &self.opts.brokers)
            .set("group.id", &self.opts.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            // One app's lines live in one partition: let a fetch bring more of it. tansu holds
            // every fetch for the whole wait, data or not, and each fetch costs it statements
            // for every partition of the topic: 100 ms (not 50) halves that fixed cost, and a
            // fetch of up to 5 MiB every 100 ms still carries several times the lines one
            // shuttle relays (BENCHMARKS.md).
            .set("max.partition.fetch.bytes", "8388608")
            .set("fetch.wait.max.ms", "100")
            .create()?;
        consumer.subscribe(&[&self.opts.topic])?;
        let consumer = Arc::new(consumer);
        *self.consumer.lock() = Some(consumer.clone());
        // Few batches between the reader and the dispatcher: while a drain holds the bus
        // back, the backlog stays in Kafka (and shows as consumer lag), not in memory.
        let (tx, rx) = mpsc::channel::<Vec<Consumed>>(4);
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
                let mut n = 0;
                let Some(first) = stream.next().await else {
                    return;
                };
                if !take(first, &acker, &metrics, &mut batch, &mut n) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                while n < RECORD_LINES {
                    match stream.next().now_or_never() {
                        Some(Some(r)) => {
                            if !take(r, &acker, &metrics, &mut batch, &mut n) {
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
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0u64;
            loop {
                tick.tick().await;
                n += 1;
                let (c, a, t, m) = (
                    consumer.clone(),
                    acker.clone(),
                    topic.clone(),
                    metrics.clone(),
                );
                let _ = tokio::task::spawn_blocking(move || {
                    commit_dirty(&c, &a, &t, &m);
                    if n.is_multiple_of(4) {
                        update_lag(&c, &t, &m);
                    }
                })
                .await;
            }
        });
        self.tasks.lock().extend([reader, committer]);
        Ok(rx)
    }

    async fn shutdown(&self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        self.commit_dirty().await;
        let _ = self.producer_flush();
    }

    fn kind(&self) -> &'static str {
        "kafka"
    }
}

impl KafkaBus {
    /// Hand plain records to the packer, in order after those handed before.
    async fn send_records(&self, records: Vec<(String, Vec<u8>)>) -> Result<Receipt, Error> {
        let records = match self.opts.record_format {
            RecordFormat::V4 => records,
            RecordFormat::V2 => to_format_1(records).map_err(Error::BadRecords)?,
        };
        let (reply, produced) = tokio::sync::oneshot::channel();
        self.packer
            .send(Pack { records, reply })
            .await
            .map_err(|_| Error::Closed)?;
        let errors = self.metrics.kafka_errors.with_label_values(&["produce"]);
        Ok(Box::pin(async move {
            let futures = produced.await.map_err(|_| Error::Closed)??;
            for f in futures {
                match f.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => {
                        errors.inc();
                        return Err(e.into());
                    }
                    Err(_) => return Err(Error::Closed),
                }
            }
            Ok(())
        }))
    }

    fn producer_flush(&self) -> Result<(), Error> {
        use rdkafka::producer::Producer as _;
        self.producer.flush(Duration::from_secs(5))?;
        Ok(())
    }
}

/// Register and decode one record (its lines counted in `lines`); `false` on a consume error.
fn take(
    msg: Result<rdkafka::message::BorrowedMessage<'_>, rdkafka::error::KafkaError>,
    acker: &Arc<KafkaAcker>,
    metrics: &Metrics,
    batch: &mut Vec<Consumed>,
    lines: &mut usize,
) -> bool {
    let msg = match msg {
        Ok(m) => m,
        Err(e) => {
            metrics.kafka_errors.with_label_values(&["consume"]).inc();
            tracing::warn!(error = %e, "kafka consume error");
            return false;
        }
    };
    let (partition, offset) = (msg.partition(), msg.offset());
    acker.commits.lock().tracker.register(partition, offset);
    let ack = Ack::new(partition, offset, acker.clone());
    let decoded = decode_record(msg.payload().unwrap_or_default());
    drop(msg);
    match decoded {
        Ok(got) => {
            *lines += got.len();
            batch.push(Consumed { lines: got, ack });
        }
        Err(e) => {
            metrics
                .ingest_errors
                .with_label_values(&["kafka", "bad payload"])
                .inc();
            tracing::warn!(
                partition,
                offset,
                error = %e,
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

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_config::Source;

    fn l(app: &str, i: usize) -> LogLine {
        LogLine {
            app: app.into(),
            space: "s".into(),
            source: if i.is_multiple_of(3) {
                Source::Heroku
            } else {
                Source::App
            },
            process: if i.is_multiple_of(2) { "web.1" } else { "" }.into(),
            timestamp_us: 1_700_000_000_000_000 + i as i64,
            line: format!("line {i} é"),
        }
    }

    #[test]
    fn records_keep_each_apps_lines_in_order_and_round_trip() {
        let mut lines = Vec::new();
        // b gets a quarter (under one record's worth), a the rest (two records).
        for i in 0..RECORD_LINES * 12 / 5 {
            lines.push(l(if i.is_multiple_of(4) { "b-s" } else { "a-s" }, i));
        }
        let records = encode_records(&lines);
        // b in one record, a in two (at most RECORD_LINES each).
        let mut keys: Vec<&str> = records.iter().map(|(k, _)| k.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["a-s", "a-s", "b-s"]);
        let mut back: Vec<LogLine> = Vec::new();
        for (key, payload) in &records {
            let got = decode_record(payload).unwrap();
            assert!(got.iter().all(|x| x.app == key));
            back.extend(got);
        }
        let want_a: Vec<&LogLine> = lines.iter().filter(|x| x.app == "a-s").collect();
        let got_a: Vec<&LogLine> = back.iter().filter(|x| x.app == "a-s").collect();
        assert_eq!(got_a, want_a);
        let want_b: Vec<&LogLine> = lines.iter().filter(|x| x.app == "b-s").collect();
        let got_b: Vec<&LogLine> = back.iter().filter(|x| x.app == "b-s").collect();
        assert_eq!(got_b, want_b);
    }

    #[test]
    fn an_incompressible_record_stays_under_the_producers_message_limit() {
        // Text that zstd cannot shrink (a xorshift stream, printable), in long lines.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let lines: Vec<LogLine> = (0..2_000)
            .map(|i| {
                let mut one = l("a-s", i);
                one.line = (0..1_000)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        char::from(b'!' + (x % 90) as u8)
                    })
                    .collect();
                one
            })
            .collect();
        let records = encode_records(&lines);
        assert!(records.len() > 1);
        for (_, p) in &records {
            // librdkafka's default message.max.bytes.
            assert!(p.len() < 1_000_000, "{} bytes", p.len());
        }
        let back: Vec<LogLine> = records
            .iter()
            .flat_map(|(_, p)| decode_record(p).unwrap())
            .collect();
        assert_eq!(back, lines);
    }

    #[test]
    fn old_json_records_are_read_and_garbage_is_refused() {
        let one = l("a-s", 1);
        let json = serde_json::to_vec(&one).unwrap();
        assert_eq!(decode_record(&json).unwrap(), vec![one]);
        assert!(
            decode_record(b"nope")
                .unwrap_err()
                .contains("unknown format")
        );
        let (_, mut p) = encode_plain(&[l("a-s", 2)]).remove(0);
        p.truncate(p.len() - 3);
        assert!(decode_record(&p).unwrap_err().contains("ends early"));
    }

    #[test]
    fn records_are_compressed_and_plain_ones_still_read() {
        let lines: Vec<LogLine> = (0..500).map(|i| l("a-s", i)).collect();
        let (_, plain) = encode_plain(&lines).remove(0);
        let (_, packed) = encode_records(&lines).remove(0);
        assert!(plain.starts_with(MAGIC_V3));
        assert!(packed.starts_with(MAGIC_V3_ZSTD));
        assert!(
            packed.len() * 3 < plain.len(),
            "{} vs {}",
            packed.len(),
            plain.len()
        );
        assert_eq!(decode_record(&packed).unwrap(), lines);
        assert_eq!(decode_record(&plain).unwrap(), lines);
        // Cut short, or lying about its length: refused, not read wrong.
        let mut cut = packed.clone();
        cut.truncate(cut.len() - 5);
        assert!(
            decode_record(&cut)
                .unwrap_err()
                .contains("bad compressed record")
        );
        let mut lying = packed.clone();
        lying[3..7].copy_from_slice(&1u32.to_le_bytes());
        assert!(decode_record(&lying).is_err());
        let mut huge = packed;
        huge[3..7].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_record(&huge).unwrap_err().contains("too long"));
    }

    #[test]
    fn records_built_a_line_at_a_time_close_on_a_new_space_and_keep_each_apps_order() {
        let pool = Arc::new(BodyPool::default());
        let mut r = Records::with_pool(pool.clone());
        let mut lines = Vec::new();
        for i in 0..3 * RECORD_LINES / 2 {
            // Three apps interleaved; app c moves from space s to space t half-way.
            let mut one = l(["a-s", "b-s", "c-s"][i % 3], i);
            one.line.push_str(&"x".repeat(40));
            if one.app == "c-s" && i > RECORD_LINES {
                one.space = "t".into();
            }
            r.push(LineRef::of(&one));
            lines.push(one);
        }
        assert_eq!(r.len(), lines.len());
        let records = r.finish();
        assert!(r.is_empty());
        let mut back: HashMap<String, Vec<LogLine>> = HashMap::new();
        for (key, body) in &records {
            let got = decode_record(body).unwrap();
            assert!(!got.is_empty() && got.len() <= RECORD_LINES);
            // One app and one space a record.
            assert!(got.iter().all(|x| x.app == key && x.space == got[0].space));
            back.entry(key.clone()).or_default().extend(got);
        }
        // c: one record in space s, one in t; a and b one record each.
        assert_eq!(records.iter().filter(|(k, _)| k == "c-s").count(), 2);
        assert_eq!(records.len(), 4);
        for app in ["a-s", "b-s", "c-s"] {
            let want: Vec<&LogLine> = lines.iter().filter(|x| x.app == app).collect();
            let got: Vec<&LogLine> = back[app].iter().collect();
            assert_eq!(got, want, "{app}");
        }
        // The packer gives bodies back; the next records are built in them (every one of
        // these grew past a fresh body's capacity).
        assert!(records.iter().all(|(_, b)| b.capacity() > FRESH_BODY));
        for (_, body) in records {
            pool.give(body);
        }
        assert_eq!(pool.0.lock().len(), 4);
        let mut again = Records::with_pool(pool.clone());
        again.push(LineRef::of(&lines[0]));
        assert_eq!(pool.0.lock().len(), 3);
        let (_, body) = again.finish().remove(0);
        assert!(body.capacity() > FRESH_BODY, "{}", body.capacity());
    }

    #[tokio::test]
    async fn records_handed_to_a_bus_that_takes_lines_arrive_as_lines() {
        let bus = crate::bus::InProcessBus::new(4);
        let mut rx = bus.subscribe().await.unwrap();
        let lines: Vec<LogLine> = (0..10).map(|i| l(["a-s", "b-s"][i % 2], i)).collect();
        let mut g = Gathered::Records(Records::default());
        for one in &lines {
            g.push(LineRef::of(one));
        }
        bus.send_gathered(&mut g).await.unwrap().await.unwrap();
        assert!(g.is_empty());
        let got: Vec<LogLine> = rx
            .recv()
            .await
            .unwrap()
            .into_iter()
            .flat_map(|c| c.lines)
            .collect();
        let per_app = |v: &[LogLine], app: &str| -> Vec<LogLine> {
            v.iter().filter(|x| x.app == app).cloned().collect()
        };
        assert_eq!(got.len(), lines.len());
        for app in ["a-s", "b-s"] {
            assert_eq!(per_app(&got, app), per_app(&lines, app));
        }
    }

    #[test]
    fn records_of_older_shuttles_are_still_read() {
        let lines: Vec<LogLine> = (0..300).map(|i| l("a-s", i)).collect();
        let v1 = encode_v1(&lines);
        let v2 = compress(&v1);
        assert!(v2.starts_with(MAGIC_ZSTD));
        assert_eq!(decode_record(&v1).unwrap(), lines);
        assert_eq!(decode_record(&v2).unwrap(), lines);
        // And written so, for a rolling upgrade (RecordFormat::V2).
        let mut two_apps = lines.clone();
        two_apps.extend((0..10).map(|i| l("b-s", i)));
        let legacy = to_format_1(encode_plain(&two_apps)).unwrap();
        assert_eq!(legacy.len(), 2);
        for (key, body) in &legacy {
            assert!(body.starts_with(MAGIC), "{key}");
            assert!(compress(body).starts_with(MAGIC_ZSTD));
            let want: Vec<LogLine> = two_apps.iter().filter(|x| x.app == key).cloned().collect();
            assert_eq!(decode_body(&body[3..]).unwrap(), want);
        }
        assert_eq!("2".parse(), Ok(RecordFormat::V2));
        assert_eq!("4".parse(), Ok(RecordFormat::V4));
        assert!("3".parse::<RecordFormat>().is_err());
    }

    #[test]
    fn version_3_keeps_processes_timestamps_and_sources_and_refuses_what_does_not_add_up() {
        // Processes that change and come back, timestamps that go back, both sources,
        // multi-byte text and empty text.
        let mut lines: Vec<LogLine> = (0..50).map(|i| l("a-s", i)).collect();
        lines[7].timestamp_us = i64::MIN;
        lines[8].timestamp_us = i64::MAX;
        lines[9].line = String::new();
        lines[10].process = "run.12345678901234567890123456".into();
        let (_, plain) = encode_plain(&lines).remove(0);
        assert_eq!(decode_record(&plain).unwrap(), lines);
        // Where the texts start: magic, app and space, two counts.
        let texts_at = 3 + (2 + 3) + (2 + 1) + 8;
        let texts_len: usize = lines.iter().map(|x| x.line.len()).sum();
        let bad = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut p = plain.clone();
            f(&mut p);
            decode_record(&p).unwrap_err()
        };
        // A line count larger than the fields can hold.
        let err = bad(&|p| p[texts_at - 8..texts_at - 4].copy_from_slice(&u32::MAX.to_le_bytes()));
        assert!(err.contains("claims"), "{err}");
        // One line fewer than there are: bytes left over.
        let err = bad(&|p| p[texts_at - 8..texts_at - 4].copy_from_slice(&49u32.to_le_bytes()));
        assert!(err.contains("past its lines"), "{err}");
        // The texts' section one byte short: the last text's "é" is cut in two.
        let err = bad(&|p| {
            p[texts_at - 4..texts_at].copy_from_slice(&((texts_len - 1) as u32).to_le_bytes())
        });
        assert!(err.contains("UTF-8") || err.contains("splits"), "{err}");
        // Unknown flags on the first line.
        let err = bad(&|p| p[texts_at + texts_len] |= 0x80);
        assert!(err.contains("flags"), "{err}");
    }
}
