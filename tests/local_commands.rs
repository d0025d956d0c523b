//! Every command the command table marks local, sent through Keyway: each answers (none falls
//! through to an error for want of a handler), and where redis-server answers the same command
//! the same way, the bytes are compared with a live one.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed assumption is a failed test"
)]

mod support;

use keyway::command::{all_specs, Kind, Local};
use support::{raw_command, Proxy, RedisServer};

/// A valid invocation of each local command, to send through Keyway. The `match` is
/// exhaustive: a new local command needs a line here.
fn sample(local: Local) -> Vec<&'static str> {
    match local {
        Local::Ping => vec!["PING"],
        Local::Echo => vec!["ECHO", "hi"],
        Local::Quit => vec!["QUIT"],
        Local::Select => vec!["SELECT", "0"],
        Local::Hello => vec!["HELLO", "2"],
        Local::Reset => vec!["RESET"],
        Local::Info => vec!["INFO"],
        Local::Command => vec!["COMMAND"],
        Local::CommandCount => vec!["COMMAND", "COUNT"],
        Local::CommandDocs => vec!["COMMAND", "DOCS", "get"],
        Local::CommandInfo => vec!["COMMAND", "INFO", "get"],
        Local::CommandList => vec!["COMMAND", "LIST"],
        Local::ClientGetname => vec!["CLIENT", "GETNAME"],
        Local::ClientId => vec!["CLIENT", "ID"],
        Local::ClientSetname => vec!["CLIENT", "SETNAME", "worker-1"],
        Local::ClientSetinfo => vec!["CLIENT", "SETINFO", "LIB-NAME", "redis-py"],
        Local::ClientInfo => vec!["CLIENT", "INFO"],
        Local::ClientList => vec!["CLIENT", "LIST"],
        Local::ClientKill => vec!["CLIENT", "KILL", "ID", "999999"],
        Local::ClientNoEvict => vec!["CLIENT", "NO-EVICT", "on"],
        Local::ClientReply => vec!["CLIENT", "REPLY", "ON"],
        Local::Auth => vec!["AUTH", "default", "any"],
        Local::AclWhoami => vec!["ACL", "WHOAMI"],
        Local::AclCat => vec!["ACL", "CAT"],
        Local::AclDryrun => vec!["ACL", "DRYRUN", "default", "get", "k"],
    }
}

#[test]
fn every_local_command_answers_through_keyway() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&[&server]);
    let mut checked = 0;
    for spec in all_specs() {
        let Kind::Local(local) = spec.kind else {
            continue;
        };
        let args = sample(local);
        let reply = raw_command(proxy.addr, &args).expect("reply");
        assert!(
            !reply.is_empty() && reply[0] != b'-',
            "{} answered {:?}",
            spec.name,
            String::from_utf8_lossy(&reply)
        );
        checked += 1;
    }
    assert!(checked >= 21, "only {checked} local commands walked");
}

#[test]
fn local_replies_match_redis_server_byte_for_byte() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&[&server]);
    let same: &[&[&str]] = &[
        &["PING"],
        &["PING", "hello"],
        &["ECHO", "x y"],
        &["SELECT", "0"],
        &["RESET"],
        &["CLIENT", "GETNAME"],
        &["CLIENT", "SETNAME", "has space"],
        &["CLIENT", "SETNAME", "ok-name"],
        &["QUIT"],
        &["HELLO", "4"],
        &["HELLO", "x"],
        &["GET"],
        &["NOSUCHCOMMAND", "a", "b"],
        &["CLIENT", "NOSUCH"],
        // Forwarded to a server: its answer is redis-server's by construction.
        &["COMMAND", "GETKEYS", "MSET", "a", "1", "b", "2"],
        &[
            "COMMAND",
            "GETKEYSANDFLAGS",
            "LMOVE",
            "a",
            "b",
            "LEFT",
            "RIGHT",
        ],
        &["COMMAND", "GETKEYS", "GET"],
    ];
    for args in same {
        let theirs = raw_command(server.addr(), args).expect("redis reply");
        let ours = raw_command(proxy.addr, args).expect("keyway reply");
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&theirs),
            "{args:?}"
        );
    }
}

/// CLIENT SETINFO came with Redis 7.2 (the pool's 7.0 servers do not know it); its replies and
/// errors are 7.2's `clientSetinfoCommand`'s.
#[test]
fn client_setinfo_answers_as_redis_7_2_does() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&[&server]);
    let cases: &[(&[&str], &str)] = &[
        (&["CLIENT", "SETINFO", "LIB-NAME", "redis-py"], "+OK\r\n"),
        (&["CLIENT", "SETINFO", "lib-ver", "5.0.1"], "+OK\r\n"),
        (&["CLIENT", "SETINFO", "LIB-VER", ""], "+OK\r\n"),
        (
            &["CLIENT", "SETINFO", "lib-name", "has space"],
            "-ERR lib-name cannot contain spaces, newlines or special characters.\r\n",
        ),
        (
            &["CLIENT", "SETINFO", "LIB-COLOR", "red"],
            "-ERR Unrecognized option 'LIB-COLOR'\r\n",
        ),
        (
            &["CLIENT", "SETINFO", "LIB-NAME"],
            "-ERR wrong number of arguments for 'client|setinfo' command\r\n",
        ),
    ];
    for (args, want) in cases {
        let ours = raw_command(proxy.addr, args).expect("keyway reply");
        assert_eq!(String::from_utf8_lossy(&ours), *want, "{args:?}");
    }
    // redis-rs sends it on every connect: a client at its defaults connects.
    let mut con = proxy.client();
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG");
}

/// RESET forgets the client's name, as redis-server's `clearClientConnectionState` does.
#[test]
fn reset_forgets_the_name_and_keeps_the_connection() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&[&server]);
    let mut con = proxy.client();
    let _: () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg("before")
        .query(&mut con)
        .unwrap();
    let reset: String = redis::cmd("RESET").query(&mut con).unwrap();
    assert_eq!(reset, "RESET");
    let name: Option<String> = redis::cmd("CLIENT").arg("GETNAME").query(&mut con).unwrap();
    assert_eq!(name, None);
    let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut con).unwrap();
}
