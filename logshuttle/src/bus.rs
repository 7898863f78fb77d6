//! The bus between ingest and drains: a [`Bus`] publishes lines and hands them to one consumer
//! in order per app, each with an [`Ack`]. Kafka commits an offset only once every holder of a
//! line's `Ack` has called [`Ack::done`] — delivered, or dropped and accounted for with an L10
//! notice. An `Ack` dropped without `done` (a crash) leaves the offset uncommitted, so the line
//! comes again after a restart: at-least-once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Mutex, mpsc};
pub use wharf_config::LineRef;
use wharf_config::LogLine;

use crate::Error;

/// Consumed lines, in order, and the one acknowledgement they share, which lets their offset
/// advance: a Kafka record's lines (one app's), or an in-process hand-over (any apps, nothing to
/// acknowledge). One share for a record's lines, not one a line: the consumer and the
/// dispatcher touch the acknowledgement once a record.
#[derive(Debug)]
pub struct Consumed {
    pub lines: Vec<LogLine>,
    pub ack: Ack,
}

/// Told when a line at (partition, offset) is fully accounted for.
pub trait Acker: Send + Sync + 'static {
    fn done(&self, partition: i32, offset: i64);
}

struct Pending {
    remaining: AtomicUsize,
    partition: i32,
    offset: i64,
    acker: Arc<dyn Acker>,
}

/// A share in a consumed line. Clone it (one share per drain) with [`Ack::share`]; each share
/// must end with [`Ack::done`]. `Ack::none()` is for buses with nothing to commit.
#[derive(Clone)]
pub struct Ack(Option<Arc<Pending>>);

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(p) => write!(f, "Ack({}@{})", p.partition, p.offset),
            None => f.write_str("Ack(-)"),
        }
    }
}

impl Ack {
    pub fn none() -> Ack {
        Ack(None)
    }

    pub fn new(partition: i32, offset: i64, acker: Arc<dyn Acker>) -> Ack {
        Ack(Some(Arc::new(Pending {
            remaining: AtomicUsize::new(1),
            partition,
            offset,
            acker,
        })))
    }

    /// Another share that must also be `done` before the line counts as accounted for.
    pub fn share(&self) -> Ack {
        if let Some(p) = &self.0 {
            p.remaining.fetch_add(1, Ordering::AcqRel);
        }
        Ack(self.0.clone())
    }

    /// Whether both are shares of the same line's (or record's) acknowledgement.
    pub fn same(&self, other: &Ack) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }

    /// This share is delivered or accounted for.
    pub fn done(self) {
        if let Some(p) = self.0
            && p.remaining.fetch_sub(1, Ordering::AcqRel) == 1
        {
            p.acker.done(p.partition, p.offset);
        }
    }
}

/// One hand-over's lines, gathered in the form its bus takes them ([`Bus::gather`]): lines
/// for the in-process bus, record bodies for Kafka, which the lines are encoded into as they
/// are read.
#[derive(Debug)]
pub enum Gathered {
    Lines(Vec<LogLine>),
    Records(crate::kafka::Records),
}

impl Gathered {
    pub fn push(&mut self, l: LineRef<'_>) {
        match self {
            Gathered::Lines(v) => v.push(l.to_line()),
            Gathered::Records(r) => r.push(l),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Gathered::Lines(v) => v.len(),
            Gathered::Records(r) => r.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The gathered lines as lines (records decoded, for a bus that takes lines), leaving
    /// this empty.
    pub fn take_lines(&mut self) -> Result<Vec<LogLine>, Error> {
        match self {
            Gathered::Lines(v) => Ok(std::mem::take(v)),
            Gathered::Records(r) => {
                let mut lines = Vec::with_capacity(r.len());
                for (_, body) in r.finish() {
                    lines.extend(crate::kafka::decode_record(&body).map_err(Error::BadRecords)?);
                }
                Ok(lines)
            }
        }
    }
}

/// Resolves once the lines of one [`Bus::send`] are durable (Kafka: acknowledged by the
/// broker; in-process: at once).
pub type Receipt = futures::future::BoxFuture<'static, Result<(), Error>>;

/// Where lines travel between ingest and drains. Both implementations keep each app's lines in
/// order and hand every line out with an [`Ack`].
#[async_trait::async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Hand `lines` to the bus, in order after whatever was sent before, and return without
    /// waiting for durability: the [`Receipt`] says when they are durable. Waits only while the
    /// bus is full. The lines are taken (in-process) or left in place (Kafka, which encoded
    /// them): clear `lines` once the receipt has resolved.
    async fn send(&self, lines: &mut Vec<LogLine>) -> Result<Receipt, Error>;
    /// An empty hand-over in the form this bus takes lines: see [`Gathered`].
    fn gather(&self) -> Gathered {
        Gathered::Lines(Vec::new())
    }
    /// [`Bus::send`] for gathered lines; `gathered` is left empty (sent, or refused and
    /// counted by the caller).
    async fn send_gathered(&self, gathered: &mut Gathered) -> Result<Receipt, Error> {
        let mut lines = gathered.take_lines()?;
        self.send(&mut lines).await
    }
    /// Publish lines; returns once the bus holds them (Kafka: acknowledged by the broker). On
    /// success `lines` is left empty; on error it may still hold them, to publish again.
    async fn publish(&self, lines: &mut Vec<LogLine>) -> Result<(), Error> {
        let receipt = self.send(lines).await?;
        receipt.await?;
        lines.clear();
        Ok(())
    }
    /// The one consumer of this shuttle: batches of consumed lines, in order per app.
    async fn subscribe(&self) -> Result<mpsc::Receiver<Vec<Consumed>>, Error>;
    /// Commit what is accounted for and stop.
    async fn shutdown(&self);
    /// `in-process` or `kafka`.
    fn kind(&self) -> &'static str;
}

/// The embedded default: a bounded channel, no durability.
#[derive(Debug)]
pub struct InProcessBus {
    tx: mpsc::Sender<Vec<Consumed>>,
    rx: Mutex<Option<mpsc::Receiver<Vec<Consumed>>>>,
}

impl InProcessBus {
    /// `capacity` batches in flight between publisher and dispatcher.
    pub fn new(capacity: usize) -> InProcessBus {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        InProcessBus {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }
}

#[async_trait::async_trait]
impl Bus for InProcessBus {
    async fn send(&self, lines: &mut Vec<LogLine>) -> Result<Receipt, Error> {
        if lines.is_empty() {
            return Ok(Box::pin(std::future::ready(Ok(()))));
        }
        let batch = vec![Consumed {
            lines: std::mem::take(lines),
            ack: Ack::none(),
        }];
        self.tx.send(batch).await.map_err(|_| Error::Closed)?;
        Ok(Box::pin(std::future::ready(Ok(()))))
    }

    async fn subscribe(&self) -> Result<mpsc::Receiver<Vec<Consumed>>, Error> {
        self.rx.lock().await.take().ok_or(Error::Closed)
    }

    async fn shutdown(&self) {}

    fn kind(&self) -> &'static str {
        "in-process"
    }
}

/// Which offsets of each partition are done; the committable offset is one past the longest
/// done prefix.
#[derive(Debug, Default)]
pub(crate) struct OffsetTracker {
    parts: std::collections::HashMap<i32, std::collections::VecDeque<(i64, bool)>>,
}

impl OffsetTracker {
    pub(crate) fn register(&mut self, partition: i32, offset: i64) {
        let q = self.parts.entry(partition).or_default();
        if q.back().is_some_and(|(o, _)| *o >= offset) {
            // Redelivery after a rebalance: start over for this partition.
            q.clear();
        }
        q.push_back((offset, false));
    }

    /// Mark done; returns the new committable offset (next to read) if it advanced.
    pub(crate) fn done(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let q = self.parts.get_mut(&partition)?;
        if let Ok(i) = q.binary_search_by_key(&offset, |(o, _)| *o) {
            q[i].1 = true;
        }
        let mut next = None;
        while let Some(&(o, true)) = q.front() {
            next = Some(o + 1);
            q.pop_front();
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_commits_prefix_only() {
        let mut t = OffsetTracker::default();
        for o in 10..15 {
            t.register(0, o);
        }
        assert_eq!(t.done(0, 12), None);
        assert_eq!(t.done(0, 10), Some(11));
        assert_eq!(t.done(0, 11), Some(13));
        assert_eq!(t.done(0, 14), None);
        assert_eq!(t.done(0, 13), Some(15));
    }

    #[test]
    fn ack_fires_after_all_shares() {
        #[derive(Default)]
        struct Rec(parking_lot::Mutex<Vec<(i32, i64)>>);
        impl Acker for Rec {
            fn done(&self, p: i32, o: i64) {
                self.0.lock().push((p, o));
            }
        }
        let rec = Arc::new(Rec::default());
        let a = Ack::new(3, 7, rec.clone());
        let b = a.share();
        let c = a.share();
        a.done();
        b.done();
        assert!(rec.0.lock().is_empty());
        drop(c); // dropped without done: a crash, not an acknowledgement
        assert!(rec.0.lock().is_empty());
        let d = Ack::new(3, 8, rec.clone());
        d.done();
        assert_eq!(*rec.0.lock(), vec![(3, 8)]);
    }
}
