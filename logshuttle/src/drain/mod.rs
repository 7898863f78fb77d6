//! Drains: each one a task with its own bounded buffer. The dispatcher pushes without waiting;
//! when the buffer is full the oldest line is dropped, and the next thing the drain sends is
//! Heroku's L10 notice. The app's stream gets the notice when the lines are shed (at most one
//! per drain every few seconds), so a drain that never recovers is not dropping in silence. A
//! stalled drain therefore slows nothing but itself.

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
    /// No progress for the stall deadline while full: the buffer sheds instead of holding the
    /// bus back, until the drain has caught up again.
    stalled: bool,
    /// Shed lines not yet told in the app's stream, since when, and when it was last told.
    untold: u64,
    untold_since: i64,
    told_at: Option<std::time::Instant>,
}

/// Tells the app's stream that `n` lines were dropped since a time (µs).
pub(crate) type Notice = Box<dyn Fn(u64, i64) + Send + Sync>;

/// At most one stream notice per drain this often while it sheds.
const NOTICE_EVERY: Duration = Duration::from_secs(5);

/// A drain's bounded buffer. A drain that is only slow holds the bus back (the dispatcher
/// waits for room); one that makes no progress for the stall deadline while its buffer is full
/// is declared stalled and then sheds its oldest lines (L10) so that it slows nobody else.
pub(crate) struct DrainQueue {
    cap: usize,
    stall: Duration,
    state: Mutex<QueueState>,
    /// Lines arrived (the drain task waits on it).
    notify: Notify,
    /// Room made (the dispatcher waits on it).
    room: Notify,
    metrics: DrainMetrics,
    id: String,
    notice: Option<Notice>,
}

/// What a drain takes from its buffer at once.
pub(crate) struct Batch {
    pub items: Vec<Item>,
    /// `(count, since)` of lines dropped before these, for the L10 notice.
    pub dropped: Option<(u64, i64)>,
}

impl DrainQueue {
    pub(crate) fn new(
        cap: usize,
        stall: Duration,
        metrics: DrainMetrics,
        id: impl Into<String>,
    ) -> DrainQueue {
        DrainQueue {
            cap: cap.max(1),
            stall,
            state: Mutex::new(QueueState {
                buf: VecDeque::new(),
                dropped: 0,
                dropped_since: 0,
                closed: false,
                stalled: false,
                untold: 0,
                untold_since: 0,
                told_at: None,
            }),
            notify: Notify::new(),
            room: Notify::new(),
            metrics,
            id: id.into(),
            notice: None,
        }
    }

    /// Tell shed lines in the app's stream through `notice`.
    pub(crate) fn with_notice(mut self, notice: Notice) -> DrainQueue {
        self.notice = Some(notice);
        self
    }

    /// The untold drops, when it is time to tell them (or `now`): `(count, since)`.
    fn take_untold(&self, s: &mut QueueState, now: bool) -> Option<(u64, i64)> {
        if s.untold == 0 || (!now && s.told_at.is_some_and(|t| t.elapsed() < NOTICE_EVERY)) {
            return None;
        }
        s.told_at = Some(std::time::Instant::now());
        Some((std::mem::take(&mut s.untold), s.untold_since))
    }

    fn tell(&self, untold: Option<(u64, i64)>) {
        if let (Some(f), Some((n, since))) = (&self.notice, untold) {
            tracing::warn!(drain = %self.id, dropped = n, "drain buffer overflowed");
            f(n, since);
        }
    }

    /// Never waits: a full buffer loses its oldest line (the in-process sink's paths).
    #[cfg(test)]
    pub(crate) fn push(&self, item: Item) {
        let mut v = vec![item];
        self.push_shedding(&mut v);
    }

    /// Append `items` in order, shedding the oldest beyond the cap.
    fn push_shedding(&self, items: &mut Vec<Item>) {
        let (shed, untold): (Vec<Item>, _) = {
            let mut s = self.state.lock();
            if s.closed {
                (std::mem::take(items), None)
            } else {
                s.buf.extend(items.drain(..));
                let over = s.buf.len().saturating_sub(self.cap);
                if over > 0 {
                    let now = crate::wire::now_us();
                    if s.dropped == 0 {
                        s.dropped_since = now;
                    }
                    s.dropped += over as u64;
                    if s.untold == 0 {
                        s.untold_since = now;
                    }
                    s.untold += over as u64;
                }
                let shed = s.buf.drain(..over).collect();
                self.metrics.buffer.set(s.buf.len() as i64);
                let untold = self.take_untold(&mut s, false);
                (shed, untold)
            }
        };
        self.tell(untold);
        if !shed.is_empty() {
            self.metrics.dropped.inc_by(shed.len() as u64);
            for old in shed {
                old.ack.done();
            }
        }
        self.notify.notify_one();
    }

    /// Append `items` in order. Waits for room while the drain is only slow; after the stall
    /// deadline without room the drain is declared stalled and sheds its oldest lines instead.
    pub(crate) async fn push_many(&self, mut items: Vec<Item>) {
        loop {
            let room = self.room.notified();
            {
                let mut s = self.state.lock();
                if s.closed {
                    drop(s);
                    for i in items {
                        i.ack.done();
                    }
                    return;
                }
                if !s.stalled {
                    let free = self.cap.saturating_sub(s.buf.len());
                    let n = free.min(items.len());
                    s.buf.extend(items.drain(..n));
                    self.metrics.buffer.set(s.buf.len() as i64);
                    if n > 0 {
                        self.notify.notify_one();
                    }
                    if items.is_empty() {
                        return;
                    }
                }
            }
            if self.is_stalled() {
                self.push_shedding(&mut items);
                return;
            }
            if tokio::time::timeout(self.stall, room).await.is_err() {
                let mut s = self.state.lock();
                if !s.closed && !s.stalled && s.buf.len() >= self.cap {
                    s.stalled = true;
                    self.metrics.stalled.set(1);
                    tracing::warn!(drain = %self.id, stall = ?self.stall, "drain made no progress with a full buffer; shedding its oldest lines (L10) until it catches up");
                }
            }
        }
    }

    fn is_stalled(&self) -> bool {
        self.state.lock().stalled
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
                    let untold = self.take_untold(&mut s, true);
                    // Caught up: hold the bus back again rather than shed.
                    if s.stalled && s.buf.len() <= self.cap / 2 {
                        s.stalled = false;
                        self.metrics.stalled.set(0);
                        tracing::info!(drain = %self.id, "drain caught up; no longer shedding");
                    }
                    self.metrics.buffer.set(s.buf.len() as i64);
                    drop(s);
                    self.tell(untold);
                    self.room.notify_waiters();
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
        drop(s);
        if n > 0 {
            self.room.notify_waiters();
        }
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
        self.room.notify_waiters();
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
    pub space: String,
    pub opts: Arc<crate::Options>,
    pub tls: Arc<rustls::ClientConfig>,
}

impl DrainCtx {
    /// The HOST field: the drain token (Heroku's `d.…`), else the drain id.
    pub(crate) fn host(&self) -> &str {
        self.target.token.as_deref().unwrap_or(&self.target.id)
    }

    /// The L10 line for a batch that follows drops (the queue told the app's stream).
    pub(crate) fn l10(&self, dropped: Option<(u64, i64)>) -> Option<LogLine> {
        let (n, since) = dropped?;
        Some(crate::wire::notice(
            &self.target.app,
            &self.space,
            crate::wire::l10_text(n, since),
        ))
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
        let q = DrainQueue::new(3, Duration::from_secs(1), m.for_drain("a", "d"), "d");
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

    fn texts(b: &Batch) -> Vec<String> {
        b.items.iter().map(|i| i.line.line.clone()).collect()
    }

    /// A slow drain holds the pusher back (nothing dropped); one that makes no progress for
    /// the stall deadline is declared stalled and sheds, until it catches up.
    #[tokio::test]
    async fn full_buffer_holds_the_pusher_until_room_or_the_stall_deadline() {
        use futures::FutureExt as _;
        let m = crate::metrics::Metrics::new(prometheus::Registry::new()).unwrap();
        let q = Arc::new(DrainQueue::new(
            3,
            Duration::from_millis(300),
            m.for_drain("a", "d"),
            "d",
        ));
        let dropped = || m.drain_dropped.with_label_values(&["a", "d"]).get();
        let stalled = || m.drain_stalled.with_label_values(&["a", "d"]).get();
        assert!(
            q.push_many((0..3).map(line).collect())
                .now_or_never()
                .is_some()
        );
        let mut wait = Box::pin(q.push_many(vec![line(3), line(4)]));
        assert!(
            (&mut wait).now_or_never().is_none(),
            "a full buffer makes the pusher wait"
        );
        let b = q.next_batch(2).await.unwrap();
        assert_eq!(texts(&b), ["0", "1"]);
        wait.await;
        assert_eq!((dropped(), stalled()), (0, 0));

        // Full again (2, 3, 4) and no progress: stalled at the deadline, then the oldest go.
        q.push_many(vec![line(5)]).await;
        assert_eq!((dropped(), stalled()), (1, 1));
        assert!(
            q.push_many(vec![line(6)]).now_or_never().is_some(),
            "a stalled drain never holds the pusher"
        );
        let b = q.next_batch(10).await.unwrap();
        assert_eq!(texts(&b), ["4", "5", "6"]);
        assert_eq!(b.dropped.map(|d| d.0), Some(2));
        assert_eq!(
            stalled(),
            0,
            "caught up: back-pressure again instead of shedding"
        );
        q.close();
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
