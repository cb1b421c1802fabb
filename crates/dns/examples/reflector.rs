//! A zero-work UDP "DNS server" for benchmarks: every datagram goes back to its sender with
//! the QR bit set, from one thread in a blocking `recv_from` loop. It shows what the kernel and
//! the load generator cost alone — the floor under any real server's CPU and latency on the
//! machine (`bench/dns_bench.sh` runs it beside the real servers).
//!
//! `cargo run --release -p opsbro-dns --example reflector -- 127.0.0.1:17769`

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:17769".to_owned());
    let socket = std::net::UdpSocket::bind(&addr)?;
    let mut buf = [0u8; 4096];
    loop {
        let (n, from) = socket.recv_from(&mut buf)?;
        if n >= 12 {
            buf[2] |= 0x80;
            let _ = socket.send_to(&buf[..n], from);
        }
    }
}
