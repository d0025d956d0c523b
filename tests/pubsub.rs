//! Publish/subscribe through Keyway against real redis-servers: the replies of every
//! (un)subscribe command, subscribed mode's rules and messages byte for byte as a redis-server's
//! (RESP2 and RESP3 pushes), PUBLISH to the channel's server, the PUBSUB listings over the pool,
//! one subscriber connection per server for any number of clients, a subscriber that does not
//! read cut off at `limits.max_client_output`, a restarted server subscribed again, keyspace
//! notifications from every server, and bad input (no channel, 100,000 SUBSCRIBEs, 100 MB
//! messages).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed assumption is a failed test"
)]

mod support;

use std::time::Duration;

use support::*;

fn show(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).replace("\r\n", "\\r\\n");
    text
}

fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{}\r\n", a.len(), a));
    }
    out.into_bytes()
}

fn three_with(servers: &[RedisServer], pool: &str, limits: &str) -> Proxy {
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let mut toml = config_toml(&refs, pool);
    if !limits.is_empty() {
        toml.push_str(&format!("\n[limits]\n{limits}\n"));
    }
    Proxy::start_toml(&toml)
}

/// `PUBSUB NUMSUB channel` on one server.
fn numsub(server: &RedisServer, channel: &str) -> i64 {
    let reply: (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query(&mut server.client())
        .unwrap();
    reply.1
}

/// Clients of a server subscribed to something (CLIENT LIST's `flags=` holds `P`).
fn subscriber_connections(server: &RedisServer) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut server.client())
        .unwrap();
    list.lines()
        .filter(|l| {
            l.split(' ')
                .find_map(|f| f.strip_prefix("flags="))
                .is_some_and(|f| f.contains('P'))
        })
        .count()
}

/// Sends `args` to both and checks that the next `replies` replies are the same bytes.
fn same(direct: &mut RawClient, keyway: &mut RawClient, args: &[&str], replies: usize) {
    direct.send(&encode(args));
    keyway.send(&encode(args));
    for i in 0..replies {
        let want = direct.read_reply().expect("redis-server replies");
        let got = keyway
            .read_reply()
            .unwrap_or_else(|e| panic!("{args:?}: no reply {i} from keyway: {e}"));
        assert_eq!(show(&got), show(&want), "{args:?}, reply {i}");
    }
}

/// Every (un)subscribe reply, subscribed mode's refusals, PING in subscribed mode and the
/// messages themselves are byte for byte a redis-server's, in RESP2 and (as pushes) in RESP3;
/// channels, shard channels and patterns over three servers.
#[test]
fn replies_and_messages_as_redis_server() {
    let servers = servers(3);
    let proxy = three_with(&servers, "", "");
    let direct_server = RedisServer::start();
    // Channels on different servers: each is subscribed where its slot lives.
    let a = key_on(&proxy, 0, "chan-a");
    let b = key_on(&proxy, 1, "chan-b");
    let s = key_on(&proxy, 2, "shard-s");
    let pa = key_on(&proxy, 2, "pat-x");
    for proto in ["2", "3"] {
        let mut d = RawClient::connect(direct_server.addr());
        let mut k = RawClient::connect(proxy.addr);
        if proto == "3" {
            d.call(&["HELLO", "3"]);
            k.call(&["HELLO", "3"]);
        }
        same(&mut d, &mut k, &["SUBSCRIBE"], 1);
        same(&mut d, &mut k, &["PSUBSCRIBE"], 1);
        same(&mut d, &mut k, &["SSUBSCRIBE"], 1);
        same(&mut d, &mut k, &["SUBSCRIBE", &a, &a, &b], 3);
        same(&mut d, &mut k, &["PSUBSCRIBE", "pat-*"], 1);
        same(&mut d, &mut k, &["SSUBSCRIBE", &s], 1);
        // Subscribed mode: RESP2 refuses other commands with redis-server's words; RESP3 runs
        // them (GET of a missing key: a null).
        same(&mut d, &mut k, &["GET", "missing-key"], 1);
        same(&mut d, &mut k, &["GET"], 1);
        same(&mut d, &mut k, &["CLIENT", "ID", "x"], 1);
        same(&mut d, &mut k, &["PING"], 1);
        same(&mut d, &mut k, &["PING", "hi"], 1);
        // Messages: published through Keyway and directly, the same frames arrive.
        for (publish, channel) in [("PUBLISH", &a), ("PUBLISH", &b), ("PUBLISH", &pa)] {
            let mut pk = RawClient::connect(proxy.addr);
            let mut pd = RawClient::connect(direct_server.addr());
            assert_eq!(pk.call(&[publish, channel, "hello"]), b":1\r\n");
            assert_eq!(pd.call(&[publish, channel, "hello"]), b":1\r\n");
            let want = d.read_reply().unwrap();
            let got = k.read_reply().unwrap();
            assert_eq!(show(&got), show(&want), "{publish} {channel}");
        }
        let mut pk = RawClient::connect(proxy.addr);
        let mut pd = RawClient::connect(direct_server.addr());
        assert_eq!(pk.call(&["SPUBLISH", &s, "x"]), b":1\r\n");
        assert_eq!(pd.call(&["SPUBLISH", &s, "x"]), b":1\r\n");
        assert_eq!(
            show(&k.read_reply().unwrap()),
            show(&d.read_reply().unwrap())
        );
        same(&mut d, &mut k, &["UNSUBSCRIBE", "never-subscribed"], 1);
        same(&mut d, &mut k, &["UNSUBSCRIBE", &b], 1);
        same(&mut d, &mut k, &["SUNSUBSCRIBE"], 1);
        same(&mut d, &mut k, &["SUNSUBSCRIBE"], 1);
        same(&mut d, &mut k, &["PUNSUBSCRIBE"], 1);
        same(&mut d, &mut k, &["UNSUBSCRIBE"], 1);
        same(&mut d, &mut k, &["UNSUBSCRIBE"], 1);
        same(&mut d, &mut k, &["PUNSUBSCRIBE"], 1);
        // Out of subscribed mode: PING and GET as usual.
        same(&mut d, &mut k, &["PING"], 1);
        same(&mut d, &mut k, &["GET", "missing-key"], 1);
        // Nothing is subscribed any more: a message reaches nobody.
        assert!(wait_until(Duration::from_secs(5), || numsub(
            &servers[0],
            &a
        ) == 0));
        // RESET leaves subscribed mode too.
        same(&mut d, &mut k, &["SUBSCRIBE", &a], 1);
        same(&mut d, &mut k, &["RESET"], 1);
        same(&mut d, &mut k, &["GET", "missing-key"], 1);
        assert!(wait_until(Duration::from_secs(5), || numsub(
            &servers[0],
            &a
        ) == 0));
    }
}

/// PUBLISH and SPUBLISH go to the channel's server (by hash tag too); the PUBSUB listings are
/// merged over the pool as one server holding every subscriber would answer them.
#[test]
fn publish_placement_and_listings() {
    let servers = servers(3);
    let proxy = three_with(&servers, "", "");
    let a = key_on(&proxy, 0, "ch");
    let b = key_on(&proxy, 1, "ch");
    let mut sub = RawClient::connect(proxy.addr);
    sub.call(&["SUBSCRIBE", &a, &format!("{{{a}}}.tagged")]);
    sub.read_reply().unwrap();
    sub.call(&["SUBSCRIBE", &b]);
    sub.call(&["PSUBSCRIBE", "ch*"]);
    let mut shard = RawClient::connect(proxy.addr);
    shard.call(&["SSUBSCRIBE", &b]);
    // Each channel subscribed once, on its server; the hash-tagged one beside `a`.
    assert_eq!(numsub(&servers[0], &a), 1);
    assert_eq!(numsub(&servers[0], &format!("{{{a}}}.tagged")), 1);
    assert_eq!(numsub(&servers[1], &b), 1);
    assert_eq!(numsub(&servers[1], &a), 0);
    let mut c = RawClient::connect(proxy.addr);
    let before = command_calls(&servers[0], "publish");
    assert_eq!(c.call(&["PUBLISH", &a, "m"]), b":2\r\n"); // channel + pattern on s0
    assert_eq!(command_calls(&servers[0], "publish"), before + 1);
    assert_eq!(
        c.call(&["PUBLISH", &format!("{{{a}}}.tagged"), "m"]),
        b":1\r\n"
    );
    assert_eq!(c.call(&["SPUBLISH", &b, "m"]), b":1\r\n");
    // Listings: the union of the servers' channels, sums per channel, patterns counted once.
    let channels = c.call(&["PUBSUB", "CHANNELS"]);
    for name in [&a, &b] {
        assert!(
            show(&channels).contains(name.as_str()),
            "{}",
            show(&channels)
        );
    }
    assert!(channels.starts_with(b"*3\r\n"), "{}", show(&channels));
    assert_eq!(
        show(&c.call(&["PUBSUB", "NUMSUB", &a, &b, "none"])),
        show(
            format!(
                "*6\r\n${}\r\n{a}\r\n:1\r\n${}\r\n{b}\r\n:1\r\n$4\r\nnone\r\n:0\r\n",
                a.len(),
                b.len()
            )
            .as_bytes()
        )
    );
    assert_eq!(c.call(&["PUBSUB", "NUMPAT"]), b":1\r\n");
    assert_eq!(
        show(&c.call(&["PUBSUB", "SHARDCHANNELS"])),
        show(format!("*1\r\n${}\r\n{b}\r\n", b.len()).as_bytes())
    );
    assert_eq!(
        show(&c.call(&["PUBSUB", "SHARDNUMSUB", &b])),
        show(format!("*2\r\n${}\r\n{b}\r\n:1\r\n", b.len()).as_bytes())
    );
    // In a transaction: the channel counts as a key of the transaction's slot.
    let mut sub = RawClient::connect(proxy.addr);
    sub.call(&["SUBSCRIBE", &a]);
    assert_eq!(c.call(&["MULTI"]), b"+OK\r\n");
    assert_eq!(
        c.call(&["SET", &format!("{{{a}}}.result"), "42"]),
        b"+QUEUED\r\n"
    );
    assert_eq!(c.call(&["PUBLISH", &a, "in-multi"]), b"+QUEUED\r\n");
    assert_eq!(c.call(&["EXEC"]), b"*2\r\n+OK\r\n:2\r\n");
    assert_eq!(
        show(&sub.read_reply().unwrap()),
        show(
            format!(
                "*3\r\n$7\r\nmessage\r\n${}\r\n{a}\r\n$8\r\nin-multi\r\n",
                a.len()
            )
            .as_bytes()
        )
    );
    assert_eq!(c.call(&["MULTI"]), b"+OK\r\n");
    assert_eq!(c.call(&["SPUBLISH", &b, "s"]), b"+QUEUED\r\n");
    assert_eq!(c.call(&["EXEC"]), b"*1\r\n:1\r\n");
    // A channel of another slot than the transaction's keys: CROSSSLOT, and EXEC aborts.
    c.call(&["MULTI"]);
    c.call(&["SET", &format!("{{{a}}}.result"), "43"]);
    let queued = c.call(&["PUBLISH", &b, "m"]);
    assert!(show(&queued).starts_with("-CROSSSLOT"), "{}", show(&queued));
    assert!(show(&c.call(&["EXEC"])).starts_with("-EXECABORT"));
    assert_eq!(
        c.call(&["GET", &format!("{{{a}}}.result")]),
        b"$2\r\n42\r\n"
    );
    // Subscribing stays outside transactions.
    c.call(&["MULTI"]);
    let queued = c.call(&["SUBSCRIBE", &a]);
    assert!(
        show(&queued).contains("cannot queue 'subscribe'"),
        "{}",
        show(&queued)
    );
    c.call(&["DISCARD"]);
}

/// PUBLISH in a transaction with replicas: the transaction runs on the channel's server (the
/// slot's primary, where Keyway subscribes), not on a read replica, under every write policy
/// but two_phase, which refuses it.
#[test]
fn publish_in_transaction_with_replicas() {
    let servers = servers(3);
    for write in ["primary", "all", "quorum"] {
        let proxy = three_with(
            &servers,
            &format!("replicas = 2\nread = \"round_robin\"\nwrite = \"{write}\""),
            "",
        );
        let channel = format!("jobs-{write}");
        let mut sub = RawClient::connect(proxy.addr);
        sub.call(&["SUBSCRIBE", &channel]);
        let mut c = RawClient::connect(proxy.addr);
        // Alone (a transaction that writes no key) and beside a write, 20 times: round-robin
        // reads would reach the other replica on every second one, and under `all`/`quorum`
        // the receiver count must be the primary's (the other replica's is 0), whichever
        // replica answers first.
        for i in 0..20 {
            c.call(&["MULTI"]);
            if i % 2 == 1 {
                c.call(&["SET", &format!("{{{channel}}}.k"), "v"]);
            }
            c.call(&["PUBLISH", &channel, &format!("m{i}")]);
            let exec = c.call(&["EXEC"]);
            assert!(
                show(&exec).ends_with(":1\\r\\n"),
                "{write}: {}",
                show(&exec)
            );
            let got = sub.read_reply().unwrap();
            assert!(
                show(&got).contains(&format!("m{i}")),
                "{write}: {}",
                show(&got)
            );
        }
    }
    let proxy = three_with(&servers, "replicas = 2\nwrite = \"two_phase\"", "");
    let mut c = RawClient::connect(proxy.addr);
    c.call(&["MULTI"]);
    let queued = c.call(&["PUBLISH", "ch", "m"]);
    assert!(
        show(&queued).contains("cannot queue 'publish' in a transaction under write = two_phase"),
        "{}",
        show(&queued)
    );
    c.call(&["DISCARD"]);
}

/// 1,000 clients subscribed to one channel through Keyway cost its server one subscriber
/// connection, and each gets every message.
#[test]
fn thousand_subscribers_one_server_connection() {
    let servers = servers(3);
    let proxy = three_with(&servers, "", "");
    let channel = key_on(&proxy, 1, "news");
    let mut subs: Vec<RawClient> = (0..1000).map(|_| RawClient::connect(proxy.addr)).collect();
    for s in &mut subs {
        s.send(&encode(&["SUBSCRIBE", &channel]));
    }
    let ack = format!(
        "*3\r\n$9\r\nsubscribe\r\n${}\r\n{channel}\r\n:1\r\n",
        channel.len()
    );
    for s in &mut subs {
        assert_eq!(show(&s.read_reply().unwrap()), show(ack.as_bytes()));
    }
    assert_eq!(numsub(&servers[1], &channel), 1);
    assert_eq!(subscriber_connections(&servers[1]), 1);
    assert_eq!(subscriber_connections(&servers[0]), 0);
    let mut p = RawClient::connect(proxy.addr);
    for i in 0..10 {
        assert_eq!(p.call(&["PUBLISH", &channel, &format!("m{i}")]), b":1\r\n");
    }
    for s in &mut subs {
        for i in 0..10 {
            let body = format!("m{i}");
            let want = format!(
                "*3\r\n$7\r\nmessage\r\n${}\r\n{channel}\r\n${}\r\n{body}\r\n",
                channel.len(),
                body.len()
            );
            assert_eq!(show(&s.read_reply().unwrap()), show(want.as_bytes()));
        }
    }
    assert!(metric(&proxy.metrics(), "keyway_pubsub_messages_delivered_total") >= Some(10_000.0));
    // Everyone leaves: the server connection unsubscribes.
    drop(subs);
    assert!(wait_until(Duration::from_secs(5), || numsub(
        &servers[1],
        &channel
    ) == 0));
}

/// A subscriber that does not read is disconnected once `limits.max_client_output` bytes wait
/// for it; another subscriber of the same channel gets every message meanwhile.
#[test]
fn slow_subscriber_cut_off() {
    let servers = servers(1);
    let proxy = three_with(&servers, "", "max_client_output = 4194304");
    let mut slow = RawClient::connect(proxy.addr);
    let mut fast = RawClient::connect(proxy.addr);
    slow.call(&["SUBSCRIBE", "feed"]);
    fast.call(&["SUBSCRIBE", "feed"]);
    // 24 MiB: more than the socket buffers and Keyway's limit, less than redis-server's own
    // pub/sub output limit for Keyway's subscriber connection (32 MB).
    let payload = "x".repeat(4 * 1024);
    let n = 6000;
    let message_len = format!(
        "*3\r\n$7\r\nmessage\r\n$4\r\nfeed\r\n${}\r\n{payload}\r\n",
        payload.len()
    )
    .len();
    let reader = std::thread::spawn(move || {
        // Large reads: a reader that keeps up.
        let mut got = 0;
        let mut chunk = vec![0u8; 256 * 1024];
        while got < n * message_len {
            match std::io::Read::read(&mut fast.stream, &mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(k) => got += k,
            }
        }
        got / message_len
    });
    // In batches of 100 (400 KiB): a subscriber that reads keeps up with that.
    let mut p = RawClient::connect(proxy.addr);
    let mut batch = Vec::new();
    for _ in 0..100 {
        batch.extend_from_slice(&encode(&["PUBLISH", "feed", &payload]));
    }
    for _ in 0..n / 100 {
        p.send(&batch);
        for _ in 0..100 {
            assert_eq!(p.read_reply().unwrap(), b":1\r\n");
        }
    }
    assert_eq!(reader.join().unwrap(), n);
    // The slow one was cut off: what it reads now ends with the connection closed.
    let taken = slow.read_to_close();
    assert!(
        taken.len() < n * payload.len() / 2,
        "the slow subscriber got {} bytes",
        taken.len()
    );
    assert_eq!(
        metric(
            &proxy.metrics(),
            "keyway_client_disconnects_total{reason=\"output_limit\"}"
        ),
        Some(1.0)
    );
}

/// A server that restarts is subscribed again by Keyway: messages published after it is back
/// reach the subscribers without them doing anything.
#[test]
fn restarted_server_is_subscribed_again() {
    let mut servers = servers(2);
    let proxy = three_with(&servers, "timeout = \"300ms\"", "");
    let channel = key_on(&proxy, 1, "alerts");
    let mut sub = RawClient::connect(proxy.addr);
    sub.call(&["SUBSCRIBE", &channel]);
    sub.call(&["PSUBSCRIBE", "alerts*"]);
    assert_eq!(numsub(&servers[1], &channel), 1);
    servers[1].restart();
    assert!(
        wait_until(Duration::from_secs(10), || numsub(&servers[1], &channel)
            == 1),
        "the channel is subscribed again on the restarted server"
    );
    let mut p = RawClient::connect(proxy.addr);
    assert!(wait_until(Duration::from_secs(10), || p
        .call(&["PUBLISH", &channel, "back"])
        == b":2\r\n"));
    let m = sub.read_reply().unwrap();
    assert!(show(&m).contains("message"), "{}", show(&m));
    assert!(show(&m).ends_with("back\\r\\n"), "{}", show(&m));
    assert!(metric(&proxy.metrics(), "keyway_pubsub_link_failures_total") >= Some(1.0));
}

/// Keyspace notifications of every server reach a client that pattern-subscribes through
/// Keyway.
#[test]
fn keyspace_notifications_from_every_server() {
    let servers: Vec<RedisServer> = (0..3)
        .map(|_| RedisServer::start_with(&["--notify-keyspace-events", "KEA"]))
        .collect();
    let proxy = three_with(&servers, "", "");
    let mut sub = RawClient::connect(proxy.addr);
    sub.call(&["PSUBSCRIBE", "__keyspace@0__:*"]);
    let mut c = RawClient::connect(proxy.addr);
    let keys: Vec<String> = (0..3).map(|i| key_on(&proxy, i, "watched")).collect();
    for k in &keys {
        assert_eq!(c.call(&["SET", k, "v"]), b"+OK\r\n");
    }
    // Each server's notification comes through its own subscriber connection: in any order.
    let want: std::collections::BTreeSet<String> = keys
        .iter()
        .map(|k| {
            let channel = format!("__keyspace@0__:{k}");
            let frame = format!(
                "*4\r\n$8\r\npmessage\r\n$16\r\n__keyspace@0__:*\r\n${}\r\n{channel}\r\n$3\r\nset\r\n",
                channel.len()
            );
            show(frame.as_bytes())
        })
        .collect();
    let got: std::collections::BTreeSet<String> = keys
        .iter()
        .map(|_| show(&sub.read_reply().unwrap()))
        .collect();
    assert_eq!(got, want);
}

/// 100,000 SUBSCRIBEs pipelined by one client are all answered, in order, and nothing hangs;
/// once it leaves, every channel is unsubscribed on the servers.
#[test]
fn hundred_thousand_subscribes() {
    let servers = servers(3);
    let proxy = three_with(&servers, "", "");
    let mut c = RawClient::connect(proxy.addr);
    let n = 100_000;
    let mut pipeline = Vec::new();
    for i in 0..n {
        pipeline.extend_from_slice(&encode(&["SUBSCRIBE", &format!("c{i}")]));
    }
    let writer = {
        let mut stream = c.stream.try_clone().unwrap();
        std::thread::spawn(move || std::io::Write::write_all(&mut stream, &pipeline))
    };
    for i in 0..n {
        let name = format!("c{i}");
        let want = format!(
            "*3\r\n$9\r\nsubscribe\r\n${}\r\n{name}\r\n:{}\r\n",
            name.len(),
            i + 1
        );
        assert_eq!(show(&c.read_reply().unwrap()), show(want.as_bytes()));
    }
    writer.join().unwrap().unwrap();
    let listed = |s: &RedisServer| -> usize {
        let v: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .query(&mut s.client())
            .unwrap();
        v.len()
    };
    assert_eq!(servers.iter().map(listed).sum::<usize>(), n);
    drop(c);
    assert!(wait_until(Duration::from_secs(20), || servers
        .iter()
        .map(listed)
        .sum::<usize>()
        == 0));
}

/// A 100 MB message: published and delivered as redis-server does with its defaults (Keyway's
/// `limits.max_bulk_len` is 512 MiB like `proto-max-bulk-len`); with a lower
/// `max_bulk_len` the publisher gets redis-server's protocol error, as with a lower
/// `proto-max-bulk-len`.
#[test]
fn hundred_megabyte_publish() {
    // redis-server would cut off any subscriber (Keyway's connection too) that a 100 MB
    // message puts past its pub/sub output limit (32 MB by default): docs/pubsub.md says to
    // raise it on the pool's servers.
    let servers = vec![RedisServer::start_with(&[
        "--client-output-buffer-limit",
        "pubsub 512mb 512mb 0",
    ])];
    let proxy = three_with(
        &servers,
        "timeout = \"10s\"",
        "max_client_output = 268435456",
    );
    let mut sub = RawClient::connect(proxy.addr);
    sub.call(&["SUBSCRIBE", "big"]);
    let payload = "y".repeat(100 * 1024 * 1024);
    let mut p = RawClient::connect(proxy.addr);
    assert_eq!(p.call(&["PUBLISH", "big", &payload]), b":1\r\n");
    let m = sub.read_reply().unwrap();
    let head = format!("*3\r\n$7\r\nmessage\r\n$3\r\nbig\r\n${}\r\n", payload.len());
    assert_eq!(m.len(), head.len() + payload.len() + 2);
    assert!(m.starts_with(head.as_bytes()));
    drop(m);
    drop(payload);

    // Keyway with a 16 MiB bulk limit against redis-server with the same proto-max-bulk-len.
    let limited = three_with(&servers, "", "max_bulk_len = 16777216");
    let direct = RedisServer::start_with(&["--proto-max-bulk-len", "16mb"]);
    let header = "*3\r\n$7\r\nPUBLISH\r\n$1\r\nc\r\n$104857600\r\n";
    let mut k = RawClient::connect(limited.addr);
    let mut d = RawClient::connect(direct.addr());
    k.send(header.as_bytes());
    d.send(header.as_bytes());
    assert_eq!(show(&k.read_to_close()), show(&d.read_to_close()));
}

/// The server (index into `names`) a channel lives on in Keyway's current topology.
fn channel_home(proxy: &Proxy, channel: &str) -> String {
    let topo = proxy.shared.topology.load();
    let slot = keyway::routing::key_slot(channel.as_bytes(), topo.hash_tag);
    topo.server(topo.table.primary(slot)).unwrap().name.clone()
}

/// A topology swap that moves channels' slots to other servers (one server removed, one added)
/// moves their subscriptions: the subscriber does nothing and still gets every message, each
/// channel is subscribed on its new server and no longer on its old one, the removed server
/// is left with no subscriber connection, and the new server got the client's pattern.
#[test]
fn a_topology_swap_moves_subscriptions() {
    let servers = servers(4);
    let by_name = |name: &str| -> &RedisServer {
        &servers[name.strip_prefix('s').unwrap().parse::<usize>().unwrap()]
    };
    let proxy = three_with(&servers[..3], "", "");
    let channels: Vec<String> = (0..60).map(|i| format!("news{i}")).collect();
    let shards: Vec<String> = (0..20).map(|i| format!("shard{i}")).collect();
    let mut sub = RawClient::connect(proxy.addr);
    let mut args = vec!["SUBSCRIBE"];
    args.extend(channels.iter().map(String::as_str));
    sub.send(&encode(&args));
    for _ in &channels {
        sub.read_reply().unwrap();
    }
    let mut args = vec!["SSUBSCRIBE"];
    args.extend(shards.iter().map(String::as_str));
    sub.send(&encode(&args));
    for _ in &shards {
        sub.read_reply().unwrap();
    }
    sub.call(&["PSUBSCRIBE", "alert*"]);
    let before: Vec<String> = channels.iter().map(|c| channel_home(&proxy, c)).collect();
    assert!(before.iter().any(|s| s == "s2"), "some channels live on s2");

    let body = serde_json::json!({
        "servers": [
            {"name": "s0", "addr": servers[0].addr_string()},
            {"name": "s1", "addr": servers[1].addr_string()},
            {"name": "s3", "addr": servers[3].addr_string()},
        ]
    })
    .to_string();
    let (status, reply) = http_with(
        proxy.admin,
        "PUT",
        "/topology",
        &body,
        &[
            ("Authorization", &bearer()),
            ("Content-Type", "application/json"),
        ],
    );
    assert_eq!(status, 200, "{reply}");
    let after: Vec<String> = channels.iter().map(|c| channel_home(&proxy, c)).collect();
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    assert!(
        moved > 0 && after.iter().any(|s| s == "s3"),
        "channels moved"
    );
    // Every channel ends up subscribed on its new server, and only there.
    for (i, channel) in channels.iter().enumerate() {
        let home = by_name(&after[i]);
        assert!(
            wait_until(Duration::from_secs(10), || numsub(home, channel) == 1),
            "{channel} subscribed on {}",
            after[i]
        );
        if before[i] != after[i] && before[i] != "s2" {
            assert!(
                wait_until(Duration::from_secs(10), || numsub(
                    by_name(&before[i]),
                    channel
                ) == 0),
                "{channel} unsubscribed from {}",
                before[i]
            );
        }
    }
    assert!(
        wait_until(Duration::from_secs(10), || subscriber_connections(
            &servers[2]
        ) == 0),
        "the removed server has no subscriber connection left"
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            let n: i64 = redis::cmd("PUBSUB")
                .arg("NUMPAT")
                .query(&mut servers[3].client())
                .unwrap();
            n == 1
        }),
        "the new server has the pattern"
    );
    // Publishing through Keyway reaches the subscriber, which never subscribed again.
    let mut publisher = RawClient::connect(proxy.addr);
    let mut shard_publisher = RawClient::connect(proxy.addr);
    for c in &channels {
        assert_eq!(
            publisher.call(&["PUBLISH", c, &format!("m-{c}")]),
            b":1\r\n"
        );
    }
    for c in &shards {
        assert_eq!(
            shard_publisher.call(&["SPUBLISH", c, &format!("m-{c}")]),
            b":1\r\n"
        );
    }
    let alerts: Vec<String> = (0..20).map(|i| format!("alert{i}")).collect();
    assert!(alerts.iter().any(|c| channel_home(&proxy, c) == "s3"));
    for c in &alerts {
        assert_eq!(
            publisher.call(&["PUBLISH", c, &format!("m-{c}")]),
            b":1\r\n"
        );
    }
    let mut got = std::collections::BTreeSet::new();
    for _ in 0..channels.len() + shards.len() + alerts.len() {
        let m = show(&sub.read_reply().unwrap());
        let payload = m.rsplit("\\r\\n").nth(1).unwrap().to_string();
        got.insert(payload);
    }
    let want: std::collections::BTreeSet<String> = channels
        .iter()
        .chain(&shards)
        .chain(&alerts)
        .map(|c| format!("m-{c}"))
        .collect();
    assert_eq!(got, want);
}
