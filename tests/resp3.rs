//! RESP2 and RESP3 through Keyway, byte for byte against a redis-server.
//!
//! The same commands go to one redis-server directly and to Keyway over three servers, on one
//! connection each, after `HELLO 2` or `HELLO 3`; every reply must be the same bytes. The
//! corpus covers each command family that the command table forwards (strings, lists, hashes,
//! sets, sorted sets, streams, geo, HyperLogLog, bitmaps, keyspace, scripting), the replies
//! Keyway merges (MGET, MSET, DEL, EXISTS, DBSIZE over servers) or builds (PING, ECHO,
//! CLIENT GETNAME, errors), and RESP3's own types (maps, sets, doubles, nulls, verbatim text).
//! Commands whose replies differ between two servers for reasons of their own (random members,
//! times, hash-seeded orders) are left out.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed assumption is a failed test"
)]

mod support;

use support::*;

/// One command per line, arguments separated by spaces (none of these has a space inside).
const CORPUS: &str = "
PING
PING hello
ECHO hi
SET s:1 v
GET s:1
GET s:missing
SETNX s:1 w
APPEND s:1 xyz
STRLEN s:1
SET s:n 10
INCR s:n
INCRBY s:n 5
DECR s:n
INCRBYFLOAT s:n 1.5
GETRANGE s:1 0 1
SET s:1 new GET
SET s:2 two NX
GETDEL s:2
GETDEL s:2
MSET a:1 1 a:2 2 a:3 3 a:4 4
MGET a:1 a:2 missing:1 a:3 missing:2 a:4
EXISTS a:1 a:2 missing:1 a:3
DEL a:1 missing:1 a:2
MGET a:1 a:2 a:3 a:4
SET {t}x abc
SET {t}y abd
LCS {t}x {t}y
LCS {t}x {t}y IDX
LCS {t}x {t}y LEN
RPUSH l:1 a b c d e
LRANGE l:1 0 -1
LPOP l:1 2
LPOP l:missing
LPOP l:missing 2
LINDEX l:1 10
LPOS l:1 d
LMPOP 1 l:1 RIGHT COUNT 2
LMPOP 1 l:missing LEFT
HSET h:1 f1 v1 f2 v2 f3 3
HGETALL h:1
HGETALL h:missing
HGET h:1 missing
HMGET h:1 f1 missing f2
HINCRBY h:1 f3 2
HINCRBYFLOAT h:1 f3 0.5
HEXISTS h:1 f1
HKEYS h:1
HVALS h:1
HSTRLEN h:1 f1
HSCAN h:1 0
SADD n:1 3 1 2
SMEMBERS n:1
SMEMBERS n:missing
SISMEMBER n:1 2
SMISMEMBER n:1 1 9
SCARD n:1
SADD {g}a 1 2 3
SADD {g}b 2 3 4
SINTER {g}a {g}b
SUNION {g}a {g}b
SDIFF {g}a {g}b
SINTERCARD 2 {g}a {g}b
ZADD z:1 1 a 2.5 b 3 c
ZSCORE z:1 b
ZSCORE z:1 missing
ZMSCORE z:1 a missing c
ZINCRBY z:1 0.25 a
ZRANGE z:1 0 -1
ZRANGE z:1 0 -1 WITHSCORES
ZRANGEBYSCORE z:1 -inf +inf WITHSCORES
ZREVRANGE z:1 0 1 WITHSCORES
ZRANK z:1 c
ZCARD z:1
ZPOPMIN z:1
ZPOPMAX z:1 2
ZADD z:1 INCR 5 d
ZADD z:2 1 x 2 y
ZSCAN z:2 0
ZMPOP 1 z:2 MIN
ZMPOP 1 z:missing MIN
XADD x:1 1-1 f v
XADD x:1 2-1 f w g h
XRANGE x:1 - +
XREVRANGE x:1 + - COUNT 1
XLEN x:1
XREAD COUNT 5 STREAMS x:1 0
XREAD STREAMS x:missing 0
XGROUP CREATE x:1 grp 0
XREADGROUP GROUP grp c1 COUNT 1 STREAMS x:1 >
XPENDING x:1 grp
XACK x:1 grp 1-1
XTRIM x:1 MAXLEN 1
GEOADD geo:1 13.361389 38.115556 Palermo 15.087269 37.502669 Catania
GEOPOS geo:1 Palermo missing
GEODIST geo:1 Palermo Catania km
GEOSEARCH geo:1 FROMLONLAT 15 37 BYRADIUS 200 km ASC WITHDIST WITHCOORD
GEOHASH geo:1 Palermo
PFADD hll:1 a b c
PFCOUNT hll:1
SETBIT b:1 7 1
GETBIT b:1 7
BITCOUNT b:1
BITPOS b:1 1
BITFIELD b:1 GET u8 0 INCRBY u8 0 1
TYPE h:1
TYPE missing:1
OBJECT ENCODING l:1
EXPIRE s:1 1000
PERSIST s:1
TTL missing:1
COPY {t}x {t}z
RENAME {t}z {t}w
DUMP missing:1
TOUCH s:1 h:1 missing:1
UNLINK {t}w
HSET h:1 f1
LPUSH h:1 x
GET h:1
INCR s:1
ZADD z:1 x
MGET a:3 h:1 missing:1 l:1 z:1 s:1
EXISTS a:3 h:1 missing:1 l:1 z:1
NOSUCHCOMMAND a b
GET
CLIENT GETNAME
CLIENT SETNAME me
CLIENT GETNAME
";

/// Scripts: their replies go through Lua's conversions, in the caller's protocol. Keyless ones
/// are read-only calls: a keyless script that may write is refused where writes reach every
/// replica (write = all, quorum, two_phase).
fn scripts() -> Vec<Vec<&'static str>> {
    vec![
        vec!["EVAL_RO", "return {1, 'two', false, {3}}", "0"],
        vec!["EVAL", "return redis.call('HGETALL', KEYS[1])", "1", "h:1"],
        vec![
            "EVAL",
            "redis.setresp(3); return redis.call('HGETALL', KEYS[1])",
            "1",
            "h:1",
        ],
        vec![
            "EVAL",
            "redis.setresp(3); return redis.call('ZSCORE', KEYS[1], 'b')",
            "1",
            "z:1",
        ],
        vec!["EVAL_RO", "return redis.error_reply('MY error')", "0"],
        vec!["EVAL_RO", "return {double=1.5}", "0"],
        vec!["EVAL_RO", "return redis.status_reply('FINE')", "0"],
        vec![
            "EVAL_RO",
            "return redis.call('GET', KEYS[1])",
            "1",
            "s:missing",
        ],
    ]
}

/// What `write = "two_phase"` refuses by design, with the error that says so: scripts (they
/// could write outside the transaction) and commands that may block (XREADGROUP has a BLOCK
/// option). The commands that read their effects go with them.
const REFUSED_UNDER_TWO_PHASE: &[&str] = &["EVAL", "XREADGROUP", "XPENDING", "XACK"];

fn commands() -> Vec<Vec<&'static str>> {
    let mut all: Vec<Vec<&str>> = CORPUS
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split(' ').collect())
        .collect();
    all.extend(scripts());
    all
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace("\r\n", "\\r\\n")
}

/// Sends the corpus after `HELLO proto` to a redis-server directly and to Keyway, and compares
/// every reply. Each protocol gets servers of its own, so that both start from empty.
fn compare(proto: &str, pool: &str) {
    let direct = RedisServer::start();
    let (a, b, c) = three();
    let proxy = Proxy::start_toml(&config_toml(&[&a, &b, &c], pool));
    let mut d = RawClient::connect(direct.addr());
    let mut k = RawClient::connect(proxy.addr);
    // HELLO: the same map, but for the client id.
    let hello_d = d.call(&["HELLO", proto]);
    let hello_k = k.call(&["HELLO", proto]);
    let without_id = |h: &[u8]| {
        let text = show(h);
        let start = text.find("$2\\r\\nid\\r\\n:").expect("an id field");
        let end = start
            + text[start..]
                .find("\\r\\n$4\\r\\nmode")
                .expect("mode after id");
        format!("{}{}", &text[..start], &text[end..])
    };
    assert_eq!(without_id(&hello_k), without_id(&hello_d));
    let mut mismatches = Vec::new();
    let mut kinds = std::collections::BTreeSet::new();
    for cmd in commands() {
        if pool.contains("two_phase")
            && cmd
                .first()
                .is_some_and(|c| REFUSED_UNDER_TWO_PHASE.contains(c))
        {
            continue;
        }
        let want = d.call(&cmd);
        let got = k.call(&cmd);
        kinds.extend(
            want.iter()
                .copied()
                .filter(|b| b"+-:$*_#,(!=%~".contains(b)),
        );
        if got != want {
            mismatches.push(format!(
                "{}\n  redis:  {}\n  keyway: {}",
                cmd.join(" "),
                show(&want),
                show(&got)
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "RESP{proto} ({pool}): {} of {} replies differ:\n{}",
        mismatches.len(),
        commands().len(),
        mismatches.join("\n")
    );
    // The corpus reaches every type of the protocol (a reply type byte seen anywhere counts).
    let expected: &[u8] = if proto == "3" { b"+-:$*_,%~" } else { b"+-:$*" };
    for t in expected {
        assert!(
            kinds.contains(t),
            "RESP{proto}: no reply had a '{}'",
            *t as char
        );
    }
    // The merged count of keys over the three servers is the one server's count.
    assert_eq!(k.call(&["DBSIZE"]), d.call(&["DBSIZE"]));
}

#[test]
fn resp2_replies_are_redis_servers_bytes() {
    compare("2", "");
}

#[test]
fn resp3_replies_are_redis_servers_bytes() {
    compare("3", "");
}

#[test]
fn replicated_writes_answer_as_redis_server_in_both_protocols() {
    for proto in ["2", "3"] {
        compare(proto, "replicas = 2\nwrite = \"all\"");
        compare(proto, "replicas = 2\nwrite = \"quorum\"");
    }
}

#[test]
fn two_phase_writes_answer_as_redis_server_in_both_protocols() {
    for proto in ["2", "3"] {
        compare(proto, "replicas = 2\nwrite = \"two_phase\"");
    }
}

#[test]
fn hello_errors_and_switching_are_redis_servers() {
    let direct = RedisServer::start();
    let a = RedisServer::start();
    let proxy = Proxy::start(&[&a]);
    let mut d = RawClient::connect(direct.addr());
    let mut k = RawClient::connect(proxy.addr);
    let cases: &[&[&str]] = &[
        &["HELLO", "4"],
        &["HELLO", "1"],
        &["HELLO", "x"],
        &["HELLO", "3", "SETNAME"],
        &["HELLO", "3", "AUTH", "nobody", "pw"],
        &["HELLO", "3", "AUTH", "default"],
        &["HELLO", "3", "FOO"],
        &["HELLO", "3", "SETNAME", "bad name"],
        // The protocol is switched only by a HELLO that succeeds.
        &["GET", "missing"],
        &["HELLO", "3", "SETNAME", "ok"],
        &["GET", "missing"],
        &["CLIENT", "GETNAME"],
        &["HELLO", "2"],
        &["GET", "missing"],
        &["HELLO", "3", "AUTH", "default", "anything"],
        &["GET", "missing"],
        // RESET goes back to RESP2.
        &["RESET"],
        &["GET", "missing"],
        &["CLIENT", "GETNAME"],
    ];
    for cmd in cases {
        let want = d.call(cmd);
        let got = k.call(cmd);
        if cmd.first() == Some(&"HELLO") && want.first() != Some(&b'-') {
            // A map either way: the same shape and protocol (ids differ).
            assert_eq!(got.first(), want.first(), "{cmd:?}: {}", show(&got));
            let proto_field = |h: &[u8]| show(h).contains(&format!("proto\\r\\n:{}", cmd[1]));
            assert!(proto_field(&got) && proto_field(&want), "{}", show(&got));
            continue;
        }
        assert_eq!(show(&got), show(&want), "{cmd:?}");
    }
}

#[test]
fn resp2_and_resp3_clients_share_one_keyway() {
    let (a, b, c) = three();
    let proxy = Proxy::start(&[&a, &b, &c]);
    let mut two = RawClient::connect(proxy.addr);
    let mut three = RawClient::connect(proxy.addr);
    three.call(&["HELLO", "3"]);
    // Interleaved requests of both protocols, on the same server connections' pools.
    for i in 0..50 {
        let key = format!("h:{i}");
        assert_eq!(two.call(&["HSET", &key, "f", "v"]), b":1\r\n");
        assert_eq!(
            three.call(&["HGETALL", &key]),
            b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n"
        );
        assert_eq!(
            two.call(&["HGETALL", &key]),
            b"*2\r\n$1\r\nf\r\n$1\r\nv\r\n"
        );
        assert_eq!(three.call(&["GET", "missing"]), b"_\r\n");
        assert_eq!(two.call(&["GET", "missing"]), b"$-1\r\n");
    }
    // Keyway's own replies follow each client's protocol.
    let info = three.call(&["INFO"]);
    assert!(info.starts_with(b"="), "{}", show(&info));
    assert!(two.call(&["INFO"]).starts_with(b"$"));
}
