//! Drains: each one a task with its own bounded buffer. The dispatcher pushes without waiting;
//! when the buffer is full the oldest line is dropped, and the next thing the drain sends is
//! Heroku's L10 notice. The app's stream gets the notice when the lines are shed (at most one
//! per drain every few seconds), so a drain that never recovers is not dropping in silence. A
//! stalled drain therefore slows nothing but itself: even the lines it sheds are let go of on
//! the shuttle's [`Reaper`] task, not on the dispatcher that pushes to every drain.

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

/// A run of one app's lines as the dispatcher hands it to every drain of the app, once: the
/// drains' buffers hold ranges of it, not a copy per line, so a stalled drain that sheds what
/// it is handed costs a few operations a run, not a few a line. The bus acknowledgements of
/// its lines are done when the last holder lets go of it: every drain has delivered its part,
/// shed it (counted for the L10 notice), or is gone. A crash never lets go, so nothing is
/// acknowledged that was not accounted for.
pub(crate) struct Run {
    lines: crate::stream::Lines,
    /// One per record the lines came from (consecutive lines share one).
    acks: Vec<Ack>,
}

impl Run {
    pub(crate) fn new(lines: crate::stream::Lines, acks: Vec<Ack>) -> Run {
        Run { lines, acks }
    }

    pub(crate) fn len(&self) -> usize {
        self.lines.len()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // A panic is not an account of the lines: leave them to come again.
        if std::thread::panicking() {
            return;
        }
        for a in self.acks.drain(..) {
            a.done();
        }
    }
}

/// A line a drain took from its buffer, to deliver; dropping it (or [`Item::done`]) counts
/// it as delivered or accounted for.
pub(crate) struct Item {
    run: Arc<Run>,
    idx: usize,
}

impl Item {
    pub(crate) fn line(&self) -> &LogLine {
        &self.run.lines[self.idx]
    }

    /// Delivered, or accounted for.
    pub(crate) fn done(self) {}
}

/// Lines `start..end` of a run, waiting in a buffer.
struct Seg {
    run: Arc<Run>,
    start: usize,
    end: usize,
}

impl Seg {
    fn len(&self) -> usize {
        self.end - self.start
    }
}

/// A drain's buffered lines: ranges of runs, oldest first.
#[derive(Default)]
struct Segs {
    segs: VecDeque<Seg>,
    len: usize,
}

impl Segs {
    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn push(&mut self, seg: Seg) {
        if seg.len() > 0 {
            self.len += seg.len();
            self.segs.push_back(seg);
        }
    }

    /// Drop the `n` oldest lines; the runs this buffer no longer holds any line of go to
    /// `gone` (for the caller to let go of outside the lock, or to hand to the [`Reaper`]).
    fn shed(&mut self, n: usize, gone: &mut Vec<Arc<Run>>) {
        self.pop_oldest(n, |_, _| {}, |run| gone.push(run));
    }

    /// The `n` oldest lines, as items.
    fn take(&mut self, n: usize, out: &mut Vec<Item>) {
        out.reserve(n.min(self.len));
        self.pop_oldest(
            n,
            |run, lines| {
                out.extend(lines.map(|idx| Item {
                    run: run.clone(),
                    idx,
                }))
            },
            drop,
        );
    }

    /// Remove the `n` oldest lines (fewer if fewer are held), handing each segment's part to
    /// `each` as its run and line indices, and each run no longer held at all to `emptied`.
    fn pop_oldest(
        &mut self,
        n: usize,
        mut each: impl FnMut(&Arc<Run>, std::ops::Range<usize>),
        mut emptied: impl FnMut(Arc<Run>),
    ) {
        let mut n = n.min(self.len);
        while n > 0 {
            let front = self.segs.front_mut().expect("len counts the segments");
            let k = front.len().min(n);
            each(&front.run, front.start..front.start + k);
            front.start += k;
            self.len -= k;
            n -= k;
            if front.len() == 0
                && let Some(seg) = self.segs.pop_front()
            {
                emptied(seg.run);
            }
        }
    }
}

/// Where the runs a stalled drain sheds are let go of: a task of the shuttle's own. The last
/// holder of a run frees its lines and does its acknowledgements; for a stalled drain that is
/// the drain that sheds, and shedding happens as the dispatcher pushes — the one task every
/// line of every app passes through. Freeing there made a stalled drain cost the healthy ones
/// 8–11 % of their throughput on 2 cores (BENCHMARKS.md, session 8); handed over, it is work
/// any core can do. The pile is bounded: when the reaper is that far behind, the shedder lets
/// go itself.
#[derive(Clone)]
pub(crate) struct Reaper(Arc<ReaperInner>);

struct ReaperInner {
    pile: Mutex<Vec<Vec<Arc<Run>>>>,
    wake: Arc<Notify>,
}

impl Drop for ReaperInner {
    /// The last handle is gone: the task ends (what was left is let go of here).
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}

/// Shed lots the reaper holds at most before shedders let go themselves.
const REAP_PILE: usize = 256;
/// Shed lots the reaper lets go of before it lets other tasks run.
const REAP_TURN: usize = 16;

impl Reaper {
    /// A reaper and its task, which ends with the last handle (or when aborted; then
    /// [`Reaper::flush`] lets go of what it had not).
    pub(crate) fn start() -> (Reaper, tokio::task::JoinHandle<()>) {
        let wake = Arc::new(Notify::new());
        let r = Reaper(Arc::new(ReaperInner {
            pile: Mutex::new(Vec::new()),
            wake: wake.clone(),
        }));
        let weak = Arc::downgrade(&r.0);
        let task = tokio::spawn(async move {
            loop {
                wake.notified().await;
                // A few lots a turn: a long pile does not hold a worker for long.
                loop {
                    let Some(inner) = weak.upgrade() else { return };
                    let lots = Reaper(inner).take(REAP_TURN);
                    if lots.is_empty() {
                        break;
                    }
                    drop(lots);
                    tokio::task::yield_now().await;
                }
            }
        });
        (r, task)
    }

    /// Up to `n` of the oldest lots handed over.
    fn take(&self, n: usize) -> Vec<Vec<Arc<Run>>> {
        let mut pile = self.0.pile.lock();
        let n = n.min(pile.len());
        pile.drain(..n).collect()
    }

    /// Hand over runs to let go of (at once, here, when the pile is full).
    fn let_go(&self, runs: Vec<Arc<Run>>) {
        if runs.is_empty() {
            return;
        }
        let mut pile = self.0.pile.lock();
        if pile.len() >= REAP_PILE {
            drop(pile);
            drop(runs);
            return;
        }
        pile.push(runs);
        drop(pile);
        self.0.wake.notify_one();
    }

    /// Let go of everything handed over so far, here and now.
    pub(crate) fn flush(&self) {
        drop(self.take(usize::MAX));
    }
}

struct QueueState {
    buf: Segs,
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
    reaper: Option<Reaper>,
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
                buf: Segs::default(),
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
            reaper: None,
        }
    }

    /// Let go of shed runs through `reaper` (else where they are shed).
    pub(crate) fn with_reaper(mut self, reaper: Reaper) -> DrainQueue {
        self.reaper = Some(reaper);
        self
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

    /// Never waits: a full buffer loses its oldest lines.
    #[cfg(test)]
    pub(crate) fn push(&self, run: Arc<Run>) {
        let end = run.len();
        self.push_shedding(Seg { run, start: 0, end });
    }

    /// Append `seg`, shedding the oldest lines beyond the cap.
    fn push_shedding(&self, seg: Seg) {
        let mut gone = Vec::new();
        let (shed, untold) = {
            let mut s = self.state.lock();
            if s.closed {
                return;
            }
            s.buf.push(seg);
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
                s.buf.shed(over, &mut gone);
            }
            self.metrics.buffer.set(s.buf.len() as i64);
            let untold = self.take_untold(&mut s, false);
            (over, untold)
        };
        self.tell(untold);
        if shed > 0 {
            self.metrics.dropped.inc_by(shed as u64);
        }
        self.notify.notify_one();
        match &self.reaper {
            Some(r) => r.let_go(gone),
            None => drop(gone),
        }
    }

    /// Append the lines of `run` in order. Waits for room while the drain is only slow; after
    /// the stall deadline without room the drain is declared stalled and sheds its oldest
    /// lines instead.
    pub(crate) async fn push_run(&self, run: &Arc<Run>) {
        let mut start = 0;
        let end = run.len();
        loop {
            let room = self.room.notified();
            let stalled = {
                let mut s = self.state.lock();
                if s.closed {
                    return;
                }
                if !s.stalled {
                    let free = self.cap.saturating_sub(s.buf.len());
                    let n = free.min(end - start);
                    if n > 0 {
                        s.buf.push(Seg {
                            run: run.clone(),
                            start,
                            end: start + n,
                        });
                        start += n;
                        self.metrics.buffer.set(s.buf.len() as i64);
                        self.notify.notify_one();
                    }
                    if start == end {
                        return;
                    }
                }
                s.stalled
            };
            if stalled {
                self.push_shedding(Seg {
                    run: run.clone(),
                    start,
                    end,
                });
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
                    let mut items = Vec::new();
                    s.buf.take(max, &mut items);
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
        s.buf.take(n, &mut batch.items);
        self.metrics.buffer.set(s.buf.len() as i64);
        drop(s);
        if n > 0 {
            self.room.notify_waiters();
        }
    }

    /// Stop the drain; whatever is buffered is accounted for (the drain is gone).
    pub(crate) fn close(&self) {
        let held = {
            let mut s = self.state.lock();
            s.closed = true;
            std::mem::take(&mut s.buf)
        };
        drop(held);
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

    /// A run of lines `i`, `i+1`, … (their text is the number).
    fn run(lines: std::ops::Range<usize>) -> Arc<Run> {
        run_acked(lines, Ack::none())
    }

    fn run_acked(lines: std::ops::Range<usize>, ack: Ack) -> Arc<Run> {
        let lines = lines
            .map(|i| LogLine {
                app: "a".into(),
                space: "s".into(),
                source: wharf_config::Source::App,
                process: "web.1".into(),
                timestamp_us: 0,
                line: i.to_string(),
            })
            .collect();
        Arc::new(Run::new(Arc::new(lines), vec![ack]))
    }

    #[tokio::test]
    async fn drops_oldest_and_counts() {
        let m = crate::metrics::Metrics::new(prometheus::Registry::new()).unwrap();
        let q = DrainQueue::new(3, Duration::from_secs(1), m.for_drain("a", "d"), "d");
        q.push(run(0..2));
        q.push(run(2..5));
        let b = q.next_batch(10).await.unwrap();
        assert_eq!(texts(&b), ["2", "3", "4"]);
        assert_eq!(b.dropped.map(|d| d.0), Some(2));
        q.push(run(9..10));
        let b = q.next_batch(10).await.unwrap();
        assert_eq!(b.dropped, None);
        assert_eq!(m.drain_dropped.with_label_values(&["a", "d"]).get(), 2);
        q.close();
        assert!(q.next_batch(10).await.is_none());
    }

    fn texts(b: &Batch) -> Vec<String> {
        b.items.iter().map(|i| i.line().line.clone()).collect()
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
        assert!(q.push_run(&run(0..3)).now_or_never().is_some());
        let second = run(3..5);
        let mut wait = Box::pin(q.push_run(&second));
        assert!(
            (&mut wait).now_or_never().is_none(),
            "a full buffer makes the pusher wait"
        );
        let b = q.next_batch(2).await.unwrap();
        assert_eq!(texts(&b), ["0", "1"]);
        wait.await;
        assert_eq!((dropped(), stalled()), (0, 0));

        // Full again (2, 3, 4) and no progress: stalled at the deadline, then the oldest go.
        q.push_run(&run(5..6)).await;
        assert_eq!((dropped(), stalled()), (1, 1));
        assert!(
            q.push_run(&run(6..7)).now_or_never().is_some(),
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

    /// A run's acknowledgement is done once every drain has let go of its lines: one that
    /// delivered them, one that shed them (counted for L10), one closed with them buffered.
    #[tokio::test]
    async fn a_run_is_acknowledged_when_every_drain_let_go_of_it() {
        #[derive(Default)]
        struct Rec(parking_lot::Mutex<Vec<(i32, i64)>>);
        impl crate::bus::Acker for Rec {
            fn done(&self, p: i32, o: i64) {
                self.0.lock().push((p, o));
            }
        }
        let rec = Arc::new(Rec::default());
        let m = crate::metrics::Metrics::new(prometheus::Registry::new()).unwrap();
        let queue = |id: &str| DrainQueue::new(4, Duration::from_secs(1), m.for_drain("a", id), id);
        let (delivering, shedding, closing) = (queue("d1"), queue("d2"), queue("d3"));

        let r = run_acked(0..3, Ack::new(0, 7, rec.clone()));
        for q in [&delivering, &shedding, &closing] {
            q.push_run(&r).await;
        }
        drop(r);
        // The shedding drain takes a second run that pushes the first one's lines out.
        shedding.push(run(3..8));
        let b = delivering.next_batch(10).await.unwrap();
        assert_eq!(texts(&b), ["0", "1", "2"]);
        closing.close();
        assert!(
            rec.0.lock().is_empty(),
            "the delivering drain still holds the lines"
        );
        for i in b.items {
            i.done();
        }
        assert_eq!(*rec.0.lock(), vec![(0, 7)]);
        let b = shedding.next_batch(10).await.unwrap();
        assert_eq!(texts(&b), ["4", "5", "6", "7"]);
        assert_eq!(b.dropped.map(|d| d.0), Some(4));
    }

    #[derive(Default)]
    struct Acked(parking_lot::Mutex<Vec<(i32, i64)>>);
    impl crate::bus::Acker for Acked {
        fn done(&self, p: i32, o: i64) {
            self.0.lock().push((p, o));
        }
    }

    /// What a stalled drain sheds is let go of (freed, acknowledged) by the reaper's task, not
    /// by the pusher — the dispatcher; `flush` lets go at once (shutdown); a full pile makes
    /// the pusher let go itself.
    #[tokio::test]
    async fn shed_runs_are_let_go_of_by_the_reaper() {
        let acked = Arc::new(Acked::default());
        let m = crate::metrics::Metrics::new(prometheus::Registry::new()).unwrap();
        let (reaper, task) = Reaper::start();
        let q = DrainQueue::new(2, Duration::from_secs(1), m.for_drain("a", "d"), "d")
            .with_reaper(reaper.clone());
        q.push(run_acked(0..2, Ack::new(0, 1, acked.clone())));
        q.push(run(2..4));
        assert!(
            acked.0.lock().is_empty(),
            "the pusher let go of the shed run itself"
        );
        // The reaper's task runs once this one waits (one thread: not before).
        for _ in 0..100 {
            if !acked.0.lock().is_empty() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(*acked.0.lock(), vec![(0, 1)]);

        q.push(run_acked(4..6, Ack::new(0, 2, acked.clone())));
        q.push(run(6..8));
        reaper.flush();
        assert_eq!(*acked.0.lock(), vec![(0, 1), (0, 2)], "flush lets go now");

        // The pile fills (run 6..8 and runs 1/0 … 1/254; no task turn in between), so the
        // next shed run (1/255) is let go of by the pusher.
        let last = REAP_PILE as i64 - 1;
        for i in 0..=last {
            q.push(run_acked(0..2, Ack::new(1, i, acked.clone())));
        }
        assert_eq!(acked.0.lock().len(), 2);
        q.push(run(0..2));
        assert_eq!(
            acked.0.lock().last(),
            Some(&(1, last)),
            "with the pile full the pusher lets go itself"
        );
        reaper.flush();
        assert_eq!(acked.0.lock().len(), 2 + REAP_PILE);

        // The task ends with the last handle.
        drop((q, reaper));
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the reaper's task ended")
            .unwrap();
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
