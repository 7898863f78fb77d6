//! Log lines to stdout without a write per line on the request path: a bounded channel to a
//! writer thread that batches through a buffer and flushes when the channel runs dry. Lines
//! that do not fit are counted and reported, never waited for.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use wharf_config::{LineSink, LogLine};

pub struct StdoutSink {
    tx: SyncSender<LogLine>,
    dropped: Arc<AtomicU64>,
}

impl StdoutSink {
    pub fn start() -> StdoutSink {
        let (tx, rx) = sync_channel(65_536);
        let dropped = Arc::new(AtomicU64::new(0));
        let d = dropped.clone();
        std::thread::Builder::new()
            .name("wharf-stdout".into())
            .spawn(move || write_loop(rx, d))
            .expect("spawn stdout writer");
        StdoutSink { tx, dropped }
    }
}

impl LineSink for StdoutSink {
    fn send(&self, line: LogLine) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(line) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn write_loop(rx: Receiver<LogLine>, dropped: Arc<AtomicU64>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    let mut reported = 0;
    while let Ok(line) = rx.recv() {
        let mut next = Some(line);
        while let Some(l) = next {
            let _ = writeln!(
                out,
                "{} {}[{}]: {}",
                l.app,
                l.source.as_str(),
                l.process,
                l.line
            );
            next = rx.try_recv().ok();
        }
        let lost = dropped.load(Ordering::Relaxed);
        if lost != reported {
            let _ = writeln!(
                out,
                "wharf: {} log lines dropped (stdout too slow)",
                lost - reported
            );
            reported = lost;
        }
        let _ = out.flush();
    }
}
