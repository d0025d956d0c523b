//! Commands Keyway answers itself, because they concern the connection to Keyway rather than
//! any key: one handler per [`Local`] variant, in one exhaustive `match` (a command the table
//! marks local without a handler here does not compile). Pure: they read the client's state
//! and Keyway's facts, and send nothing.

use bytes::{Bytes, BytesMut};

use super::client::{ClientState, Replies};
use super::shared::Shared;
use crate::command::{self, CommandSpec, Local};
use crate::error::{ErrorKind, Reply, ReplyError};
use crate::protocol::{
    write_array_header, write_bulk, write_integer, write_map_header, write_null, write_null_array,
    write_set_header, write_simple, write_verbatim, Args, Proto,
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
    let proto = client.proto;
    let reply = match local {
        // In RESP2 subscribed mode, as redis-server: `[pong, message or ""]`.
        Local::Ping if proto == Proto::Resp2 && super::pubsub::subscribed(client) => ready(|o| {
            write_array_header(o, 2);
            write_bulk(o, b"pong");
            write_bulk(o, args.get(1).unwrap_or_default());
        }),
        Local::Ping => match args.get(1) {
            Some(msg) => ready(|o| write_bulk(o, msg)),
            None => ready(|o| write_simple(o, "PONG")),
        },
        Local::Echo => ready(|o| write_bulk(o, args.get(1).unwrap_or_default())),
        Local::Quit => return (ready(|o| write_simple(o, "OK")), After::Close),
        Local::Select => select(args),
        Local::Hello => hello(args, client, facts),
        Local::Auth => auth(args, client, facts),
        Local::AclWhoami => {
            let name = client.user_name().to_owned();
            ready(|o| write_bulk(o, name.as_bytes()))
        }
        Local::AclCat => acl_cat(args),
        Local::AclDryrun => acl_dryrun(args, facts),
        Local::Reset => {
            client.reset();
            ready(|o| write_simple(o, "RESET"))
        }
        // Keyway's own facts only; `dispatch` adds the servers' (see `info`).
        Local::Info => {
            ready(|o| write_verbatim(o, super::info::text(args, facts, &[]).as_bytes(), proto))
        }
        Local::Command => ready(|o| {
            let specs: Vec<_> = listed().collect();
            write_array_header(o, specs.len());
            for s in specs {
                command_info(o, s, proto);
            }
        }),
        Local::CommandCount => ready(|o| write_integer(o, listed().count() as i64)),
        Local::CommandInfo => ready(|o| {
            write_array_header(o, args.len().saturating_sub(2));
            for name in args.iter().skip(2) {
                match std::str::from_utf8(name).ok().and_then(command::lookup) {
                    Some(s) => command_info(o, s, proto),
                    None => write_null_array(o, proto),
                }
            }
        }),
        // Documentation is for humans and redis-cli hints; an empty answer is valid.
        Local::CommandDocs => ready(|o| write_map_header(o, 0, proto)),
        Local::CommandList => ready(|o| {
            let specs: Vec<_> = listed().collect();
            write_array_header(o, specs.len());
            for s in specs {
                write_bulk(o, s.name.as_bytes());
            }
        }),
        Local::ClientGetname => match client.name() {
            Some(n) => ready(|o| write_bulk(o, n)),
            None => ready(|o| write_null(o, proto)),
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
        Local::ClientInfo => match &client.entry {
            Some(entry) => {
                ready(|o| write_verbatim(o, format!("{}\n", entry.line()).as_bytes(), proto))
            }
            None => err(ErrorKind::Internal, "keyway: client not registered"),
        },
        Local::ClientList => client_list(args, facts, proto),
        Local::ClientKill => client_kill(args, client, facts),
        Local::ClientNoEvict => match on_off(args.get(2)) {
            Some(on) => {
                if let Some(entry) = &client.entry {
                    let mut about = entry.about();
                    about.no_evict = on;
                    entry.set_about(about);
                }
                ready(|o| write_simple(o, "OK"))
            }
            None => err(ErrorKind::Syntax, "syntax error"),
        },
        Local::ClientReply => {
            let mode = args.get(2).unwrap_or_default();
            if mode.eq_ignore_ascii_case(b"on") {
                client.replies = Replies::On;
            } else if mode.eq_ignore_ascii_case(b"off") {
                client.replies = Replies::Off;
            } else if mode.eq_ignore_ascii_case(b"skip") {
                // Unless replies are off already: SKIP does not turn them back on.
                if client.replies == Replies::On {
                    client.replies = Replies::Skip;
                }
            } else {
                return (err(ErrorKind::Syntax, "syntax error"), After::Continue);
            }
            // The session sends this reply only for ON.
            ready(|o| write_simple(o, "OK"))
        }
    };
    if matches!(
        local,
        Local::Hello | Local::ClientSetname | Local::ClientSetinfo | Local::Reset | Local::Auth
    ) {
        client.publish();
    }
    (reply, After::Continue)
}

/// `on` / `off`, in any case.
fn on_off(arg: Option<&[u8]>) -> Option<bool> {
    match arg {
        Some(a) if a.eq_ignore_ascii_case(b"on") => Some(true),
        Some(a) if a.eq_ignore_ascii_case(b"off") => Some(false),
        _ => None,
    }
}

/// `CLIENT LIST [TYPE normal|master|replica|slave|pubsub] [ID id ..]`: Keyway's clients, which
/// are all of type normal.
fn client_list(args: Args<'_>, facts: &Facts<'_>, proto: Proto) -> Reply {
    let mut ids: Option<Vec<u64>> = None;
    let mut normal = true;
    let mut i = 2;
    while let Some(opt) = args.get(i) {
        if opt.eq_ignore_ascii_case(b"type") && args.get(i + 1).is_some() {
            let t = args.get(i + 1).unwrap_or_default();
            let known = [&b"normal"[..], b"master", b"replica", b"slave", b"pubsub"];
            if !known.iter().any(|k| t.eq_ignore_ascii_case(k)) {
                return err(
                    ErrorKind::Syntax,
                    format!("Unknown client type '{}'", String::from_utf8_lossy(t)),
                );
            }
            normal = t.eq_ignore_ascii_case(b"normal");
            i += 2;
        } else if opt.eq_ignore_ascii_case(b"id") && args.get(i + 1).is_some() {
            let mut list = Vec::new();
            i += 1;
            while let Some(id) = args.get(i) {
                match crate::protocol::parse_i64(id).filter(|&n| n > 0) {
                    Some(n) => list.push(n as u64),
                    None => return err(ErrorKind::Syntax, "Invalid client ID"),
                }
                i += 1;
            }
            ids = Some(list);
        } else {
            return err(ErrorKind::Syntax, "syntax error");
        }
    }
    let mut text = String::new();
    if normal {
        for entry in facts.shared.registry.all() {
            if ids.as_ref().is_none_or(|ids| ids.contains(&entry.id)) {
                text.push_str(&entry.line());
                text.push('\n');
            }
        }
    }
    ready(|o| write_verbatim(o, text.as_bytes(), proto))
}

/// `CLIENT KILL ip:port`, or `CLIENT KILL [ID id] [ADDR ip:port] [LADDR ip:port] [USER name]
/// [TYPE type] [SKIPME yes|no]`: closes Keyway's clients that match, as redis-server does
/// (the old form answers OK or an error, the new one the number closed).
fn client_kill(args: Args<'_>, client: &ClientState, facts: &Facts<'_>) -> Reply {
    let text = |a: &[u8]| String::from_utf8_lossy(a).into_owned();
    let entries = facts.shared.registry.all();
    if args.len() == 3 {
        let addr = text(args.get(2).unwrap_or_default());
        let found = entries
            .iter()
            .find(|e| e.addr.is_some_and(|a| a.to_string() == addr));
        return match found {
            Some(e) => {
                e.kill.cancel();
                ready(|o| write_simple(o, "OK"))
            }
            None => err(ErrorKind::Syntax, "No such client"),
        };
    }
    let (mut id, mut addr, mut laddr, mut user, mut normal, mut skipme) =
        (None, None, None, None, true, true);
    let mut i = 2;
    while let (Some(opt), Some(value)) = (args.get(i), args.get(i + 1)) {
        if opt.eq_ignore_ascii_case(b"id") {
            match crate::protocol::parse_i64(value).filter(|&n| n > 0) {
                Some(n) => id = Some(n as u64),
                None => return err(ErrorKind::Syntax, "client-id should be greater than 0"),
            }
        } else if opt.eq_ignore_ascii_case(b"addr") {
            addr = Some(text(value));
        } else if opt.eq_ignore_ascii_case(b"laddr") {
            laddr = Some(text(value));
        } else if opt.eq_ignore_ascii_case(b"user") {
            // Keyway's clients are all the default user's.
            if value != b"default" {
                return err(ErrorKind::Syntax, format!("No such user '{}'", text(value)));
            }
            user = Some(text(value));
        } else if opt.eq_ignore_ascii_case(b"type") {
            let known = [&b"normal"[..], b"master", b"replica", b"slave", b"pubsub"];
            if !known.iter().any(|k| value.eq_ignore_ascii_case(k)) {
                return err(
                    ErrorKind::Syntax,
                    format!("Unknown client type '{}'", text(value)),
                );
            }
            normal = value.eq_ignore_ascii_case(b"normal");
        } else if opt.eq_ignore_ascii_case(b"skipme") {
            match on_off_yes_no(value) {
                Some(v) => skipme = v,
                None => return err(ErrorKind::Syntax, "syntax error"),
            }
        } else {
            return err(ErrorKind::Syntax, "syntax error");
        }
        i += 2;
    }
    if i != args.len() {
        return err(ErrorKind::Syntax, "syntax error");
    }
    // Keyway's clients are all of type normal (and the default user's, checked above).
    let _ = user;
    let mut killed = 0;
    for e in entries.iter().filter(|_| normal) {
        let show = |a: Option<std::net::SocketAddr>| a.map(|a| a.to_string());
        let matches = id.is_none_or(|id| id == e.id)
            && addr
                .as_ref()
                .is_none_or(|a| show(e.addr).as_ref() == Some(a))
            && laddr
                .as_ref()
                .is_none_or(|a| show(e.laddr).as_ref() == Some(a))
            && !(skipme && e.id == client.id);
        if matches {
            e.kill.cancel();
            killed += 1;
        }
    }
    ready(|o| write_integer(o, killed))
}

/// `yes` / `no`, in any case.
fn on_off_yes_no(arg: &[u8]) -> Option<bool> {
    if arg.eq_ignore_ascii_case(b"yes") {
        Some(true)
    } else if arg.eq_ignore_ascii_case(b"no") {
        Some(false)
    } else {
        None
    }
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
/// (Flags, categories, tips, key specs and subcommands are sets in RESP3, as redis-server sends
/// them.)
fn command_info(o: &mut BytesMut, s: &CommandSpec, proto: Proto) {
    let (first, last, step) = s.keys.legacy_range();
    write_array_header(o, 10);
    write_bulk(o, s.name.as_bytes());
    write_integer(o, i64::from(s.arity));
    let flags: Vec<&str> = s.flags.names().collect();
    write_set_header(o, flags.len(), proto);
    for f in flags {
        write_simple(o, f);
    }
    write_integer(o, i64::from(first));
    write_integer(o, i64::from(last));
    write_integer(o, i64::from(step));
    for _ in 0..4 {
        write_set_header(o, 0, proto);
    }
}

const WRONGPASS: &str = "invalid username-password pair or user is disabled.";

/// Logs in as `user` with `password` (`AUTH`, `HELLO ... AUTH`), as redis-server's
/// `ACLAuthenticateUser`: the user must exist, be on, and have `nopass` or a password whose
/// SHA-256 is one of its hashes. Without users configured, Keyway is a redis-server whose
/// `default` user has `nopass`. A failure is counted and logged with the user name and the
/// client's address, never the password.
fn login(
    user: &[u8],
    password: &[u8],
    client: &mut ClientState,
    facts: &Facts<'_>,
) -> Result<(), ReplyError> {
    let users = facts.shared.topology.users.load_full();
    if users.is_empty() {
        return if user == b"default" {
            Ok(())
        } else {
            Err(ReplyError::new(ErrorKind::WrongPass, WRONGPASS))
        };
    }
    let found = users.get(user).cloned();
    let reason = match &found {
        None => Some("unknown_user"),
        Some(u) if !u.enabled() => Some("disabled"),
        Some(u) if !u.verify(password) => Some("wrong_password"),
        Some(_) => None,
    };
    match (found, reason) {
        (Some(u), None) => {
            client.auth = super::client::Auth::User(u);
            client.users = users;
            Ok(())
        }
        (_, reason) => {
            let reason = reason.unwrap_or("unknown_user");
            facts
                .shared
                .metrics
                .auth_failures
                .with_label_values(&[reason])
                .inc();
            let peer = client.entry.as_ref().and_then(|e| e.addr);
            let shown = String::from_utf8_lossy(user.get(..128).unwrap_or(user)).into_owned();
            tracing::warn!(client = client.id, ?peer, user = %shown, reason, "client authentication failed");
            Err(ReplyError::new(ErrorKind::WrongPass, WRONGPASS))
        }
    }
}

/// `AUTH [username] password`, with redis-server's replies.
fn auth(args: Args<'_>, client: &mut ClientState, facts: &Facts<'_>) -> Reply {
    if args.len() > 3 {
        return err(ErrorKind::Syntax, "syntax error");
    }
    let (user, password) = match (args.get(1), args.get(2)) {
        (Some(u), Some(p)) => (u, p),
        (Some(p), None) => {
            let users = facts.shared.topology.users.load();
            let nopass = users.is_empty() || users.get(b"default").is_some_and(|u| u.open());
            if nopass {
                return err(ErrorKind::Syntax, "AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?");
            }
            (&b"default"[..], p)
        }
        _ => {
            return err(
                ErrorKind::Arity,
                "wrong number of arguments for 'auth' command",
            )
        }
    };
    login(user, password, client, facts)?;
    ready(|o| write_simple(o, "OK"))
}

/// `ACL CAT [category]`: the categories, or the commands of one.
fn acl_cat(args: Args<'_>) -> Reply {
    let Some(cat) = args.get(2) else {
        return ready(|o| {
            write_array_header(o, crate::acl::CATEGORIES.len());
            for c in crate::acl::CATEGORIES {
                write_bulk(o, c.as_bytes());
            }
        });
    };
    let lower = String::from_utf8_lossy(cat).to_ascii_lowercase();
    let Some(bit) = crate::acl::CATEGORIES.iter().position(|c| *c == lower) else {
        return err(
            ErrorKind::Syntax,
            format!("Unknown category '{}'", String::from_utf8_lossy(c_str(cat))),
        );
    };
    let names: Vec<&str> = crate::acl::User::commands_in(bit).collect();
    ready(|o| {
        write_array_header(o, names.len());
        for n in names {
            write_bulk(o, n.as_bytes());
        }
    })
}

/// `ACL DRYRUN username command [arg ...]`: whether the user may run the command, as
/// redis-server answers it (`+OK`, or a bulk string saying what is denied).
fn acl_dryrun(args: Args<'_>, facts: &Facts<'_>) -> Reply {
    let users = facts.shared.topology.users.load_full();
    let name = args.get(2).unwrap_or_default();
    // Without users, every client is a `default` user allowed everything.
    let open = users.is_empty() && name == b"default";
    let user = users.get(name).cloned();
    if user.is_none() && !open {
        return err(
            ErrorKind::Syntax,
            format!("User '{}' not found", String::from_utf8_lossy(c_str(name))),
        );
    }
    let sub = args.skip(3);
    let spec = match command::resolve(sub) {
        Ok(spec) => spec,
        Err(command::CommandError::Refused { name, .. }) => match command::lookup(name) {
            Some(spec) => spec,
            None => {
                return err(
                    ErrorKind::Internal,
                    "keyway: refused command not in the table",
                )
            }
        },
        Err(command::CommandError::Arity { name }) => {
            return err(
                ErrorKind::Arity,
                format!("wrong number of arguments for '{name}' command"),
            )
        }
        Err(_) => {
            return err(
                ErrorKind::Syntax,
                format!(
                    "Command '{}' not found",
                    String::from_utf8_lossy(c_str(sub.first().unwrap_or_default()))
                ),
            )
        }
    };
    let mut keys = Vec::new();
    let checked = user.map_or(Ok(()), |u| u.check(spec, sub, &mut keys));
    match checked {
        Ok(()) => ready(|o| write_simple(o, "OK")),
        Err(d) => {
            let text = d.dryrun_message(spec, sub);
            ready(|o| write_bulk(o, text.as_bytes()))
        }
    }
}

/// `HELLO [protover [AUTH user pass] [SETNAME name]]`, with redis-server's checks and errors:
/// switches the client to RESP2 or RESP3, logs in with `AUTH` (see [`login`]), and answers the
/// server's facts as a map. A client that must authenticate and has not gets `-NOAUTH`.
fn hello(args: Args<'_>, client: &mut ClientState, facts: &Facts<'_>) -> Reply {
    let mut proto = None;
    if let Some(v) = args.get(1) {
        match std::str::from_utf8(v)
            .ok()
            .and_then(|v| crate::protocol::parse_i64(v.as_bytes()))
        {
            Some(2) => proto = Some(Proto::Resp2),
            Some(3) => proto = Some(Proto::Resp3),
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
    let mut user = None;
    let mut i = 2;
    while let Some(opt) = args.get(i) {
        let more = args.len().saturating_sub(i + 1);
        if opt.eq_ignore_ascii_case(b"AUTH") && more >= 2 {
            user = args.get(i + 1).zip(args.get(i + 2));
            i += 3;
        } else if opt.eq_ignore_ascii_case(b"SETNAME") && more >= 1 {
            name = args.get(i + 1);
            i += 2;
        } else {
            return err(
                ErrorKind::Syntax,
                format!(
                    "Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(c_str(opt))
                ),
            );
        }
    }
    if let Some((user, password)) = user {
        login(user, password, client, facts)?;
    }
    if matches!(client.auth, super::client::Auth::Required) {
        return err(ErrorKind::NoAuth, "HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
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
    if let Some(p) = proto {
        client.proto = p;
    }
    let proto = client.proto;
    let id = client.id as i64;
    let version = redis_version(facts.topo);
    ready(|o| {
        write_map_header(o, 7, proto);
        for (k, v) in [("server", "redis"), ("version", version.as_ref())] {
            write_bulk(o, k.as_bytes());
            write_bulk(o, v.as_bytes());
        }
        write_bulk(o, b"proto");
        write_integer(o, proto.version());
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

/// The Redis version Keyway presents (HELLO, INFO's `redis_version`): the lowest that the
/// pool's servers reported, so that a client's feature checks hold on every server; before any
/// server answered, the version of the command table ([`command::TABLE_VERSION`]).
pub(crate) fn redis_version(topo: &Topology) -> std::sync::Arc<str> {
    topo.servers
        .iter()
        .filter_map(|s| s.pool.health().version())
        .min_by_key(|v| version_key(v))
        .unwrap_or_else(|| std::sync::Arc::from(command::TABLE_VERSION))
}

/// `7.0.15` as `[7, 0, 15]`, for ordering versions.
fn version_key(v: &str) -> Vec<u64> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}
