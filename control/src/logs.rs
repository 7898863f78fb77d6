//! The seam log sessions read from. The all-in-one binary implements [`LogSource`] with the log
//! shuttle's history and tail; this crate never depends on the shuttle. [`MemoryLogs`] is a
//! small in-memory implementation (standalone control plane, tests).

use std::collections::VecDeque;
use std::sync::Mutex;

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::broadcast;
use wharf_config::{LineSink, LogLine};

/// What a log session asked for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogQuery {
    /// Lines of history (at most 1500).
    pub lines: usize,
    /// Only this dyno (`web.1`) or process type (`web`).
    pub dyno: Option<String>,
    /// Only `app` or `heroku` lines.
    pub source: Option<String>,
}

impl LogQuery {
    /// Whether `line` passes the dyno and source filters.
    pub fn matches(&self, line: &LogLine) -> bool {
        let dyno_ok = match &self.dyno {
            None => true,
            Some(d) if d.contains('.') => line.process == *d,
            Some(d) => line.process.split('.').next() == Some(d.as_str()),
        };
        let source_ok = self
            .source
            .as_deref()
            .is_none_or(|s| s == line.source.as_str());
        dyno_ok && source_ok
    }
}

/// Where log sessions get lines: the last lines of an app, and its live tail.
#[async_trait::async_trait]
pub trait LogSource: Send + Sync + 'static {
    /// Up to `query.lines` most recent lines of app `app` (key `{app}-{space}`), oldest first.
    async fn history(&self, app: &str, query: &LogQuery) -> Vec<LogLine>;
    /// Lines of `app` from now on, until the stream is dropped.
    fn tail(&self, app: &str, query: &LogQuery) -> BoxStream<'static, LogLine>;
    /// Put a line the control plane was handed (build output) into the app's stream. Never
    /// blocks; a source that keeps no lines drops it.
    fn publish(&self, _line: LogLine) {}
}

/// A line as Heroku prints it: `2026-11-23T09:30:00.123456+00:00 app[web.1]: text`.
pub fn format_line(l: &LogLine) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(l.timestamp_us) * 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let ts = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}+00:00",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    );
    format!("{ts} {}[{}]: {}", l.source.as_str(), l.process, l.line)
}

/// Keeps the last lines of every app in memory and fans new lines out to tails.
#[derive(Debug)]
pub struct MemoryLogs {
    keep: usize,
    lines: Mutex<VecDeque<LogLine>>,
    live: broadcast::Sender<LogLine>,
}

impl Default for MemoryLogs {
    fn default() -> Self {
        MemoryLogs::new(10_000)
    }
}

impl MemoryLogs {
    pub fn new(keep: usize) -> Self {
        MemoryLogs {
            keep,
            lines: Mutex::new(VecDeque::new()),
            live: broadcast::channel(1024).0,
        }
    }
}

impl LineSink for MemoryLogs {
    fn send(&self, line: LogLine) {
        if let Ok(mut l) = self.lines.lock() {
            if l.len() == self.keep {
                l.pop_front();
            }
            l.push_back(line.clone());
        }
        let _ = self.live.send(line);
    }
}

#[async_trait::async_trait]
impl LogSource for MemoryLogs {
    fn publish(&self, line: LogLine) {
        self.send(line);
    }

    async fn history(&self, app: &str, query: &LogQuery) -> Vec<LogLine> {
        let Ok(l) = self.lines.lock() else {
            return Vec::new();
        };
        let mut out: Vec<LogLine> = l
            .iter()
            .rev()
            .filter(|x| x.app == app && query.matches(x))
            .take(query.lines)
            .cloned()
            .collect();
        out.reverse();
        out
    }

    fn tail(&self, app: &str, query: &LogQuery) -> BoxStream<'static, LogLine> {
        let rx = self.live.subscribe();
        let app = app.to_owned();
        let query = query.clone();
        futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(l) => return Some((l, rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .filter(move |l| futures::future::ready(l.app == app && query.matches(l)))
        .boxed()
    }
}
