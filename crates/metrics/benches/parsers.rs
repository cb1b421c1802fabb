//! Parser throughput: statsd lines per second for datagrams of 20 lines and of 1 line (parse
//! only, and parse + aggregate), and graphite lines per second.

#![allow(missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use opsbro_metrics::{graphite, statsd};

/// A realistic mix: counters with and without sample rates, timers, gauges, a set; 50 names.
fn datagram(lines: usize, seed: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..lines {
        let n = (seed * 7 + i * 13) % 50;
        let line = match i % 5 {
            0 => format!("app.requests.endpoint_{n}:1|c"),
            1 => format!("app.latency.endpoint_{n}:{}|ms", 3 + i % 200),
            2 => format!("app.queue.depth_{n}:{}|g", i % 1000),
            3 => format!("app.errors.endpoint_{n}:1|c|@0.1"),
            _ => format!("app.users.endpoint_{n}:user{}|s", i % 300),
        };
        if !out.is_empty() {
            out.push(b'\n');
        }
        out.extend_from_slice(line.as_bytes());
    }
    out
}

fn statsd_benches(c: &mut Criterion) {
    for lines in [20usize, 1] {
        let packets: Vec<Vec<u8>> = (0..1000).map(|s| datagram(lines, s)).collect();
        let total = (lines * packets.len()) as u64;
        let mut group = c.benchmark_group(format!("statsd/{lines}-lines-per-datagram"));
        group.throughput(Throughput::Elements(total));
        group.bench_function("parse", |b| {
            b.iter(|| {
                let mut n = 0usize;
                for p in &packets {
                    for line in statsd::lines(p) {
                        n += statsd::parse_line(line, |s| {
                            std::hint::black_box(s);
                        })
                        .unwrap_or(0);
                    }
                }
                assert_eq!(n as u64, total);
            })
        });
        let mut agg = statsd::Aggregator::default();
        group.bench_function("parse+aggregate", |b| {
            b.iter(|| {
                for p in &packets {
                    agg.handle_packet(p);
                }
            })
        });
        let _ = agg.take_interval().points(0, 10.0);
        group.finish();
    }
}

fn graphite_bench(c: &mut Criterion) {
    let lines: Vec<String> = (0..1000)
        .map(|i| {
            format!(
                "servers.web{}.cpu.user {}.5 {}",
                i % 50,
                i,
                1_700_000_000 + i
            )
        })
        .collect();
    let mut group = c.benchmark_group("graphite");
    group.throughput(Throughput::Elements(lines.len() as u64));
    group.bench_function("parse", |b| {
        b.iter(|| {
            for l in &lines {
                std::hint::black_box(graphite::parse_line(l.as_bytes(), 0).is_ok());
            }
        })
    });
    group.finish();
}

criterion_group!(benches, statsd_benches, graphite_bench);
criterion_main!(benches);
