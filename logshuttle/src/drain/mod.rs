//! Drains: each one a task with its own bounded buffer. The dispatcher pushes without waiting;
//! when the buffer is full the oldest line is dropped, and the next thing the drain sends is
//! Heroku's L10 notice (also written into the app's stream). A stalled drain therefore slows
//! nothing but itself.

pub(crate) mod http;
pub(crate) mod syslog;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use wharf_config::LogLine;
use wharf_config::shuttle_plan::DrainTarget;

use crate::bus::Ack;
use crate::metrics::DrainMetrics;
use crate::stream::AppStream;

/// A line waiting in a drain's buffer, with its share of the bus acknowledgement.
pub(crate) struct Item {
    pub line: Arc<LogLine>,
    pub ack: Ack,
}

struct QueueState {
    buf: VecDeque<Item>,
    dropped: u64,
    dropped_since: i64,
    closed: bool,
}

/// A drain's bounded buffer.
pub(crate) struct DrainQueue {
    cap: usize,
    state: Mutex<QueueState>,
    notify: Notify,
    metrics: DrainMetrics,
}

/// What a drain takes from its buffer at once.
pub(crate) struct Batch {
    pub items: Vec<Item>,
    /// `(count, since)` of lines dropped before these, for the L10 notice.
    pub dropped: Option<(u64, i64)>,
}

impl DrainQueue {
    pub(crate) fn new(cap: usize, metrics: DrainMetrics) -> DrainQueue {
        DrainQueue {
            cap: cap.max(1),
            state: Mutex::new(QueueState {
                buf: VecDeque::new(),
                dropped: 0,
                dropped_since: 0,
                closed: false,
            }),
            notify: Notify::new(),
            metrics,
        }
    }

    /// Never waits: a full buffer loses its oldest line.
    pub(crate) fn push(&self, item: Item) {
        let shed = {
            let mut s = self.state.lock();
            if s.closed {
                Some(item)
            } else {
                let shed = if s.buf.len() >= self.cap {
                    let old = s.buf.pop_front();
                    if s.dropped == 0 {
                        s.dropped_since = crate::wire::now_us();
                    }
                    s.dropped += 1;
                    old
                } else {
                    None
                };
                s.buf.push_back(item);
                self.metrics.buffer.set(s.buf.len() as i64);
                shed
            }
        };
        if let Some(old) = shed {
            self.metrics.dropped.inc();
            old.ack.done();
        }
        self.notify.notify_one();
    }

    /// Up to `max` lines; waits while the buffer is empty. `None` once closed.
    pub(crate) async fn next_batch(&self, max: usize) -> Option<Batch> {
        loop {
            let notified = self.notify.notified();
            {
                let mut s = self.state.lock();
                if s.closed {
                    return None;
                }
                if !s.buf.is_empty() || s.dropped > 0 {
                    let n = s.buf.len().min(max);
                    let items: Vec<Item> = s.buf.drain(..n).collect();
                    let dropped = (s.dropped > 0).then(|| (s.dropped, s.dropped_since));
                    s.dropped = 0;
                    self.metrics.buffer.set(s.buf.len() as i64);
                    return Some(Batch { items, dropped });
                }
            }
            notified.await;
        }
    }

    /// More lines if some are already waiting (never waits).
    pub(crate) fn take_more(&self, batch: &mut Batch, max: usize) {
        let mut s = self.state.lock();
        let n = s.buf.len().min(max.saturating_sub(batch.items.len()));
        batch.items.extend(s.buf.drain(..n));
        self.metrics.buffer.set(s.buf.len() as i64);
    }

    /// Stop the drain; whatever is buffered is accounted for (the drain is gone).
    pub(crate) fn close(&self) {
        let items: Vec<Item> = {
            let mut s = self.state.lock();
            s.closed = true;
            s.buf.drain(..).collect()
        };
        for i in items {
            i.ack.done();
        }
        self.notify.notify_one();
    }

    pub(crate) fn len(&self) -> usize {
        self.state.lock().buf.len()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state.lock().closed
    }
}

/// Jittered exponential back-off: `base` doubling to `cap`, each delay ±20 %.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            next: base,
        }
    }
    pub(crate) fn reset(&mut self) {
        self.next = self.base;
    }
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.cap);
        let jitter: f64 = rand::random_range(0.8..1.2);
        d.mul_f64(jitter).min(self.cap)
    }
}

/// What every drain task gets.
pub(crate) struct DrainCtx {
    pub target: DrainTarget,
    pub queue: Arc<DrainQueue>,
    pub metrics: DrainMetrics,
    pub stream: Arc<AppStream>,
    pub space: String,
    pub opts: Arc<crate::Options>,
    pub tls: Arc<rustls::ClientConfig>,
}

impl DrainCtx {
    /// The HOST field: the drain token (Heroku's `d.…`), else the drain id.
    pub(crate) fn host(&self) -> &str {
        self.target.token.as_deref().unwrap_or(&self.target.id)
    }

    /// The L10 line for a batch that follows drops; it also goes into the app's stream.
    pub(crate) fn l10(&self, dropped: Option<(u64, i64)>) -> Option<LogLine> {
        let (n, since) = dropped?;
        let line = crate::wire::notice(
            &self.target.app,
            &self.space,
            crate::wire::l10_text(n, since),
        );
        tracing::warn!(drain = %self.target.id, app = %self.target.app, dropped = n, "drain buffer overflowed");
        self.stream.push(Arc::new(line.clone()));
        Some(line)
    }

    pub(crate) fn backoff(&self) -> Backoff {
        Backoff::new(self.opts.backoff_base, self.opts.backoff_cap)
    }

    /// Sleep, unless the drain is closed meanwhile (then `false`).
    pub(crate) async fn pause(&self, d: Duration) -> bool {
        let step = Duration::from_millis(100);
        let mut left = d;
        while !left.is_zero() {
            if self.queue.is_closed() {
                return false;
            }
            let s = left.min(step);
            tokio::time::sleep(s).await;
            left -= s;
        }
        !self.queue.is_closed()
    }
}

/// Start the task of a drain.
pub(crate) fn spawn(ctx: DrainCtx) -> tokio::task::JoinHandle<()> {
    use wharf_config::DrainKind::*;
    match ctx.target.url.kind {
        SyslogTcp | SyslogTls => tokio::spawn(syslog::run_stream(ctx)),
        SyslogUdp => tokio::spawn(syslog::run_udp(ctx)),
        Https | Http => tokio::spawn(http::run(ctx)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(i: usize) -> Item {
        Item {
            line: Arc::new(LogLine {
                app: "a".into(),
                space: "s".into(),
                source: wharf_config::Source::App,
                process: "web.1".into(),
                timestamp_us: 0,
                line: i.to_string(),
            }),
            ack: Ack::none(),
        }
    }

    #[tokio::test]
    async fn drops_oldest_and_counts() {
        let m = crate::metrics::Metrics::new(prometheus::Registry::new()).unwrap();
        let q = DrainQueue::new(3, m.for_drain("a", "d"));
        for i in 0..5 {
            q.push(line(i));
        }
        let b = q.next_batch(10).await.unwrap();
        let got: Vec<String> = b.items.iter().map(|i| i.line.line.clone()).collect();
        assert_eq!(got, ["2", "3", "4"]);
        assert_eq!(b.dropped.map(|d| d.0), Some(2));
        q.push(line(9));
        let b = q.next_batch(10).await.unwrap();
        assert_eq!(b.dropped, None);
        assert_eq!(m.drain_dropped.with_label_values(&["a", "d"]).get(), 2);
        q.close();
        assert!(q.next_batch(10).await.is_none());
    }

    #[test]
    fn backoff_doubles_to_cap() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        let d: Vec<u64> = (0..12).map(|_| b.next_delay().as_millis() as u64).collect();
        assert!((800..=1200).contains(&d[0]));
        assert!((1600..=2400).contains(&d[1]));
        assert!(d[11] <= 300_000 && d[11] >= 240_000);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(1200));
    }
}
