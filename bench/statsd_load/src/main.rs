//! statsd load generator for `bench/statsd_bench.sh`: sends datagrams of N lines at a fixed rate
//! for a while, then prints what it sent as JSON.
//!
//! Every line has the same length and every datagram the same size, so batches of up to 64
//! datagrams go out in one `send` with UDP GSO (the kernel cuts them into separate datagrams):
//! on a 2-core machine the generator must not be what limits the server under test.
//!
//! usage: statsd-load ADDR LINES_PER_DATAGRAM LINES_PER_SEC SECS

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use nix::sys::socket::{MsgFlags, send, setsockopt, sockopt::UdpGsoSegment};

const LINE: usize = 40;

/// One line of exactly LINE bytes: counters, timers, gauges, sampled counters, sets over 200 names.
fn line(i: usize) -> String {
    let n = (i * 17) % 200;
    let (name, suffix) = match i % 5 {
        0 => (format!("bench.requests.e{n:03}"), "1|c".to_owned()),
        1 => (format!("bench.latency.e{n:03}"), format!("{:03}|ms", 3 + i % 200)),
        2 => (format!("bench.queue.e{n:03}"), format!("{:03}|g", i % 1000)),
        3 => (format!("bench.errors.e{n:03}"), "1|c|@0.1".to_owned()),
        _ => (format!("bench.users.e{n:03}"), format!("u{:03}|s", i % 300)),
    };
    let width = LINE - suffix.len() - 1;
    let l = format!("{name:_<width$}:{suffix}");
    assert_eq!(l.len(), LINE);
    l
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: statsd-load ADDR LINES_PER_DATAGRAM LINES_PER_SEC SECS");
        std::process::exit(2);
    }
    let addr: SocketAddr = args[1].parse().expect("ADDR as ip:port");
    let per: usize = args[2].parse().expect("lines per datagram");
    let rate: f64 = args[3].parse().expect("lines per second");
    let secs: f64 = args[4].parse().expect("seconds");
    let size = per * LINE + per - 1;
    let batch = (60_000 / size).clamp(1, 64);
    // 1024 distinct datagrams, cycled; a batch is `batch` consecutive ones.
    let datagrams: Vec<Vec<u8>> = (0..1024)
        .map(|d| {
            (0..per)
                .map(|i| line(d * per + i))
                .collect::<Vec<_>>()
                .join("\n")
                .into_bytes()
        })
        .collect();
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.connect(addr).expect("connect");
    if batch > 1 {
        setsockopt(&socket, UdpGsoSegment, &(size as i32)).expect("UDP_SEGMENT (kernel >= 4.18)");
    }
    let mut buf = Vec::with_capacity(batch * size);
    let datagrams_per_sec = rate / per as f64;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let (mut sent, mut errors) = (0u64, 0u64);
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let due = (now.duration_since(start).as_secs_f64() * datagrams_per_sec) as u64;
        if sent + (batch as u64) > due {
            std::thread::sleep(Duration::from_micros(100));
            continue;
        }
        buf.clear();
        for k in 0..batch {
            buf.extend_from_slice(&datagrams[((sent as usize) + k) % datagrams.len()]);
        }
        use std::os::fd::AsRawFd;
        match send(socket.as_raw_fd(), &buf, MsgFlags::empty()) {
            Ok(_) => sent += batch as u64,
            Err(_) => errors += 1,
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let lines = sent * per as u64;
    println!(
        "{{\"datagrams\": {sent}, \"lines\": {lines}, \"send_errors\": {errors}, \"elapsed\": {elapsed:.3}, \"lines_per_sec\": {:.0}}}",
        lines as f64 / elapsed
    );
}
