//! Each app's stream as Heroku log sessions see it: the last N lines (history, bounded) and the
//! live tail. A tail reader that falls behind is cut loose with an L11 notice; it never holds
//! up the dispatcher.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use parking_lot::Mutex;
use tokio::sync::mpsc;
use wharf_config::{LogLine, Source};

use crate::metrics::Metrics;

/// Heroku's `--dyno` and `--source` of a log session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// `web` matches every `web.N`; `web.1` only that one; `router` the router's lines.
    pub dyno: Option<String>,
    pub source: Option<Source>,
}

impl Filter {
    pub fn matches(&self, line: &LogLine) -> bool {
        if let Some(s) = self.source
            && line.source != s
        {
            return false;
        }
        match &self.dyno {
            None => true,
            Some(d) => {
                line.process == *d
                    || (line.process.len() > d.len()
                        && line.process.starts_with(d.as_str())
                        && line.process.as_bytes()[d.len()] == b'.')
            }
        }
    }
}

/// A run of one app's lines as the dispatcher hands it on: shared by the drains
/// ([`crate::drain::Run`]), the history ring and the tails, not copied or boxed a line at a time.
pub(crate) type Lines = Arc<Vec<LogLine>>;

/// Line `idx` of a shared run.
#[derive(Clone)]
pub(crate) struct LineAt {
    lines: Lines,
    idx: usize,
}

impl std::ops::Deref for LineAt {
    type Target = LogLine;
    fn deref(&self) -> &LogLine {
        &self.lines[self.idx]
    }
}

struct TailSub {
    tx: mpsc::Sender<LineAt>,
    filter: Filter,
    cut: Arc<AtomicBool>,
}

/// Lines `start..` of a run, in the history ring. A run stays in memory while any of its
/// lines is in the history: at most one run's worth beyond the history's bound, per app.
struct Seg {
    lines: Lines,
    start: usize,
}

struct Inner {
    history: VecDeque<Seg>,
    /// Lines in `history`.
    len: usize,
    tails: Vec<TailSub>,
}

impl Inner {
    /// Drop the oldest lines beyond `cap`.
    fn trim(&mut self, cap: usize) {
        while self.len > cap {
            let Some(front) = self.history.front_mut() else {
                return;
            };
            let (held, excess) = (front.lines.len() - front.start, self.len - cap);
            if held <= excess {
                self.history.pop_front();
                self.len -= held;
            } else {
                front.start += excess;
                self.len -= excess;
            }
        }
    }
}

/// One app's history and tails.
pub(crate) struct AppStream {
    app: String,
    space: String,
    cap: AtomicUsize,
    tail_buffer: usize,
    inner: Mutex<Inner>,
    metrics: Metrics,
}

impl AppStream {
    pub(crate) fn new(
        app: &str,
        space: &str,
        cap: usize,
        tail_buffer: usize,
        metrics: Metrics,
    ) -> AppStream {
        AppStream {
            app: app.to_owned(),
            space: space.to_owned(),
            cap: AtomicUsize::new(cap),
            tail_buffer: tail_buffer.max(1),
            inner: Mutex::new(Inner {
                history: VecDeque::new(),
                len: 0,
                tails: Vec::new(),
            }),
            metrics,
        }
    }

    pub(crate) fn set_cap(&self, cap: usize) {
        self.cap.store(cap, Ordering::Relaxed);
        self.inner.lock().trim(cap);
    }

    pub(crate) fn push(&self, line: LogLine) {
        self.push_run(&Arc::new(vec![line]));
    }

    /// A run's lines in order: into every tail that wants them, then into the history ring
    /// (the run once, not a line at a time).
    pub(crate) fn push_run(&self, lines: &Lines) {
        let cap = self.cap.load(Ordering::Relaxed);
        let mut inner = self.inner.lock();
        if !inner.tails.is_empty() {
            for idx in 0..lines.len() {
                let line = LineAt {
                    lines: lines.clone(),
                    idx,
                };
                Self::to_tails(&mut inner, &self.metrics, line);
            }
        }
        if cap == 0 || lines.is_empty() {
            return;
        }
        inner.history.push_back(Seg {
            lines: lines.clone(),
            start: 0,
        });
        inner.len += lines.len();
        inner.trim(cap);
    }

    fn to_tails(inner: &mut Inner, metrics: &Metrics, line: LineAt) {
        inner.tails.retain(|t| {
            if !t.filter.matches(&line) {
                return !t.tx.is_closed();
            }
            match t.tx.try_send(line.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    t.cut.store(true, Ordering::Release);
                    metrics.tail_cut.inc();
                    tracing::info!("tail session fell behind; cut loose");
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    /// The last `lines` lines that pass `filter`, oldest first.
    pub(crate) fn history(&self, lines: usize, filter: &Filter) -> Vec<LogLine> {
        let inner = self.inner.lock();
        history_of(&inner, lines, filter)
    }

    /// History and a tail that starts right after it, with no gap and no overlap.
    pub(crate) fn session(&self, lines: usize, filter: Filter) -> (Vec<LogLine>, Tail) {
        let mut inner = self.inner.lock();
        let hist = history_of(&inner, lines, &filter);
        let (tx, rx) = mpsc::channel(self.tail_buffer);
        let cut = Arc::new(AtomicBool::new(false));
        inner.tails.push(TailSub {
            tx,
            filter,
            cut: cut.clone(),
        });
        self.metrics.tail_sessions.inc();
        let tail = Tail {
            rx,
            cut,
            app: self.app.clone(),
            space: self.space.clone(),
            buffer: self.tail_buffer,
            finished: false,
            metrics: self.metrics.clone(),
        };
        (hist, tail)
    }
}

fn history_of(inner: &Inner, lines: usize, filter: &Filter) -> Vec<LogLine> {
    let mut out: Vec<LogLine> = inner
        .history
        .iter()
        .rev()
        .flat_map(|seg| seg.lines[seg.start..].iter().rev())
        .filter(|l| filter.matches(l))
        .take(lines)
        .map(LogLine::clone)
        .collect();
    out.reverse();
    out
}

/// A live tail of one app. Ends when the shuttle stops, or — after an L11 notice line — when
/// the reader fell more than the tail buffer behind.
pub struct Tail {
    rx: mpsc::Receiver<LineAt>,
    cut: Arc<AtomicBool>,
    app: String,
    space: String,
    buffer: usize,
    finished: bool,
    metrics: Metrics,
}

impl std::fmt::Debug for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tail").field("app", &self.app).finish()
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.metrics.tail_sessions.dec();
    }
}

impl Tail {
    /// The next line, or `None` when the tail has ended.
    pub async fn recv(&mut self) -> Option<LogLine> {
        std::future::poll_fn(|cx| self.poll_line(cx)).await
    }

    fn poll_line(&mut self, cx: &mut Context<'_>) -> Poll<Option<LogLine>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(l)) => Poll::Ready(Some(LogLine::clone(&l))),
            Poll::Ready(None) => {
                self.finished = true;
                if self.cut.load(Ordering::Acquire) {
                    Poll::Ready(Some(crate::wire::notice(
                        &self.app,
                        &self.space,
                        format!(
                            "Error L11 (Tail buffer overflow): this session fell more than {} lines behind and was closed; lines after this point were not sent to it. Reconnect to resume.",
                            self.buffer
                        ),
                    )))
                } else {
                    Poll::Ready(None)
                }
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl futures::Stream for Tail {
    type Item = LogLine;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<LogLine>> {
        self.get_mut().poll_line(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(process: &str, source: Source, text: &str) -> LogLine {
        LogLine {
            app: "a-s".into(),
            space: "s".into(),
            source,
            process: process.into(),
            timestamp_us: 1,
            line: text.into(),
        }
    }

    fn stream(cap: usize, tail: usize) -> AppStream {
        AppStream::new(
            "a-s",
            "s",
            cap,
            tail,
            Metrics::new(prometheus::Registry::new()).unwrap(),
        )
    }

    #[test]
    fn filters() {
        let f = Filter {
            dyno: Some("web".into()),
            source: None,
        };
        assert!(f.matches(&l("web.1", Source::App, "")));
        assert!(!f.matches(&l("webx.1", Source::App, "")));
        assert!(!f.matches(&l("worker.1", Source::App, "")));
        let f = Filter {
            dyno: None,
            source: Some(Source::Heroku),
        };
        assert!(f.matches(&l("router", Source::Heroku, "")));
        assert!(!f.matches(&l("web.1", Source::App, "")));
    }

    #[test]
    fn history_is_bounded_and_filtered() {
        let s = stream(3, 10);
        for i in 0..5 {
            s.push(l(
                if i % 2 == 0 { "web.1" } else { "router" },
                Source::App,
                &i.to_string(),
            ));
        }
        let all: Vec<String> = s
            .history(10, &Filter::default())
            .into_iter()
            .map(|l| l.line)
            .collect();
        assert_eq!(all, ["2", "3", "4"]);
        let two: Vec<String> = s
            .history(2, &Filter::default())
            .into_iter()
            .map(|l| l.line)
            .collect();
        assert_eq!(two, ["3", "4"]);
        let web = Filter {
            dyno: Some("web".into()),
            source: None,
        };
        let w: Vec<String> = s.history(10, &web).into_iter().map(|l| l.line).collect();
        assert_eq!(w, ["2", "4"]);
    }

    #[tokio::test]
    async fn runs_enter_history_and_tails_whole_and_leave_it_a_line_at_a_time() {
        let s = stream(5, 100);
        let (_, mut tail) = s.session(0, Filter::default());
        let run = |name: &str, n: usize| -> Lines {
            Arc::new(
                (0..n)
                    .map(|i| l("web.1", Source::App, &format!("{name}{i}")))
                    .collect(),
            )
        };
        let texts = |s: &AppStream, n: usize| -> Vec<String> {
            s.history(n, &Filter::default())
                .into_iter()
                .map(|l| l.line)
                .collect()
        };
        s.push_run(&run("a", 3));
        s.push_run(&run("b", 4));
        // The first run cut part-way: its last line stays.
        assert_eq!(texts(&s, 10), ["a2", "b0", "b1", "b2", "b3"]);
        assert_eq!(texts(&s, 2), ["b2", "b3"]);
        s.set_cap(2);
        assert_eq!(texts(&s, 10), ["b2", "b3"]);
        // A run longer than the bound keeps its last lines only.
        s.push_run(&run("c", 10));
        assert_eq!(texts(&s, 10), ["c8", "c9"]);
        assert_eq!(s.inner.lock().history.len(), 1);
        // The tail got every line, in order.
        let mut got = Vec::new();
        for _ in 0..17 {
            got.push(tail.recv().await.unwrap().line);
        }
        let want: Vec<String> = ["a", "b", "c"]
            .iter()
            .zip([3, 4, 10])
            .flat_map(|(n, k)| (0..k).map(move |i| format!("{n}{i}")))
            .collect();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn slow_tail_is_cut_with_l11() {
        let s = stream(100, 2);
        let (hist, mut fast) = s.session(10, Filter::default());
        assert!(hist.is_empty());
        let (_, mut slow) = s.session(10, Filter::default());
        s.push(l("web.1", Source::App, "1"));
        s.push(l("web.1", Source::App, "2"));
        assert_eq!(fast.recv().await.unwrap().line, "1");
        assert_eq!(fast.recv().await.unwrap().line, "2");
        s.push(l("web.1", Source::App, "3")); // slow is full: cut loose
        assert_eq!(fast.recv().await.unwrap().line, "3");
        assert_eq!(slow.recv().await.unwrap().line, "1");
        assert_eq!(slow.recv().await.unwrap().line, "2");
        let notice = slow.recv().await.unwrap();
        assert!(
            notice.line.starts_with("Error L11 (Tail buffer overflow)"),
            "{}",
            notice.line
        );
        assert_eq!(notice.process, "logplex");
        assert!(slow.recv().await.is_none());
        s.push(l("web.1", Source::App, "4"));
        assert_eq!(fast.recv().await.unwrap().line, "4");
    }
}
