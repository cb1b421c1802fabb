//! Expressions evaluated per second (BENCHMARKS.md): `cargo bench -p opsbro-eval`.

// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use opsbro_eval::{Evaluator, NoContext};

fn bench(c: &mut Criterion) {
    let e = Evaluator::new(Arc::new(NoContext));
    let idle = |p: &str| (p == "collector.cpustats.cpuall.%idle").then(|| serde_json::json!(42.5));
    let mut g = c.benchmark_group("eval");
    g.bench_function("arithmetic 16^4 + 100/10", |b| {
        b.iter(|| e.eval(black_box("16^4 + 100/10"), &idle).expect("eval"))
    });
    g.bench_function("readme cpu critical_if (placeholder)", |b| {
        b.iter(|| {
            e.eval_bool(black_box("{collector.cpustats.cpuall.%idle} < 1"), &idle)
                .expect("eval")
        })
    });
    g.bench_function("readme cpu output ('%s' formatting)", |b| {
        b.iter(|| {
            e.eval_string(
                black_box("'OK: cpu is great: %s%%' % (100-{collector.cpustats.cpuall.%idle})"),
                &idle,
            )
            .expect("eval")
        })
    });
    g.bench_function("keyword arguments and a default placeholder", |b| {
        b.iter(|| {
            e.eval_bool(
                black_box(
                    "gossip_count_nodes(state='alive') >= 0 and {{collector.nothing||0}} == 0",
                ),
                &idle,
            )
            .expect("eval")
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
