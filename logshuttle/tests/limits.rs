//! Per-app log ingest rate (`[[limits]] log_lines_per_sec`): lines over it are dropped at the
//! sink, counted, and a notice line in the app's stream says how many; other apps unaffected.

mod common;

use std::time::Instant;

use common::*;
use wharf_config::{LogSettings, Rate};
use wharf_logshuttle::{Filter, Shuttle};

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
    wait_for(30, "notice", || {
        shuttle
            .history("noisy-default", 2000, &Filter::default())
            .iter()
            .any(|l| l.line.contains("Log rate limit"))
    })
    .await;
    wait_for(30, "quiet app's lines", || {
        shuttle
            .history("quiet-default", 2000, &Filter::default())
            .len()
            == 100
    })
    .await;
    let noisy = shuttle.history("noisy-default", 2000, &Filter::default());
    let kept = noisy.iter().filter(|l| l.line.starts_with('n')).count();
    let notice = noisy
        .iter()
        .find(|l| l.line.contains("Log rate limit"))
        .unwrap();
    let dropped: usize = notice
        .line
        .split("applied: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(
        kept >= 10 && kept <= 10 + 5 * secs,
        "kept {kept} in {secs}s"
    );
    assert_eq!(kept + dropped, 100, "{}", notice.line);
    assert!(notice.line.contains("5 lines/s"), "{}", notice.line);
}
