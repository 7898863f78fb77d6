//! Sink, history, tail and reload without any network peer.

mod common;

use std::time::Duration;

use common::*;
use wharf_config::{LogSettings, Source};
use wharf_logshuttle::{Error, Filter, Options, Shuttle};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_then_tail_with_filters() {
    let settings = LogSettings {
        history_lines: 5,
        ..LogSettings::default()
    };
    let shuttle = Shuttle::start(options(), plan(vec![app("api", None, vec![])], settings))
        .await
        .unwrap();
    let sink = shuttle.sink();
    for i in 0..8 {
        sink.send(line(
            "api-default",
            if i % 2 == 0 { "web.1" } else { "worker.1" },
            &format!("h{i}"),
        ));
    }
    wait_for(30, "history", || {
        shuttle
            .history("api-default", 100, &Filter::default())
            .len()
            == 5
    })
    .await;
    let h: Vec<_> = shuttle
        .history("api-default", 100, &Filter::default())
        .into_iter()
        .map(|l| l.line)
        .collect();
    assert_eq!(
        h,
        ["h3", "h4", "h5", "h6", "h7"],
        "bounded to history_lines"
    );
    let web = Filter {
        dyno: Some("web".into()),
        source: None,
    };
    let (hist, mut tail) = shuttle.session("api-default", 2, web).unwrap();
    assert_eq!(
        hist.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(),
        ["h4", "h6"]
    );
    sink.send(line("api-default", "worker.1", "not for this tail"));
    let mut r = line("api-default", "web.2", "live");
    r.source = Source::Heroku;
    sink.send(r);
    let got = tokio::time::timeout(Duration::from_secs(30), tail.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((got.process.as_str(), got.line.as_str()), ("web.2", "live"));
    assert!(matches!(
        shuttle.session("nope-default", 1, Filter::default()),
        Err(Error::UnknownApp(_))
    ));
    shuttle.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_tail_is_cut_loose_and_others_go_on() {
    let mut opts = options();
    opts.tail_buffer = 10;
    let shuttle = Shuttle::start(
        opts,
        plan(vec![app("api", None, vec![])], LogSettings::default()),
    )
    .await
    .unwrap();
    let mut slow = shuttle.tail("api-default", Filter::default()).unwrap();
    let mut fast = shuttle.tail("api-default", Filter::default()).unwrap();
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while let Some(l) = fast.recv().await {
            assert_eq!(l.line, format!("t{n}"));
            n += 1;
            if n == 100 {
                break;
            }
        }
        n
    });
    let sink = shuttle.sink();
    for i in 0..100 {
        sink.send(line("api-default", "web.1", &format!("t{i}")));
        if i % 5 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(30), reader)
            .await
            .unwrap()
            .unwrap(),
        100
    );
    let mut last = None;
    while let Some(l) = tokio::time::timeout(Duration::from_secs(30), slow.recv())
        .await
        .unwrap()
    {
        last = Some(l);
    }
    let last = last.unwrap();
    assert!(
        last.line.starts_with("Error L11 (Tail buffer overflow)"),
        "{}",
        last.line
    );
    assert_eq!(shuttle.metrics().tail_cut.get(), 1);
    shuttle.shutdown(Duration::ZERO).await;
}

/// Current-thread runtime: nothing drains the sink while the test body sends, so a queue of 5
/// sheds exactly 15 of 20, and says so in the app's stream.
#[tokio::test]
async fn a_full_sink_sheds_counts_and_says_l10() {
    let opts = Options {
        ingest_queue: 5,
        ..options()
    };
    let shuttle = Shuttle::start(
        opts,
        plan(vec![app("api", None, vec![])], LogSettings::default()),
    )
    .await
    .unwrap();
    let sink = shuttle.sink();
    for i in 0..20 {
        sink.send(line("api-default", "web.1", &format!("s{i}")));
    }
    assert_eq!(
        shuttle
            .metrics()
            .sink_dropped
            .with_label_values(&["api-default"])
            .get(),
        15
    );
    wait_for(30, "lines and notice", || {
        shuttle
            .history("api-default", 100, &Filter::default())
            .len()
            == 6
    })
    .await;
    let h = shuttle.history("api-default", 100, &Filter::default());
    assert!(
        h.iter().any(|l| l.process == "logplex"
            && l.line
                .starts_with("Error L10 (output buffer overflow): 15 messages dropped since ")),
        "{h:#?}"
    );
    let kept: Vec<_> = h
        .iter()
        .filter(|l| l.process == "web.1")
        .map(|l| l.line.as_str())
        .collect();
    assert_eq!(kept, ["s0", "s1", "s2", "s3", "s4"]);
    shuttle.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_is_a_diff_and_limits_are_enforced() {
    let d1 = "syslog+tcp://127.0.0.1:9".to_owned();
    let d2 = "syslog+udp://127.0.0.1:9".to_owned();
    let settings = LogSettings {
        max_drains_per_app: 2,
        ..LogSettings::default()
    };
    let p1 = plan(vec![app("api", None, vec![d1.clone()])], settings.clone());
    let shuttle = Shuttle::start(options(), p1.clone()).await.unwrap();
    let id1 = wharf_config::shuttle_plan::drain_id("api-default", &d1);
    let id2 = wharf_config::shuttle_plan::drain_id("api-default", &d2);
    let r = shuttle.apply(p1.clone()).unwrap();
    assert_eq!(
        (r.added.len(), r.removed.len(), r.kept),
        (0, 0, vec![id1.clone()])
    );
    let r = shuttle
        .apply(plan(
            vec![app("api", None, vec![d1.clone(), d2.clone()])],
            settings.clone(),
        ))
        .unwrap();
    assert_eq!(
        (r.added, r.kept.clone()),
        (vec![id2.clone()], vec![id1.clone()])
    );
    // Same URL, new token: that drain restarts.
    let changed = plan(
        vec![AppSpec {
            name: "api",
            space: "default",
            token: None,
            drains: vec![(d1.clone(), Some("d.new".into())), (d2.clone(), None)],
        }],
        settings.clone(),
    );
    let r = shuttle.apply(changed).unwrap();
    assert_eq!(
        (r.added, r.removed, r.kept),
        (vec![id1.clone()], vec![id1.clone()], vec![id2.clone()])
    );
    let too_many = plan(
        vec![app(
            "api",
            None,
            vec![d1.clone(), d2.clone(), "syslog://127.0.0.1:10".into()],
        )],
        settings.clone(),
    );
    let e = shuttle.apply(too_many).unwrap_err();
    assert!(
        matches!(
            e,
            Error::TooManyDrains {
                count: 3,
                max: 2,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("more than the limit of 2"));
    let http = plan(
        vec![app("api", None, vec!["http://127.0.0.1:9/".into()])],
        settings.clone(),
    );
    let e = shuttle.apply(http).unwrap_err();
    assert!(matches!(e, Error::HttpDrainsOff { .. }), "{e}");
    // A refused plan changes nothing: back to p1, d2 goes and d1 (token changed back) restarts.
    let r = shuttle.apply(p1).unwrap();
    let mut want = vec![id1.clone(), id2];
    want.sort();
    assert_eq!((r.removed, r.added), (want, vec![id1]));
    shuttle.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_of_unknown_apps_are_counted() {
    let shuttle = Shuttle::start(
        options(),
        plan(vec![app("api", None, vec![])], LogSettings::default()),
    )
    .await
    .unwrap();
    shuttle.sink().send(line("ghost-default", "web.1", "boo"));
    shuttle.sink().send(line("api-default", "web.1", "ok"));
    wait_for(30, "routed line", || {
        shuttle.history("api-default", 10, &Filter::default()).len() == 1
    })
    .await;
    assert_eq!(shuttle.metrics().unrouted.get(), 1);
    assert!(
        shuttle
            .metrics()
            .render()
            .contains("wharf_logshuttle_unrouted_total 1")
    );
    shuttle.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socs_apps_get_secrets_redacted() {
    let mut p = plan(
        vec![app("api", None, vec![]), app("web", None, vec![])],
        LogSettings::default(),
    );
    p.apps.get_mut("api-default").unwrap().socs = true;
    let shuttle = Shuttle::start(options(), p).await.unwrap();
    shuttle
        .sink()
        .send(line("api-default", "web.1", "connect password=hunter2 ok"));
    shuttle
        .sink()
        .send(line("web-default", "web.1", "connect password=hunter2 ok"));
    wait_for(30, "both lines", || {
        shuttle.history("api-default", 1, &Filter::default()).len() == 1
            && shuttle.history("web-default", 1, &Filter::default()).len() == 1
    })
    .await;
    assert_eq!(
        shuttle.history("api-default", 1, &Filter::default())[0].line,
        "connect password=[REDACTED] ok"
    );
    assert_eq!(
        shuttle.history("web-default", 1, &Filter::default())[0].line,
        "connect password=hunter2 ok"
    );
    shuttle.shutdown(Duration::ZERO).await;
}
