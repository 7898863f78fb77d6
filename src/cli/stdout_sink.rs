//! Log lines to stdout without a write per line on the request path: a channel of batches to a
//! writer thread that writes through a buffer and flushes when the channel runs dry. At most
//! [`MAX_QUEUED`] lines wait; lines that do not fit are counted and reported, never waited for.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};

use wharf_config::{LineSink, LogLine};

/// Lines that may wait for the writer.
const MAX_QUEUED: usize = 65_536;

pub struct StdoutSink {
    tx: Sender<Vec<LogLine>>,
    queued: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
}

impl StdoutSink {
    pub fn start() -> StdoutSink {
        StdoutSink::to(std::io::stdout())
    }

    fn to<W: Write + Send + 'static>(out: W) -> StdoutSink {
        let (tx, rx) = channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let (q, d) = (queued.clone(), dropped.clone());
        std::thread::Builder::new()
            .name("wharf-stdout".into())
            .spawn(move || write_loop(rx, out, q, d))
            .expect("spawn stdout writer");
        StdoutSink {
            tx,
            queued,
            dropped,
        }
    }

    /// Queue `lines` when they fit under [`MAX_QUEUED`], else count them as dropped.
    fn hand_over(&self, lines: Vec<LogLine>) {
        let n = lines.len();
        let fits = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q + n <= MAX_QUEUED).then_some(q + n)
            })
            .is_ok();
        if !fits || self.tx.send(lines).is_err() {
            if fits {
                self.queued.fetch_sub(n, Ordering::AcqRel);
            }
            self.dropped.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

impl LineSink for StdoutSink {
    fn send(&self, line: LogLine) {
        self.hand_over(vec![line]);
    }

    fn send_batch(&self, lines: &mut Vec<LogLine>) {
        self.hand_over(std::mem::take(lines));
    }
}

/// `app source[process]: line`
fn write_line(out: &mut impl Write, l: &LogLine) -> std::io::Result<()> {
    out.write_all(l.app.as_bytes())?;
    out.write_all(b" ")?;
    out.write_all(l.source.as_str().as_bytes())?;
    out.write_all(b"[")?;
    out.write_all(l.process.as_bytes())?;
    out.write_all(b"]: ")?;
    out.write_all(l.line.as_bytes())?;
    out.write_all(b"\n")
}

fn write_loop<W: Write>(
    rx: Receiver<Vec<LogLine>>,
    out: W,
    queued: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut reported = 0;
    while let Ok(batch) = rx.recv() {
        let mut next = Some(batch);
        while let Some(lines) = next {
            for l in &lines {
                let _ = write_line(&mut out, l);
            }
            queued.fetch_sub(lines.len(), Ordering::AcqRel);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use wharf_config::Source;

    /// A writer the test reads back; `gate` held → the writer thread blocks on its first write.
    #[derive(Clone)]
    struct Shared {
        bytes: Arc<Mutex<Vec<u8>>>,
        gate: Arc<Mutex<()>>,
    }

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let _open = self.gate.lock().unwrap();
            self.bytes.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn line(i: usize) -> LogLine {
        LogLine {
            app: "web-prod".into(),
            space: "prod".into(),
            source: Source::Heroku,
            process: "router".into(),
            timestamp_us: 0,
            line: format!("at=info n={i}"),
        }
    }

    /// Waits (bounded: 60 s, for a machine busy with other builds) until `want` is written.
    fn wait_for(shared: &Shared, want: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            let text = String::from_utf8(shared.bytes.lock().unwrap().clone()).unwrap();
            if text.contains(want) {
                return text;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("never written: {want}");
    }

    #[test]
    fn batches_and_single_lines_are_written_in_order() {
        let shared = Shared {
            bytes: Arc::default(),
            gate: Arc::default(),
        };
        let sink = StdoutSink::to(shared.clone());
        sink.send(line(0));
        let mut batch: Vec<LogLine> = (1..4).map(line).collect();
        sink.send_batch(&mut batch);
        assert!(batch.is_empty(), "the batch is taken");
        let text = wait_for(&shared, "n=3\n");
        assert_eq!(
            text,
            "web-prod heroku[router]: at=info n=0\nweb-prod heroku[router]: at=info n=1\n\
             web-prod heroku[router]: at=info n=2\nweb-prod heroku[router]: at=info n=3\n"
        );
    }

    #[test]
    fn lines_over_the_bound_are_counted_and_reported() {
        let shared = Shared {
            bytes: Arc::default(),
            gate: Arc::default(),
        };
        let held = shared.gate.lock().unwrap();
        let sink = StdoutSink::to(shared.clone());
        // The writer takes the first batch and blocks writing it (its buffer is 64 KiB, so
        // this batch is made large enough to reach the writer); what follows queues.
        let mut first: Vec<LogLine> = (0..2000).map(line).collect();
        sink.send_batch(&mut first);
        let mut fill: Vec<LogLine> = (0..MAX_QUEUED - 2000).map(line).collect();
        sink.send_batch(&mut fill);
        let mut over: Vec<LogLine> = (0..5).map(line).collect();
        sink.send_batch(&mut over);
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 5);
        drop(held);
        // The report follows the queued lines, once the writer has run dry: only then is
        // there room again (a line sent before could still find the bound reached).
        wait_for(&shared, "lines dropped");
        sink.send(line(999_999));
        let text = wait_for(&shared, "n=999999\n");
        assert!(text.contains("wharf: 5 log lines dropped (stdout too slow)\n"));
        // Every line that was queued arrives: the bound's worth and the one after.
        assert_eq!(text.matches("heroku[router]").count(), MAX_QUEUED + 1);
    }
}
