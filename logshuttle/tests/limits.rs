//! Per-app log ingest rate (`[[limits]] log_lines_per_sec`): lines over it are dropped at the
//! sink, counted, and a notice line in the app's stream says how many; other apps unaffected.

mod common;

use std::time::Instant;

use common::*;
use wharf_config::{LogSettings, Rate};
use wharf_logshuttle::{Filter, Handle, Shuttle};

/// Until the noisy app's stream has its rate-limit notice.
async fn wait_for_notice(shuttle: &Handle) {
    wait_for(30, "notice", || {
        shuttle
            .history("noisy-default", 2000, &Filter::default())
            .iter()
            .any(|l| l.line.contains("Log rate limit"))
    })
    .await;
}

/// The noisy app's own lines in its stream.
fn noisy_kept(shuttle: &Handle) -> usize {
    shuttle
        .history("noisy-default", 2000, &Filter::default())
        .iter()
        .filter(|l| l.line.starts_with('n'))
        .count()
}

/// Until every one of the quiet app's 100 lines is in its stream.
async fn wait_for_quiet(shuttle: &Handle) {
    wait_for(30, "quiet app's lines", || {
        shuttle
            .history("quiet-default", 2000, &Filter::default())
            .len()
            == 100
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_rate_drops_the_excess_with_a_notice_and_spares_other_apps() {
    let mut p = plan(
        vec![app("noisy", None, vec![]), app("quiet", None, vec![])],
        LogSettings::default(),
    );
    p.apps.get_mut("noisy-default").unwrap().log_rate = Rate::new(5, 10);
    let shuttle = Shuttle::start(options(), p).await.unwrap();
    let sink = shuttle.sink();
    let t = Instant::now();
    for i in 0..100 {
        sink.send(line("noisy-default", "web.1", &format!("n{i}")));
        sink.send(line("quiet-default", "web.1", &format!("q{i}")));
    }
    let secs = t.elapsed().as_secs_f64().ceil() as usize;
    wait_for_notice(&shuttle).await;
    wait_for_quiet(&shuttle).await;
    // Every line is either kept or counted in a notice (a long flood gets several notices).
    let counted = |history: &[wharf_config::LogLine]| -> (usize, usize) {
        let kept = history.iter().filter(|l| l.line.starts_with('n')).count();
        let dropped = history
            .iter()
            .filter(|l| l.line.contains("Log rate limit"))
            .map(|l| {
                assert!(l.line.contains("5 lines/s"), "{}", l.line);
                l.line
                    .split("applied: ")
                    .nth(1)
                    .and_then(|r| r.split(' ').next())
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap()
            })
            .sum();
        (kept, dropped)
    };
    wait_for(30, "every line kept or counted", || {
        let (kept, dropped) = counted(&shuttle.history("noisy-default", 2000, &Filter::default()));
        kept + dropped == 100
    })
    .await;
    let (kept, _) = counted(&shuttle.history("noisy-default", 2000, &Filter::default()));
    assert!(
        kept >= 10 && kept <= 10 + 5 * secs,
        "kept {kept} in {secs}s"
    );
}

/// Network ingest (logplex, syslog TCP) hands batches straight to the bus: the rate holds there
/// too. Found when ingest stopped going through the sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_rate_holds_for_lines_handed_straight_to_the_bus() {
    let mut p = plan(vec![app("noisy", None, vec![])], LogSettings::default());
    p.apps.get_mut("noisy-default").unwrap().log_rate = Rate::new(5, 10);
    let shuttle = Shuttle::start(options(), p).await.unwrap();
    let t = Instant::now();
    let mut batch: Vec<_> = (0..100)
        .map(|i| line("noisy-default", "web.1", &format!("n{i}")))
        .collect();
    shuttle.publish(&mut batch).await.unwrap();
    let secs = t.elapsed().as_secs_f64().ceil() as usize;
    wait_for_notice(&shuttle).await;
    let kept = noisy_kept(&shuttle);
    assert!(
        kept >= 10 && kept <= 10 + 5 * secs,
        "kept {kept} of 100 in {secs}s"
    );
}

/// Syslog over TCP gathers the lines it reads in the bus's own form (Kafka records, as they
/// are read): the rate is checked there, line by line, and other apps' lines on the same
/// connection are not held to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_rate_holds_for_syslog_tcp() {
    use std::io::Write as _;
    let mut p = plan(
        vec![
            app("noisy", Some("tok-noisy"), vec![]),
            app("quiet", Some("tok-quiet"), vec![]),
        ],
        LogSettings::default(),
    );
    p.apps.get_mut("noisy-default").unwrap().log_rate = Rate::new(5, 10);
    let shuttle = Shuttle::start(options(), p).await.unwrap();
    let l = shuttle
        .bind_syslog_tcp("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let mut bytes = Vec::new();
    for i in 0..100 {
        for (tok, text) in [
            ("tok-noisy", format!("n{i}")),
            ("tok-quiet", format!("q{i}")),
        ] {
            let msg = format!("<190>1 - host app web.1 - [wharf token=\"{tok}\"] {text}");
            bytes.extend_from_slice(format!("{} {msg}", msg.len()).as_bytes());
        }
    }
    let t = Instant::now();
    let mut sock = std::net::TcpStream::connect(l.local_addr()).unwrap();
    sock.write_all(&bytes).unwrap();
    let secs = t.elapsed().as_secs_f64().ceil() as usize;
    wait_for_notice(&shuttle).await;
    wait_for_quiet(&shuttle).await;
    let kept = noisy_kept(&shuttle);
    assert!(
        kept >= 10 && kept <= 10 + 5 * (secs + 1),
        "kept {kept} of 100 in {secs}s"
    );
}
