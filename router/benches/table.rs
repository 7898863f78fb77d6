//! Hot paths apart from the proxy: route lookup in a site with 10k routes, and compile + build
//! of a live table for 10k apps (what one config swap costs off the request path).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use wharf_config::*;

fn snapshot(apps: usize, routes: usize) -> Snapshot {
    let mut s = Snapshot::empty("wharf.test");
    s.spaces.push(Space {
        name: "prod".into(),
        compliance: Default::default(),
    });
    for i in 0..apps {
        let key = format!("app{i}-prod");
        s.apps.push(App {
            name: format!("app{i}"),
            space: "prod".into(),
            domains: vec![],
            release: Some(1),
            log_token: None,
        });
        s.releases.push(Release {
            app: key.clone(),
            version: 1,
            artifact: Artifact::Image("x:1".into()),
            config_vars: Default::default(),
        });
        s.endpoints.push(Endpoint {
            app: key,
            release: 1,
            process: "web.1".into(),
            address: format!("127.0.0.{}:{}", 1 + i / 60000, 1024 + i % 60000)
                .parse()
                .unwrap(),
            state: DynoState::Up,
        });
    }
    s.sites.push(Site {
        domain: "www.example.com".into(),
        internal: false,
    });
    for r in 0..routes {
        s.routes.push(Route {
            site: "www.example.com".into(),
            source_path: format!("/team{}/service{}/v{}", r / 100, r % 100, r % 3),
            app: format!("app{}-prod", r % apps),
            target_path: "/".into(),
        });
    }
    s
}

fn lookup(c: &mut Criterion) {
    let v = validate(snapshot(100, 10_000)).unwrap();
    let table = compile(&v).router;
    c.bench_function("route lookup, site with 10k routes", |b| {
        b.iter(|| {
            table.find(
                black_box("www.example.com"),
                black_box("/team57/service42/v0/users/123?x=1"),
                false,
            )
        })
    });
    c.bench_function("route lookup, app host", |b| {
        b.iter(|| {
            table.find(
                black_box("app42-prod.wharf.test"),
                black_box("/users/123"),
                false,
            )
        })
    });
}

fn compile_and_swap(c: &mut Criterion) {
    let s = snapshot(10_000, 1_000);
    let mut g = c.benchmark_group("swap");
    g.sample_size(10);
    g.bench_function("validate + compile + build live table, 10k apps", |b| {
        b.iter(|| {
            let v = validate(black_box(s.clone())).unwrap();
            let t = compile(&v).router;
            wharf_router::live::Live::build(t, 2, None).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, lookup, compile_and_swap);
criterion_main!(benches);
