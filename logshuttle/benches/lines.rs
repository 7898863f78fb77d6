//! The log shuttle's per-line hot paths, on 1 000 Heroku-router-like lines (random request ids,
//! paths, addresses and timings, as `benches/logshuttle_bench.py` sends): parsing syslog frames
//! at ingest, Kafka records both ways (grouping, zstd), and formatting a drain's octet-counted
//! messages. `benches/logshuttle.sh` measures the whole relay; these say which step moved.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wharf_logshuttle::{kafka, wire};

// The allocator of the `wharf` binary (and of the relay example).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const LINES: usize = 1_000;

/// xorshift64: the same lines every run.
struct Rng(u64);

impl Rng {
    fn bits(&mut self, n: u32) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 & ((1u64 << n) - 1)
    }
}

fn text(i: usize, r: &mut Rng) -> String {
    format!(
        "at=info method=GET path=\"/api/v1/items/{}\" host=shop-prod.example.com \
         request_id={:016x}{:016x} fwd=\"10.{}.{}.{}\" dyno=web.{} connect={}ms service={}ms \
         status={} bytes={} protocol=https seq={i:08}",
        r.bits(17),
        r.bits(63),
        r.bits(63),
        r.bits(8),
        r.bits(8),
        r.bits(8),
        1 + r.bits(1),
        r.bits(2),
        1 + r.bits(9),
        [200, 200, 304, 404][r.bits(2) as usize],
        r.bits(16),
    )
}

/// Syslog frames (RFC 5424, no framing) as a sender writes them.
fn frames() -> Vec<Vec<u8>> {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    (0..LINES)
        .map(|i| {
            format!(
                "<190>1 2026-11-23T10:00:00.{:06}+00:00 host app web.1 - - {}",
                i,
                text(i, &mut r)
            )
            .into_bytes()
        })
        .collect()
}

fn lines_bench(c: &mut Criterion) {
    let frames = frames();
    let lines: Vec<_> = frames
        .iter()
        .map(|f| wire::parse_message(f).unwrap().to_line("shop-prod", "prod"))
        .collect();
    let mut g = c.benchmark_group("shuttle");
    g.throughput(Throughput::Elements(LINES as u64));
    g.bench_function("ingest: parse 1000 syslog frames into lines", |b| {
        b.iter(|| {
            for f in &frames {
                black_box(
                    wire::parse_message(black_box(f))
                        .unwrap()
                        .to_line("shop-prod", "prod"),
                );
            }
        })
    });
    g.bench_function("kafka: encode 1000 lines into records (zstd)", |b| {
        b.iter(|| black_box(kafka::encode_records(black_box(&lines))))
    });
    let records = kafka::encode_records(&lines);
    g.bench_function("kafka: decode 1000 lines from records", |b| {
        b.iter(|| {
            for (_, p) in &records {
                black_box(kafka::decode_record(black_box(p)).unwrap());
            }
        })
    });
    // zstd alone, for the share of the two above that is compression.
    let bodies: Vec<Vec<u8>> = records
        .iter()
        .map(|(_, p)| {
            let len = u32::from_le_bytes(p[3..7].try_into().unwrap()) as usize;
            zstd::bulk::decompress(&p[7..], len).unwrap()
        })
        .collect();
    g.bench_function(
        "kafka: zstd level 1 alone, 1000 lines' record bodies",
        |b| {
            let mut z = zstd::bulk::Compressor::new(1).unwrap();
            b.iter(|| {
                for body in &bodies {
                    black_box(z.compress(black_box(body)).unwrap());
                }
            })
        },
    );
    g.bench_function("kafka: zstd decompression alone, 1000 lines", |b| {
        let mut z = zstd::bulk::Decompressor::new().unwrap();
        b.iter(|| {
            for ((_, p), body) in records.iter().zip(&bodies) {
                black_box(z.decompress(black_box(&p[7..]), body.len()).unwrap());
            }
        })
    });
    let mut out = Vec::with_capacity(512 * 1024);
    let mut enc = wire::Encoder::default();
    g.bench_function("drain: format 1000 octet-counted messages", |b| {
        b.iter(|| {
            out.clear();
            for l in &lines {
                enc.octet_counted(&mut out, black_box(l), "d.bench");
            }
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, lines_bench);
criterion_main!(benches);
