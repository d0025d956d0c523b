//! The command table against a live redis-server: it lists every command the server lists, with
//! the same arity, flags and key positions, and its errors read exactly like the server's.
//!
//! One server and one connection serve every live check (`table_agrees_with_live_redis`); the
//! other tests need no server.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed assumption is a failed test"
)]

mod support;

use std::collections::{BTreeSet, HashMap};

use keyway::command::{
    all_specs, key_indexes, lookup, resolve, CommandError, CommandSpec, Flags, KeySpec, Kind,
    Local, Merge, Traits,
};
use keyway::protocol::Request;
use redis::Value;

/// A request holding `list` as its arguments.
fn args(list: &[&str]) -> Request {
    Request::from_args(list)
}

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Okay => "OK".to_string(),
        other => panic!("expected a string, got {other:?}"),
    }
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        other => panic!("expected an integer, got {other:?}"),
    }
}

fn array(v: &Value) -> &[Value] {
    match v {
        Value::Array(items) | Value::Set(items) => items,
        other => panic!("expected an array, got {other:?}"),
    }
}

/// What `COMMAND` says about one command or subcommand.
struct Info {
    arity: i64,
    flags: BTreeSet<String>,
    range: (i64, i64, i64),
}

/// `COMMAND`, subcommands flattened under their `container|sub` names.
fn server_commands(con: &mut redis::Connection) -> HashMap<String, Info> {
    fn walk(entry: &Value, out: &mut HashMap<String, Info>) {
        let f = array(entry);
        let info = Info {
            arity: int(&f[1]),
            flags: array(&f[2]).iter().map(text).collect(),
            range: (int(&f[3]), int(&f[4]), int(&f[5])),
        };
        out.insert(text(&f[0]), info);
        if let Some(subs) = f.get(9) {
            for sub in array(subs) {
                walk(sub, out);
            }
        }
    }
    let reply: Value = redis::cmd("COMMAND").query(con).expect("COMMAND");
    let mut out = HashMap::new();
    for entry in array(&reply) {
        walk(entry, &mut out);
    }
    out
}

/// The server's error for a command, as `CODE message` (what follows the `-`).
fn server_error(con: &mut redis::Connection, list: &[&str]) -> String {
    let mut cmd = redis::cmd(list[0]);
    for a in &list[1..] {
        cmd.arg(*a);
    }
    match cmd.query::<Value>(con) {
        Err(e) => format!("{} {}", e.code().unwrap_or("?"), e.detail().unwrap_or("")),
        Ok(v) => panic!("{list:?} succeeded on the server: {v:?}"),
    }
}

/// Our error for a command as it would go on the wire: `ERR message`.
fn our_error(list: &[&str]) -> String {
    let a = args(list);
    let err = match resolve(a.args()) {
        Err(e) => e,
        Ok(spec) => key_indexes(spec, a.args(), &mut Vec::new())
            .expect_err(&format!("{list:?} should be an error")),
    };
    format!("ERR {err}")
}

/// A plausible argument list for a command with keys, every argument distinct so the keys can be
/// told apart by name.
fn sample(spec: &CommandSpec) -> Vec<String> {
    let fixed: &[&str] = match spec.name {
        "sort" => &[
            "sort", "k1", "BY", "p", "LIMIT", "0", "1", "GET", "g", "STORE", "dst",
        ],
        "georadius" => &["georadius", "k1", "0", "0", "1", "km", "STORE", "dst"],
        "georadiusbymember" => &[
            "georadiusbymember",
            "k1",
            "m",
            "1",
            "km",
            "STOREDIST",
            "dst",
        ],
        "xread" => &[
            "xread", "COUNT", "1", "BLOCK", "0", "STREAMS", "k1", "k2", "0", "0",
        ],
        "xreadgroup" => &[
            "xreadgroup",
            "GROUP",
            "g",
            "c",
            "NOACK",
            "STREAMS",
            "k1",
            "0",
        ],
        _ => &[],
    };
    if !fixed.is_empty() {
        return fixed.iter().map(|s| s.to_string()).collect();
    }
    let mut out: Vec<String> = spec.name.split('|').map(String::from).collect();
    let filler = |out: &mut Vec<String>, upto: usize| {
        while out.len() < upto {
            out.push(format!("a{}", out.len()));
        }
    };
    match spec.keys {
        KeySpec::NumKeys { numkeys_at, .. } | KeySpec::DestNumKeys { numkeys_at, .. } => {
            filler(&mut out, numkeys_at);
            out.extend(["2", "k1", "k2", "tail"].map(String::from));
        }
        _ => {
            let want = if spec.arity < 0 {
                2 - spec.arity
            } else {
                spec.arity
            };
            filler(&mut out, want as usize);
        }
    }
    out
}

#[test]
fn table_agrees_with_live_redis() {
    let server = support::RedisServer::start();
    let mut con = server.client();
    let live = server_commands(&mut con);

    // Every command the server lists is in the table, and nothing else is.
    let ours: BTreeSet<&str> = all_specs().map(|s| s.name).collect();
    let missing: Vec<&String> = live.keys().filter(|n| !ours.contains(n.as_str())).collect();
    assert!(
        missing.is_empty(),
        "commands missing from the table: {missing:?}"
    );
    // Commands of later Redis versions that clients send on connect (gen-command-table.py's
    // EXTRA); a 7.0 server does not list them.
    let later = ["client|setinfo"];
    let extra: Vec<&&str> = ours
        .iter()
        .filter(|n| !live.contains_key(**n) && !later.contains(*n))
        .collect();
    assert!(
        extra.is_empty(),
        "commands the server does not know: {extra:?}"
    );

    // Arity, flags and legacy key range, for every entry (refused ones included).
    let mut wrong = Vec::new();
    for spec in all_specs().filter(|s| !later.contains(&s.name)) {
        let info = &live[spec.name];
        if i64::from(spec.arity) != info.arity {
            wrong.push(format!(
                "{}: arity {} vs {}",
                spec.name, spec.arity, info.arity
            ));
        }
        let flags: BTreeSet<String> = spec.flags.names().map(String::from).collect();
        if flags != info.flags {
            wrong.push(format!(
                "{}: flags {flags:?} vs {:?}",
                spec.name, info.flags
            ));
        }
        for (flag, name) in [
            (Flags::WRITE, "write"),
            (Flags::READONLY, "readonly"),
            (Flags::ADMIN, "admin"),
        ] {
            assert_eq!(
                spec.flags.contains(flag),
                info.flags.contains(name),
                "{} {name}",
                spec.name
            );
        }
        let (f, l, s) = spec.keys.legacy_range();
        if (i64::from(f), i64::from(l), i64::from(s)) != info.range {
            wrong.push(format!(
                "{}: range {:?} vs {:?}",
                spec.name,
                (f, l, s),
                info.range
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "table disagrees with COMMAND:\n{}",
        wrong.join("\n")
    );

    // Key positions agree with COMMAND GETKEYS, for every command with keys (the shard channels
    // of SPUBLISH/SSUBSCRIBE/SUNSUBSCRIBE are keys for COMMAND INFO, not for GETKEYS).
    let mut out = Vec::new();
    let with_keys = |s: &&CommandSpec| s.keys != KeySpec::None && !s.flags.contains(Flags::PUBSUB);
    for spec in all_specs().filter(with_keys) {
        let sample = sample(spec);
        let sample_request = Request::from_args(&sample);
        key_indexes(spec, sample_request.args(), &mut out)
            .unwrap_or_else(|e| panic!("{sample:?}: {e}"));
        let ours: Vec<&str> = out.iter().map(|&i| sample[i].as_str()).collect();
        let reply: Value = redis::cmd("COMMAND")
            .arg("GETKEYS")
            .arg(&sample)
            .query(&mut con)
            .unwrap_or_else(|e| panic!("COMMAND GETKEYS {sample:?}: {e}"));
        let theirs: Vec<String> = array(&reply).iter().map(text).collect();
        if ours != theirs {
            wrong.push(format!("{sample:?}: keys {ours:?} vs GETKEYS {theirs:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "key positions disagree:\n{}",
        wrong.join("\n")
    );

    // Errors read exactly as the server's.
    let long = "x".repeat(200);
    let cases: &[&[&str]] = &[
        &["FOO", "a", "b"],
        &["foo"],
        &["FOO", &long, "b"],
        &["FOO", "a", &long, "c"],
        &["FOO", "a\r\nb"],
        &["client|setname", "x"],
        &["GET"],
        &["get", "a", "b"],
        &["CLIENT", "SETNAME"],
        &["client"],
        &["CLIENT", "FOO"],
        &["client", "Foo", "bar"],
        &["OBJECT", "encoding"],
        &["MSET", "a", "1", "b"],
        &["EVAL", "s", "5", "k"],
        &["EVAL", "s", "-1", "k"],
        &["EVAL", "s", "abc", "k"],
        &["EVAL_RO", "s", "01", "k"],
        &["ZUNIONSTORE", "d", "abc", "k"],
        &["ZUNIONSTORE", "d", "0", "k"],
        &["ZUNION", "5", "k"],
        &["ZINTERCARD", "-1", "k"],
        &["SINTERCARD", "0", "k"],
        &["SINTERCARD", "5", "k"],
        &["LMPOP", "5", "k", "LEFT"],
        &["ZMPOP", "-0", "k", "MIN"],
        &["XREAD", "COUNT", "1", "STREAMS", "a"],
        &["XREAD", "COUNT", "1", "STREAMS"],
        &["XREAD", "FOO", "STREAMS", "a", "0"],
    ];
    for case in cases {
        assert_eq!(our_error(case), server_error(&mut con, case), "{case:?}");
    }
}

#[test]
fn table_is_sorted_unique_and_lowercase() {
    let names: Vec<&str> = all_specs().map(|s| s.name).collect();
    assert!(
        names.windows(2).all(|w| w[0] < w[1]),
        "table not strictly sorted"
    );
    assert!(names
        .iter()
        .all(|n| n.bytes().all(|b| !b.is_ascii_uppercase())));
    for spec in all_specs() {
        if let Some(container) = spec.container() {
            // A container runs only its subcommands, except COMMAND, which also runs alone.
            let parent = lookup(container).expect("container of a subcommand");
            assert!(parent.traits.contains(Traits::SUBCOMMANDS), "{}", spec.name);
            assert!(
                parent.kind == Kind::Container || parent.name == "command",
                "{}",
                spec.name
            );
        }
    }
}

#[test]
fn lookup_ignores_case() {
    assert_eq!(
        resolve(args(&["gEt", "k"]).args()).map(|s| s.name),
        Ok("get")
    );
    assert_eq!(
        resolve(args(&["Client", "SetName", "x"]).args()).map(|s| s.name),
        Ok("client|setname")
    );
    assert_eq!(
        lookup("CLIENT|SetName").map(|s| s.name),
        Some("client|setname")
    );
    assert_eq!(lookup("get").map(|s| s.arity), Some(2));
    assert!(lookup("client|").is_none() && lookup("|get").is_none() && lookup("").is_none());
}

#[test]
fn odd_names_are_unknown() {
    for name in ["", "get|x", "client|setname", &"a".repeat(100), "g\u{e9}t"] {
        let err = resolve(args(&[name, "k"]).args()).expect_err(name);
        assert!(
            matches!(err, CommandError::Unknown { .. }),
            "{name}: {err:?}"
        );
    }
    assert!(matches!(
        resolve(args(&[]).args()),
        Err(CommandError::Unknown { .. })
    ));
    let err = resolve(args(&["client", &"s".repeat(100)]).args()).expect_err("long subcommand");
    assert!(
        matches!(err, CommandError::UnknownSubcommand { .. }),
        "{err:?}"
    );
}

#[test]
fn refused_commands_name_themselves() {
    let err = resolve(args(&["MOVE", "k", "1"]).args()).expect_err("MOVE is refused");
    let text = err.to_string();
    assert!(
        text.starts_with("command 'move' is not supported by keyway: "),
        "{text}"
    );
    let err =
        resolve(args(&["CLIENT", "PAUSE", "100"]).args()).expect_err("CLIENT PAUSE is refused");
    assert!(
        err.to_string()
            .starts_with("command 'client|pause' is not supported"),
        "{err}"
    );
    // Arity comes first, as on redis-server.
    assert_eq!(
        resolve(args(&["MOVE"]).args()),
        Err(CommandError::Arity { name: "move" })
    );
}

#[test]
fn notable_commands_route_as_designed() {
    let kind = |name: &str| lookup(name).map(|s| s.kind).expect(name);
    assert_eq!(
        kind("mget"),
        Kind::Split {
            merge: Merge::Array,
            group: 1
        }
    );
    assert_eq!(
        kind("mset"),
        Kind::Split {
            merge: Merge::Ok,
            group: 2
        }
    );
    assert_eq!(
        kind("del"),
        Kind::Split {
            merge: Merge::SumInt,
            group: 1
        }
    );
    assert_eq!(kind("dbsize"), Kind::AllServers(Merge::SumInt));
    assert_eq!(kind("keys"), Kind::AllServers(Merge::Concat));
    assert_eq!(kind("script|load"), Kind::AllServers(Merge::SameReply));
    assert_eq!(kind("eval"), Kind::Keyed);
    assert_eq!(kind("msetnx"), Kind::Keyed);
    assert_eq!(kind("xread"), Kind::Keyed);
    assert_eq!(kind("blpop"), Kind::Keyed);
    assert_eq!(kind("bzmpop"), Kind::Keyed);
    assert_eq!(kind("config|get"), Kind::AnyServer);
    assert_eq!(kind("info"), Kind::Local(Local::Info));
    assert_eq!(kind("client|setname"), Kind::Local(Local::ClientSetname));
    assert_eq!(kind("client|setinfo"), Kind::Local(Local::ClientSetinfo));
    assert_eq!(kind("command|getkeys"), Kind::AnyServer);
    assert_eq!(kind("multi"), Kind::Transaction(keyway::command::Tx::Multi));
    assert_eq!(kind("exec"), Kind::Transaction(keyway::command::Tx::Exec));
    use keyway::command::PubSub;
    assert_eq!(kind("publish"), Kind::PubSub(PubSub::Publish));
    assert_eq!(kind("spublish"), Kind::PubSub(PubSub::Publish));
    assert_eq!(kind("subscribe"), Kind::PubSub(PubSub::Subscribe));
    assert_eq!(kind("punsubscribe"), Kind::PubSub(PubSub::PUnsubscribe));
    assert_eq!(kind("pubsub|numsub"), Kind::PubSub(PubSub::NumSub));
    for refused in ["wait", "swapdb", "acl|setuser", "config|set"] {
        assert!(matches!(kind(refused), Kind::Refused(_)), "{refused}");
    }
}

#[test]
fn key_positions_of_movable_commands() {
    let keys = |list: &[&str]| {
        let a = args(list);
        let spec = resolve(a.args()).expect("resolves");
        let mut out = Vec::new();
        key_indexes(spec, a.args(), &mut out).map(|()| out)
    };
    assert_eq!(keys(&["EVAL", "s", "0"]), Ok(vec![]));
    assert_eq!(keys(&["EVAL", "s", "2", "a", "b", "arg"]), Ok(vec![3, 4]));
    assert_eq!(
        keys(&["ZUNIONSTORE", "d", "2", "a", "b", "WEIGHTS", "1", "2"]),
        Ok(vec![1, 3, 4])
    );
    assert_eq!(
        keys(&["SORT", "k", "STORE", "a", "STORE", "b"]),
        Ok(vec![1, 5])
    );
    assert_eq!(
        keys(&["SORT", "k", "GET", "store", "LIMIT", "0", "1"]),
        Ok(vec![1])
    );
    assert_eq!(keys(&["MSET", "a", "1", "b", "2"]), Ok(vec![1, 3]));
    assert_eq!(keys(&["MGET", "a", "b", "c"]), Ok(vec![1, 2, 3]));
    assert_eq!(
        keys(&[
            "XREADGROUP",
            "GROUP",
            "streams",
            "c",
            "STREAMS",
            "s",
            "t",
            "0",
            "0"
        ]),
        Ok(vec![5, 6])
    );
    assert_eq!(keys(&["PING"]), Ok(vec![]));
    assert_eq!(
        keys(&["EVAL", "s", "99999999999999999999"]),
        Err(CommandError::InvalidArguments {
            message: "value is not an integer or out of range".into()
        })
    );
}

#[test]
fn every_table_entry_is_found_by_its_name_in_any_case() {
    // The lookup index (by name length and first letter) must reach every entry, containers'
    // subcommands included, and a request's case must not matter.
    let mut n = 0;
    for spec in all_specs() {
        let found = lookup(spec.name).map(|s| s.name);
        assert_eq!(found, Some(spec.name), "lookup({})", spec.name);
        let upper = spec.name.to_ascii_uppercase();
        assert_eq!(
            lookup(&upper).map(|s| s.name),
            Some(spec.name),
            "lookup({upper})"
        );
        n += 1;
    }
    assert!(n >= 366, "{n} entries");
    for missing in ["", "gett", "ge", "client|nosuch", "nosuch|list", "get|x"] {
        assert!(lookup(missing).is_none(), "{missing:?} must not resolve");
    }
}
