//! Commands Keyway answers itself, because they concern the connection to Keyway rather than
//! any key: one handler per [`Local`] variant, in one exhaustive `match` (a command the table
//! marks local without a handler here does not compile). Pure: they read the client's state
//! and Keyway's facts, and send nothing.

use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};

use super::client::ClientState;
use super::shared::Shared;
use crate::command::{self, CommandSpec, Local};
use crate::error::{ErrorKind, Reply, ReplyError};
use crate::protocol::{
    write_array_header, write_bulk, write_integer, write_nil, write_simple, Args,
};
use crate::topology::Topology;

/// Keyway's version, as INFO and HELLO report it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What local commands may read besides the client's own state.
pub(crate) struct Facts<'a> {
    pub(crate) topo: &'a Topology,
    pub(crate) shared: &'a Shared,
}

/// What the session does once a local command's reply is out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    /// Go on reading.
    Continue,
    /// Close the connection (QUIT).
    Close,
}

fn ready(build: impl FnOnce(&mut BytesMut)) -> Reply {
    let mut out = BytesMut::new();
    build(&mut out);
    Ok(out.freeze())
}

fn err(kind: ErrorKind, message: impl Into<std::borrow::Cow<'static, str>>) -> Reply {
    Err(ReplyError::new(kind, message))
}

/// Answers a local command.
pub(crate) fn answer(
    local: Local,
    args: Args<'_>,
    client: &mut ClientState,
    facts: &Facts<'_>,
) -> (Reply, After) {
    let reply = match local {
        Local::Ping => match args.get(1) {
            Some(msg) => ready(|o| write_bulk(o, msg)),
            None => ready(|o| write_simple(o, "PONG")),
        },
        Local::Echo => ready(|o| write_bulk(o, args.get(1).unwrap_or_default())),
        Local::Quit => return (ready(|o| write_simple(o, "OK")), After::Close),
        Local::Select => select(args),
        Local::Hello => hello(args, client),
        Local::Reset => {
            client.reset();
            ready(|o| write_simple(o, "RESET"))
        }
        Local::Info => ready(|o| write_bulk(o, info(facts).as_bytes())),
        Local::Command => ready(|o| {
            let specs: Vec<_> = listed().collect();
            write_array_header(o, specs.len());
            for s in specs {
                command_info(o, s);
            }
        }),
        Local::CommandCount => ready(|o| write_integer(o, listed().count() as i64)),
        Local::CommandInfo => ready(|o| {
            write_array_header(o, args.len().saturating_sub(2));
            for name in args.iter().skip(2) {
                match std::str::from_utf8(name).ok().and_then(command::lookup) {
                    Some(s) => command_info(o, s),
                    None => o.extend_from_slice(b"*-1\r\n"),
                }
            }
        }),
        // Documentation is for humans and redis-cli hints; an empty answer is valid.
        Local::CommandDocs => ready(|o| write_array_header(o, 0)),
        Local::CommandList => ready(|o| {
            let specs: Vec<_> = listed().collect();
            write_array_header(o, specs.len());
            for s in specs {
                write_bulk(o, s.name.as_bytes());
            }
        }),
        Local::ClientGetname => match client.name() {
            Some(n) => ready(|o| write_bulk(o, n)),
            None => ready(write_nil),
        },
        Local::ClientId => ready(|o| write_integer(o, client.id as i64)),
        Local::ClientSetname => {
            let name = args.get(2).unwrap_or_default();
            if !valid_attribute(name) {
                return (
                    err(
                        ErrorKind::Syntax,
                        "Client names cannot contain spaces, newlines or special characters.",
                    ),
                    After::Continue,
                );
            }
            client.about_mut().name = copy_unless_empty(name);
            ready(|o| write_simple(o, "OK"))
        }
        Local::ClientSetinfo => setinfo(args, client),
    };
    (reply, After::Continue)
}

/// Commands `COMMAND`, `COMMAND COUNT` and `COMMAND LIST` list: every command, not subcommands.
fn listed() -> impl Iterator<Item = &'static CommandSpec> {
    command::all_specs().filter(|s| !s.name.contains('|'))
}

/// Whether a client name or library attribute is printable ASCII without spaces (redis-server
/// checks it as a C string: up to the first NUL).
fn valid_attribute(value: &[u8]) -> bool {
    c_str(value).iter().all(|&b| (b'!'..=b'~').contains(&b))
}

/// `value` up to its first NUL, as redis-server reads an argument it formats as a C string.
fn c_str(value: &[u8]) -> &[u8] {
    value.split(|&b| b == 0).next().unwrap_or_default()
}

/// A copy, or `None` for an empty value (which clears the setting). A copy, not a slice: a
/// slice would keep the whole read buffer it came in alive for as long as the connection lives.
fn copy_unless_empty(value: &[u8]) -> Option<Bytes> {
    (!value.is_empty()).then(|| Bytes::copy_from_slice(value))
}

/// `SELECT index`: database 0 only.
fn select(args: Args<'_>) -> Reply {
    if args.get(1) == Some(b"0") {
        ready(|o| write_simple(o, "OK"))
    } else {
        err(
            ErrorKind::Refused,
            "keyway serves database 0 only (SELECT n is not supported by a sharding proxy)",
        )
    }
}

/// `CLIENT SETINFO LIB-NAME|LIB-VER value`, with redis-server's checks and errors.
fn setinfo(args: Args<'_>, client: &mut ClientState) -> Reply {
    let attr = args.get(2).unwrap_or_default();
    let value = args.get(3).unwrap_or_default();
    let attr_text = String::from_utf8_lossy(c_str(attr)).into_owned();
    let lib_name = attr.eq_ignore_ascii_case(b"lib-name");
    if !lib_name && !attr.eq_ignore_ascii_case(b"lib-ver") {
        return err(
            ErrorKind::Syntax,
            format!("Unrecognized option '{attr_text}'"),
        );
    }
    if !valid_attribute(value) {
        return err(
            ErrorKind::Syntax,
            format!("{attr_text} cannot contain spaces, newlines or special characters."),
        );
    }
    let about = client.about_mut();
    let slot = if lib_name {
        &mut about.lib_name
    } else {
        &mut about.lib_ver
    };
    *slot = copy_unless_empty(value);
    ready(|o| write_simple(o, "OK"))
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
        write_simple(o, f);
    }
    write_integer(o, i64::from(first));
    write_integer(o, i64::from(last));
    write_integer(o, i64::from(step));
    for _ in 0..4 {
        write_array_header(o, 0);
    }
}

/// HELLO [protover [AUTH ..] [SETNAME ..]]: RESP2 only, for now.
fn hello(args: Args<'_>, client: &mut ClientState) -> Reply {
    if let Some(v) = args.get(1) {
        match std::str::from_utf8(v)
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
        {
            Some(2) => {}
            Some(3) => {
                return err(
                    ErrorKind::NoProto,
                    "sorry, this protocol version is not supported (keyway speaks RESP2)",
                )
            }
            Some(_) => return err(ErrorKind::NoProto, "unsupported protocol version"),
            None => {
                return err(
                    ErrorKind::Syntax,
                    "Protocol version is not an integer or out of range",
                )
            }
        }
    }
    let mut name = None;
    let mut i = 2;
    while let Some(opt) = args.get(i) {
        if opt.eq_ignore_ascii_case(b"SETNAME") && args.get(i + 1).is_some() {
            name = args.get(i + 1);
            i += 2;
        } else if opt.eq_ignore_ascii_case(b"AUTH") {
            return err(
                ErrorKind::Refused,
                "keyway does not authenticate clients yet (HELLO AUTH is not supported); the servers see keyway's own user, never a client's",
            );
        } else {
            return err(
                ErrorKind::Syntax,
                format!(
                    "Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(opt)
                ),
            );
        }
    }
    if let Some(name) = name {
        if !valid_attribute(name) {
            return err(
                ErrorKind::Syntax,
                "Client names cannot contain spaces, newlines or special characters.",
            );
        }
        client.about_mut().name = copy_unless_empty(name);
    }
    let id = client.id as i64;
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
fn info(facts: &Facts<'_>) -> String {
    let topo = facts.topo;
    let shared = facts.shared;
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
