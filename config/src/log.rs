//! A log line as it crosses crate lines: from the router, dynos and builds into the shuttle.

pub use compact_str::CompactString;
use serde::{Deserialize, Serialize};

/// Who wrote a line: the app itself, or the platform about the app (router, dyno manager).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    App,
    Heroku,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::App => "app",
            Source::Heroku => "heroku",
        }
    }
}

/// One log line of one app. The names are [`CompactString`]s: up to 24 bytes they live inside
/// the line, so making, cloning and dropping a line costs one allocation (its text), not four;
/// every line of every app passes through the shuttle, some of them twice (Kafka).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// App key `{app}-{space}`.
    pub app: CompactString,
    pub space: CompactString,
    pub source: Source,
    /// `web.1`, `run.3`, `build`, `router`.
    pub process: CompactString,
    /// Microseconds since the Unix epoch, UTC.
    pub timestamp_us: i64,
    pub line: String,
}

/// A log line borrowed from where it was read (a syslog frame) or from a [`LogLine`]: what an
/// encoder needs, without building the line.
#[derive(Debug, Clone, Copy)]
pub struct LineRef<'a> {
    pub app: &'a str,
    pub space: &'a str,
    pub source: Source,
    pub process: &'a str,
    pub timestamp_us: i64,
    pub line: &'a str,
}

impl<'a> LineRef<'a> {
    pub fn of(l: &'a LogLine) -> LineRef<'a> {
        LineRef {
            app: &l.app,
            space: &l.space,
            source: l.source,
            process: &l.process,
            timestamp_us: l.timestamp_us,
            line: &l.line,
        }
    }

    pub fn to_line(self) -> LogLine {
        LogLine {
            app: self.app.into(),
            space: self.space.into(),
            source: self.source,
            process: self.process.into(),
            timestamp_us: self.timestamp_us,
            line: self.line.to_owned(),
        }
    }
}

/// Where a data plane hands its log lines: never blocks, never fails the caller. An
/// implementation that must shed load counts what it shed (and says so in the app's stream).
pub trait LineSink: Send + Sync + 'static {
    fn send(&self, line: LogLine);

    /// Several lines at once, `lines` left empty. A sink that hands lines to another thread
    /// overrides it to do that once for the whole batch rather than once a line.
    fn send_batch(&self, lines: &mut Vec<LogLine>) {
        for line in lines.drain(..) {
            self.send(line);
        }
    }
}
