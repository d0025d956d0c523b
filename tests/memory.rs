//! `limits.max_memory`: one bound on what all clients' buffers hold together. Keyway runs as its
//! own process here, so that its peak resident memory (`VmHWM`) can be read: clients that
//! pipeline without reading their replies, and a client that sends a value larger than the
//! bound, are disconnected before Keyway's memory grows past it, and other clients go on.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed assumption is a failed test"
)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use redis::Commands;
use support::*;

const MIB: usize = 1024 * 1024;

/// A field of /proc/PID/status, in bytes (`VmRSS`, `VmHWM`).
fn vm(pid: u32, field: &str) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| {
            v.trim()
                .trim_end_matches(" kB")
                .trim()
                .parse::<usize>()
                .ok()
        })
        .unwrap()
        * 1024
}

fn disconnects(proxy: &ProxyProcess, reason: &str) -> f64 {
    let text = http_get(proxy.admin, "/metrics").1;
    metric(
        &text,
        &format!("keyway_client_disconnects_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or(0.0)
}

fn start(cap: usize) -> (RedisServer, ProxyProcess) {
    let server = RedisServer::start();
    let toml = format!(
        "{}\n[limits]\nmax_memory = {cap}\n",
        config_toml(&[&server], "timeout = \"20s\"")
    );
    let proxy = ProxyProcess::start(&toml, &[]);
    (server, proxy)
}

/// Six clients pipeline 300 GETs of a 256 KiB value each and never read (75 MiB of replies
/// each: without the bound, each would buffer up to `max_client_output`, 64 MiB): with `max_memory` = 32 MiB each is
/// disconnected for memory, none reaches its output limit, what the clients' buffers hold
/// stays within the bound plus their last growth, Keyway's peak resident memory stays at half
/// what the six would hold without the bound, and a client that reads its replies is served
/// throughout.
#[test]
fn clients_that_do_not_read_are_cut_at_max_memory() {
    let (_server, proxy) = start(32 * MIB);
    let pid = proxy.child.id();
    let mut good = redis::Client::open(format!("redis://{}", proxy.addr))
        .unwrap()
        .get_connection()
        .unwrap();
    let big = "x".repeat(MIB / 4);
    let _: () = good.set("big", &big).unwrap();
    let baseline = vm(pid, "VmHWM");
    let mut frame = Vec::new();
    for _ in 0..300 {
        frame.extend_from_slice(b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n");
    }
    let hogs: Vec<TcpStream> = (0..6)
        .map(|_| {
            let mut s = TcpStream::connect(proxy.addr).unwrap();
            s.write_all(&frame).unwrap();
            s
        })
        .collect();
    let mut gmax = 0.0f64;
    let mut rmax = 0;
    assert!(
        wait_until(Duration::from_secs(30), || {
            let t = http_get(proxy.admin, "/metrics").1;
            gmax = gmax.max(metric(&t, "keyway_client_buffered_bytes").unwrap_or(0.0));
            rmax = rmax.max(vm(pid, "VmRSS"));
            disconnects(&proxy, "max_memory") >= 6.0
        }),
        "every client that does not read is cut: {} so far; {}",
        disconnects(&proxy, "max_memory"),
        http_get(proxy.admin, "/metrics").1
    );
    assert_eq!(disconnects(&proxy, "output_limit"), 0.0);
    let got: String = good.get("big").unwrap();
    assert_eq!(got.len(), MIB / 4);
    let peak = vm(pid, "VmHWM");
    // What the clients' buffers were charged: past the cap by at most the buffers' last growth
    // (they grow by doubling) before the largest went.
    assert!(
        gmax <= (3 * 32 * MIB) as f64,
        "charged {} MiB",
        gmax / MIB as f64
    );
    // Resident memory also holds replies on their way from the server and what the allocator
    // keeps of freed buffers: measured 120-150 MiB here, against 6 x 64 MiB without the bound.
    // (VmHWM is updated lazily by the kernel: the sampled VmRSS may be higher.)
    let peak = peak.max(rmax);
    assert!(
        peak < baseline + 192 * MIB,
        "peak {} MiB over a baseline of {} MiB (6 x 64 MiB without the bound)",
        peak / MIB,
        baseline / MIB
    );
    drop(hogs);
}

/// A client that sends a 200 MiB value under `max_memory` = 16 MiB gets the error and is
/// disconnected before Keyway holds the value; nothing is written; another client is served.
#[test]
fn a_value_larger_than_max_memory_is_refused() {
    let (server, proxy) = start(16 * MIB);
    let pid = proxy.child.id();
    let baseline = vm(pid, "VmHWM");
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let len = 200 * MIB;
    let mut writer = s.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let head = format!("*3\r\n$3\r\nSET\r\n$4\r\nhuge\r\n${len}\r\n");
        writer.write_all(head.as_bytes())?;
        let chunk = vec![b'v'; MIB];
        for _ in 0..200 {
            writer.write_all(&chunk)?;
        }
        writer.write_all(b"\r\n")
    });
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.starts_with("-ERR keyway: limits.max_memory reached"),
        "{text}"
    );
    assert!(sender.join().unwrap().is_err(), "the connection was closed");
    assert_eq!(disconnects(&proxy, "max_memory"), 1.0);
    let peak = vm(pid, "VmHWM");
    assert!(
        peak < baseline + 64 * MIB,
        "peak {} MiB over a baseline of {} MiB",
        peak / MIB,
        baseline / MIB
    );
    assert_eq!(server.dbsize(), 0);
    let mut other = redis::Client::open(format!("redis://{}", proxy.addr))
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = other.set("small", "v").unwrap();
}
