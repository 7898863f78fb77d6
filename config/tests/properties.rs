//! Property tests: every generated valid snapshot validates and compiles, compile is
//! deterministic, and every invalid mutation is reported at its path.

use proptest::prelude::*;
use wharf_config::*;

fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9]{0,6}"
}

fn gen_snapshot() -> impl Strategy<Value = Snapshot> {
    (
        prop::collection::btree_set(name(), 1..4),
        prop::collection::btree_set(name(), 1..6),
        prop::collection::vec(("[a-z]{1,5}", "[a-z]{1,5}"), 0..12),
        0u32..=100,
        any::<bool>(),
    )
        .prop_map(|(spaces, apps, paths, weight, internal_first)| {
            let mut s = Snapshot::empty("wharf.localhost");
            for (i, sp) in spaces.iter().enumerate() {
                s.spaces.push(Space {
                    name: sp.clone(),
                    compliance: if i == 0 && internal_first {
                        [Compliance::Internal].into()
                    } else {
                        [Compliance::Prod].into()
                    },
                });
            }
            let spaces: Vec<_> = spaces.into_iter().collect();
            // Public apps live in the last space (never internal unless it is the only one).
            let public_space = spaces.last().unwrap().clone();
            let public = !(internal_first && spaces.len() == 1);
            for (i, a) in apps.iter().enumerate() {
                let space = if i % 2 == 0 {
                    public_space.clone()
                } else {
                    spaces[0].clone()
                };
                let key = format!("{a}-{space}");
                s.apps.push(App {
                    name: a.clone(),
                    space,
                    domains: vec![],
                    release: Some(1),
                    log_token: None,
                });
                for v in 1..=2 {
                    s.releases.push(Release {
                        app: key.clone(),
                        version: v,
                        artifact: Artifact::Image(format!("img:{v}")),
                        config_vars: [("A".to_owned(), "b".to_owned())].into(),
                    });
                }
                s.endpoints.push(Endpoint {
                    app: key.clone(),
                    release: 1,
                    process: "web.1".into(),
                    address: format!("127.0.0.1:{}", 5000 + i).parse().unwrap(),
                    state: DynoState::Up,
                });
                s.drains.push(Drain {
                    app: key.clone(),
                    url: format!("syslog+tls://logs{i}.example.com:6514"),
                    token: None,
                });
            }
            let first = format!("{}-{}", apps.iter().next().unwrap(), public_space);
            s.canaries.push(Canary {
                app: first.clone(),
                stable_release: 1,
                canary_release: 2,
                weight,
                sticky: false,
                abort: AbortPolicy::default(),
            });
            if public {
                s.sites.push(Site {
                    domain: "www.example.com".into(),
                    internal: false,
                });
                let mut seen = std::collections::HashSet::new();
                for (a, b) in paths {
                    let src = format!("/{a}/{b}");
                    if seen.insert(src.clone()) {
                        s.routes.push(Route {
                            site: "www.example.com".into(),
                            source_path: src,
                            app: first.clone(),
                            target_path: format!("/{b}"),
                        });
                    }
                }
            }
            s.filters.push(Filter::Cors(CorsFilter {
                name: "cors".into(),
                allow_origin: vec!["https://a.example.com".into()],
                allow_methods: vec!["GET".into()],
                allow_headers: vec![],
                expose_headers: vec![],
                max_age: None,
                allow_credentials: true,
            }));
            s.attachments.push(Attachment {
                app: first,
                filter: "cors".into(),
                includes: vec!["/api".into()],
                excludes: vec![],
            });
            s
        })
}

/// One way to break a valid snapshot, and the path where the problem must be reported.
fn mutate(s: &mut Snapshot, which: usize) -> String {
    match which % 8 {
        0 => {
            s.drains[0].url = "gopher://x".into();
            "drains[0].url".into()
        }
        1 => {
            s.canaries[0].weight = 101;
            "canaries[0].weight".into()
        }
        2 => {
            let dup = s.apps[0].clone();
            s.apps.push(dup);
            format!("apps[{}].name", s.apps.len() - 1)
        }
        3 => {
            s.endpoints[0].app = "ghost-nowhere".into();
            "endpoints[0].app".into()
        }
        4 => {
            if let Filter::Cors(c) = &mut s.filters[0] {
                c.allow_origin = vec!["*".into()];
            }
            "filters[0].allow_origin[0]".into()
        }
        5 => {
            s.attachments[0].includes = vec!["api".into()];
            "attachments[0].includes[0]".into()
        }
        6 => {
            s.spaces[0].name = "Bad".into();
            "spaces[0].name".into()
        }
        _ => {
            s.releases[0].version = 0;
            "releases[0].version".into()
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn valid_snapshots_compile_deterministically(s in gen_snapshot()) {
        let v = validate(s.clone()).map_err(|p| TestCaseError::fail(p.to_string()))?;
        let a = compile(&v);
        let b = compile(&validate(s).unwrap());
        prop_assert_eq!(&a, &b);
        // Every app host routes to its own app.
        for app in &a.router.apps {
            let host = format!("{}.{}", app.key, a.router.domain);
            let found = a.router.find(&host, "/", app.internal).unwrap();
            prop_assert_eq!(&a.router.apps[found.app].key, &app.key);
        }
        // JSON round trip keeps the digest.
        let again = parse(&to_json(&v), Format::Json).unwrap();
        prop_assert_eq!(digest(&validate(again).unwrap()), a.router.digest.clone());
    }

    #[test]
    fn every_invalid_mutation_is_reported(s in gen_snapshot(), which in 0usize..8) {
        let mut s = s;
        let path = mutate(&mut s, which);
        let problems = validate(s).expect_err("mutation must be rejected");
        prop_assert!(problems.iter().any(|p| p.path == path), "{} not in {}", path, problems);
    }
}
