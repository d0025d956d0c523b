//! Commands Keyway answers itself, because they concern the connection to Keyway rather than
//! any key: PING, ECHO, QUIT, SELECT 0, HELLO 2, CLIENT SETNAME/GETNAME/ID, COMMAND,
//! INFO.

use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};

use super::plan::Planner;
use super::session::{error_bytes, Pending};
use crate::command::{self, CommandSpec};
use crate::protocol::{
    write_array_header, write_bulk, write_integer, write_nil, write_simple, Args, Request,
};

/// Keyway's version, as INFO and HELLO report it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

fn ready(build: impl FnOnce(&mut BytesMut)) -> (Pending, bool) {
    let mut out = BytesMut::new();
    build(&mut out);
    (Pending::Ready(out.freeze()), false)
}

fn err(msg: &str) -> (Pending, bool) {
    (Pending::Ready(error_bytes(msg)), false)
}

/// Answers a command whose spec kind is `Local`. Returns the reply and whether to close.
pub(crate) fn answer(
    planner: &mut Planner,
    spec: &'static CommandSpec,
    request: &Request,
) -> (Pending, bool) {
    let args = request.args();
    match spec.name {
        "ping" => match args.get(1) {
            Some(msg) => ready(|o| write_bulk(o, msg)),
            None => ready(|o| write_simple(o, "PONG")),
        },
        "echo" => ready(|o| write_bulk(o, args.get(1).map_or(&[][..], |a| a))),
        "quit" => {
            let (reply, _) = ready(|o| write_simple(o, "OK"));
            (reply, true)
        }
        "select" => {
            if args.get(1) == Some(b"0") {
                ready(|o| write_simple(o, "OK"))
            } else {
                err("ERR keyway serves database 0 only (SELECT n is not supported by a sharding proxy)")
            }
        }
        "hello" => hello(planner, args),
        "client|setname" => {
            let name = args.bytes(2).unwrap_or_default();
            if name.iter().any(|&b| b <= b' ' || b > b'~') {
                return err(
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                );
            }
            // A copy: a slice would keep the whole read buffer it came in alive for as long
            // as the connection lives.
            planner.client_name = (!name.is_empty()).then(|| Bytes::copy_from_slice(&name));
            ready(|o| write_simple(o, "OK"))
        }
        "client|getname" => match &planner.client_name {
            Some(n) => ready(|o| write_bulk(o, n)),
            None => ready(write_nil),
        },
        "client|id" => ready(|o| write_integer(o, planner.id as i64)),
        "command" => ready(|o| {
            let specs: Vec<_> = command::all_specs()
                .filter(|s| !s.name.contains('|'))
                .collect();
            write_array_header(o, specs.len());
            for s in specs {
                command_info(o, s);
            }
        }),
        "command|count" => ready(|o| {
            let n = command::all_specs()
                .filter(|s| !s.name.contains('|'))
                .count();
            write_integer(o, n as i64)
        }),
        "command|info" => ready(|o| {
            write_array_header(o, args.len().saturating_sub(2));
            for name in args.iter().skip(2) {
                match std::str::from_utf8(name).ok().and_then(command::lookup) {
                    Some(s) => command_info(o, s),
                    None => o.extend_from_slice(b"*-1\r\n"),
                }
            }
        }),
        // Documentation is for humans and redis-cli hints; an empty answer is valid.
        "command|docs" => ready(|o| write_array_header(o, 0)),
        "command|list" => ready(|o| {
            let specs: Vec<_> = command::all_specs()
                .filter(|s| !s.name.contains('|'))
                .collect();
            write_array_header(o, specs.len());
            for s in specs {
                write_bulk(o, s.name.as_bytes());
            }
        }),
        "info" => ready(|o| write_bulk(o, info(planner).as_bytes())),
        other => err(&format!("ERR keyway cannot answer '{other}' locally")),
    }
}

/// The legacy six fields of a COMMAND INFO entry (name, arity, flags, first, last, step),
/// followed by empty ACL categories, tips, key specs and subcommands.
fn command_info(o: &mut BytesMut, s: &CommandSpec) {
    let (first, last, step) = s.keys.legacy_range();
    write_array_header(o, 10);
    write_bulk(o, s.name.as_bytes());
    write_integer(o, i64::from(s.arity));
    let flags: Vec<&str> = s.flags.names().collect();
    write_array_header(o, flags.len());
    for f in flags {
        o.extend_from_slice(b"+");
        o.extend_from_slice(f.as_bytes());
        o.extend_from_slice(b"\r\n");
    }
    write_integer(o, i64::from(first));
    write_integer(o, i64::from(last));
    write_integer(o, i64::from(step));
    for _ in 0..4 {
        write_array_header(o, 0);
    }
}

/// HELLO [protover [AUTH ..] [SETNAME ..]]: RESP2 only, for now.
fn hello(planner: &mut Planner, args: Args<'_>) -> (Pending, bool) {
    if let Some(v) = args.get(1) {
        match std::str::from_utf8(v)
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
        {
            Some(2) => {}
            Some(3) => {
                return err(
                    "NOPROTO sorry, this protocol version is not supported (keyway speaks RESP2)",
                )
            }
            Some(_) => return err("NOPROTO unsupported protocol version"),
            None => return err("ERR Protocol version is not an integer or out of range"),
        }
    }
    let mut i = 2;
    while let Some(opt) = args.get(i) {
        if opt.eq_ignore_ascii_case(b"SETNAME") && args.get(i + 1).is_some() {
            // A copy, as for CLIENT SETNAME.
            planner.client_name = args.get(i + 1).map(Bytes::copy_from_slice);
            i += 2;
        } else if opt.eq_ignore_ascii_case(b"AUTH") {
            return err("ERR keyway does not authenticate clients yet (AUTH is not supported)");
        } else {
            return err(&format!(
                "ERR Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(opt)
            ));
        }
    }
    let id = planner.id as i64;
    ready(|o| {
        write_array_header(o, 14);
        for (k, v) in [("server", "keyway"), ("version", VERSION)] {
            write_bulk(o, k.as_bytes());
            write_bulk(o, v.as_bytes());
        }
        write_bulk(o, b"proto");
        write_integer(o, 2);
        write_bulk(o, b"id");
        write_integer(o, id);
        for (k, v) in [("mode", "standalone"), ("role", "master")] {
            write_bulk(o, k.as_bytes());
            write_bulk(o, v.as_bytes());
        }
        write_bulk(o, b"modules");
        write_array_header(o, 0);
    })
}

/// INFO: a `# Keyway` section about the proxy and its pool. Server statistics live on the
/// servers themselves; ask them directly.
fn info(planner: &Planner) -> String {
    let topo = &planner.topo;
    let shared = &planner.shared;
    let mut s = String::with_capacity(512);
    s.push_str("# Server\r\n");
    s.push_str(&format!("keyway_version:{VERSION}\r\n"));
    s.push_str("redis_mode:proxy\r\n");
    s.push_str(&format!("process_id:{}\r\n", std::process::id()));
    s.push_str(&format!(
        "uptime_in_seconds:{}\r\n",
        shared.started.elapsed().as_secs()
    ));
    s.push_str("\r\n# Clients\r\n");
    s.push_str(&format!(
        "connected_clients:{}\r\n",
        shared.clients.load(Ordering::Relaxed)
    ));
    s.push_str("\r\n# Keyway\r\n");
    s.push_str(&format!("topology_version:{}\r\n", topo.version));
    s.push_str(&format!("servers:{}\r\n", topo.servers.len()));
    s.push_str(&format!("replicas:{}\r\n", topo.replicas));
    for (i, server) in topo.servers.iter().enumerate() {
        s.push_str(&format!(
            "server{i}:name={},addr={},weight={},connections={}\r\n",
            server.name,
            server.addr,
            server.weight,
            server.pool.open_connections()
        ));
    }
    s
}
