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

struct TailSub {
    tx: mpsc::Sender<Arc<LogLine>>,
    filter: Filter,
    cut: Arc<AtomicBool>,
}

struct Inner {
    history: VecDeque<Arc<LogLine>>,
    tails: Vec<TailSub>,
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
                tails: Vec::new(),
            }),
            metrics,
        }
    }

    pub(crate) fn set_cap(&self, cap: usize) {
        self.cap.store(cap, Ordering::Relaxed);
        let mut inner = self.inner.lock();
        while inner.history.len() > cap {
            inner.history.pop_front();
        }
    }

    pub(crate) fn push(&self, line: Arc<LogLine>) {
        self.push_many(std::slice::from_ref(&line));
    }

    /// Lines in order: into every tail that wants them, then into the history ring.
    pub(crate) fn push_many(&self, lines: &[Arc<LogLine>]) {
        let cap = self.cap.load(Ordering::Relaxed);
        let mut inner = self.inner.lock();
        for line in lines {
            Self::push_locked(&mut inner, &self.metrics, cap, line);
        }
    }

    fn push_locked(inner: &mut Inner, metrics: &Metrics, cap: usize, line: &Arc<LogLine>) {
        if !inner.tails.is_empty() {
            inner.tails.retain(|t| {
                if !t.filter.matches(line) {
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
        if cap == 0 {
            return;
        }
        if inner.history.len() >= cap {
            inner.history.pop_front();
        }
        inner.history.push_back(line.clone());
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
        .filter(|l| filter.matches(l))
        .take(lines)
        .map(|l| LogLine::clone(l))
        .collect();
    out.reverse();
    out
}

/// A live tail of one app. Ends when the shuttle stops, or — after an L11 notice line — when
/// the reader fell more than the tail buffer behind.
pub struct Tail {
    rx: mpsc::Receiver<Arc<LogLine>>,
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

    fn l(process: &str, source: Source, text: &str) -> Arc<LogLine> {
        Arc::new(LogLine {
            app: "a-s".into(),
            space: "s".into(),
            source,
            process: process.into(),
            timestamp_us: 1,
            line: text.into(),
        })
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
