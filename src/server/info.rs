//! INFO: redis-server's sections and fields, for the pool as a whole. Pure: `dispatch` asks each
//! server for `INFO memory stats keyspace` and passes the answers here.
//!
//! - `# Server`: the pool's Redis version (`local::redis_version`), `redis_mode:standalone`,
//!   Keyway's process, port and uptime, and `keyway_version`;
//! - `# Clients`: Keyway's clients;
//! - `# Memory`: the servers' memory, summed (what the data takes over the pool, replicas included);
//! - `# Stats`: Keyway's connections and commands; the servers' keyspace hits, misses, expired and
//!   evicted keys, summed;
//! - `# Replication`: `role:master` (Keyway is the writable face of the pool);
//! - `# Keyspace`: `db0:keys=..,expires=..,avg_ttl=..` over the pool, each key counted once
//!   (the sums divided by the replica count, as DBSIZE);
//! - `# Keyway`: the topology and each server.
//!
//! `INFO` with section names gives those sections (case-insensitive), `all` and `everything`
//! every section, none the default set (every section), as redis-server does.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::local::{redis_version, Facts, VERSION};
use crate::protocol::Args;

/// One server's `INFO` fields (`name -> value`), or `None` if it did not answer.
pub(crate) type Fields = Option<HashMap<String, String>>;

/// The request sent to each server.
pub(crate) const SERVER_INFO: &[&str] = &["INFO", "memory", "stats", "keyspace"];

/// Parses an INFO text into its fields.
pub(crate) fn parse(text: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(text)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// Every section, in redis-server's order, with Keyway's last.
const SECTIONS: &[&str] = &[
    "server",
    "clients",
    "memory",
    "stats",
    "replication",
    "keyspace",
    "keyway",
];

/// The sections `INFO args..` asks for.
fn wanted(args: Args<'_>) -> Vec<&'static str> {
    let names: Vec<String> = args
        .iter()
        .skip(1)
        .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
        .collect();
    if names.is_empty()
        || names
            .iter()
            .any(|n| n == "all" || n == "everything" || n == "default")
    {
        return SECTIONS.to_vec();
    }
    SECTIONS
        .iter()
        .copied()
        .filter(|s| names.iter().any(|n| n == s))
        .collect()
}

/// The sum of an integer field over the servers that have it.
fn sum(servers: &[Fields], field: &str) -> i64 {
    servers
        .iter()
        .flatten()
        .filter_map(|f| f.get(field)?.parse::<i64>().ok())
        .sum()
}

/// A byte count as redis-server writes it in `*_human` fields.
fn human(bytes: i64) -> String {
    let b = bytes as f64;
    if b < 1024.0 {
        format!("{bytes}B")
    } else if b < 1024.0 * 1024.0 {
        format!("{:.2}K", b / 1024.0)
    } else if b < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2}M", b / (1024.0 * 1024.0))
    } else {
        format!("{:.2}G", b / (1024.0 * 1024.0 * 1024.0))
    }
}

/// `db0:keys=3,expires=1,avg_ttl=100` of each server, as numbers.
fn keyspace(fields: &HashMap<String, String>) -> (i64, i64, i64) {
    let mut out = (0, 0, 0);
    if let Some(db0) = fields.get("db0") {
        for part in db0.split(',') {
            let Some((k, v)) = part.split_once('=') else {
                continue;
            };
            let v = v.parse::<i64>().unwrap_or(0);
            match k {
                "keys" => out.0 = v,
                "expires" => out.1 = v,
                "avg_ttl" => out.2 = v,
                _ => {}
            }
        }
    }
    out
}

/// The INFO text for `args`, from Keyway's facts and the servers' fields (in topology order).
pub(crate) fn text(args: Args<'_>, facts: &Facts<'_>, servers: &[Fields]) -> String {
    let mut sections = Vec::new();
    for name in wanted(args) {
        let mut s = String::with_capacity(256);
        // Writing to a String cannot fail.
        let _ = match name {
            "server" => server(&mut s, facts),
            "clients" => clients(&mut s, facts),
            "memory" => memory(&mut s, servers),
            "stats" => stats(&mut s, facts, servers),
            "replication" => write!(s, "# Replication\r\nrole:master\r\nconnected_slaves:0\r\n"),
            "keyspace" => keyspace_section(&mut s, facts, servers),
            _ => keyway(&mut s, facts, servers),
        };
        sections.push(s);
    }
    sections.join("\r\n")
}

fn server(s: &mut String, facts: &Facts<'_>) -> std::fmt::Result {
    let uptime = facts.shared.started.elapsed().as_secs();
    write!(
        s,
        "# Server\r\nredis_version:{}\r\nredis_mode:standalone\r\nos:{}\r\narch_bits:{}\r\n\
         process_id:{}\r\nrun_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{uptime}\r\n\
         uptime_in_days:{}\r\nkeyway_version:{VERSION}\r\n",
        redis_version(facts.topo),
        os(),
        usize::BITS,
        std::process::id(),
        facts.shared.run_id,
        facts.shared.port.get().copied().unwrap_or(0),
        uptime / 86400,
    )
}

/// `os:` as redis-server writes it from uname: system, kernel release, machine
/// (`Linux 6.1.0-18-amd64 x86_64`).
fn os() -> &'static str {
    static OS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    OS.get_or_init(|| {
        let system = match std::env::consts::OS {
            "linux" => "Linux",
            "macos" => "Darwin",
            other => other,
        };
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let machine = std::env::consts::ARCH;
        match release.trim() {
            "" => format!("{system} {machine}"),
            release => format!("{system} {release} {machine}"),
        }
    })
}

fn clients(s: &mut String, facts: &Facts<'_>) -> std::fmt::Result {
    write!(
        s,
        "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\nblocked_clients:0\r\n",
        facts.shared.clients.load(Ordering::Relaxed),
        facts.shared.client_limits.max_clients,
    )
}

fn memory(s: &mut String, servers: &[Fields]) -> std::fmt::Result {
    let used = sum(servers, "used_memory");
    let peak = sum(servers, "used_memory_peak");
    let max = sum(servers, "maxmemory");
    let policy = servers
        .iter()
        .flatten()
        .find_map(|f| f.get("maxmemory_policy").cloned())
        .unwrap_or_else(|| "noeviction".to_owned());
    write!(
        s,
        "# Memory\r\nused_memory:{used}\r\nused_memory_human:{}\r\nused_memory_rss:{}\r\n\
         used_memory_peak:{peak}\r\nused_memory_peak_human:{}\r\nmaxmemory:{max}\r\n\
         maxmemory_human:{}\r\nmaxmemory_policy:{policy}\r\n",
        human(used),
        sum(servers, "used_memory_rss"),
        human(peak),
        human(max),
    )
}

fn stats(s: &mut String, facts: &Facts<'_>, servers: &[Fields]) -> std::fmt::Result {
    let m = &facts.shared.metrics;
    write!(
        s,
        "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\n\
         rejected_connections:{}\r\nexpired_keys:{}\r\nevicted_keys:{}\r\nkeyspace_hits:{}\r\n\
         keyspace_misses:{}\r\n",
        m.client_accepted.get(),
        m.request_duration.get_sample_count(),
        m.client_refused.get(),
        sum(servers, "expired_keys"),
        sum(servers, "evicted_keys"),
        sum(servers, "keyspace_hits"),
        sum(servers, "keyspace_misses"),
    )
}

fn keyspace_section(s: &mut String, facts: &Facts<'_>, servers: &[Fields]) -> std::fmt::Result {
    s.push_str("# Keyspace\r\n");
    let (mut keys, mut expires, mut ttl_weight) = (0i64, 0i64, 0i64);
    for f in servers.iter().flatten() {
        let (k, e, ttl) = keyspace(f);
        keys += k;
        expires += e;
        ttl_weight = ttl_weight.saturating_add(ttl.saturating_mul(e));
    }
    let replicas = facts.topo.replicas.max(1) as i64;
    let avg_ttl = if expires > 0 { ttl_weight / expires } else { 0 };
    let (keys, expires) = (keys / replicas, expires / replicas);
    if keys > 0 {
        write!(s, "db0:keys={keys},expires={expires},avg_ttl={avg_ttl}\r\n")?;
    }
    Ok(())
}

fn keyway(s: &mut String, facts: &Facts<'_>, servers: &[Fields]) -> std::fmt::Result {
    let topo = facts.topo;
    write!(
        s,
        "# Keyway\r\ntopology_version:{}\r\nservers:{}\r\nreplicas:{}\r\nservers_unanswered:{}\r\n",
        topo.version,
        topo.servers.len(),
        topo.replicas,
        servers.iter().filter(|f| f.is_none()).count(),
    )?;
    for (i, server) in topo.servers.iter().enumerate() {
        write!(
            s,
            "server{i}:name={},addr={},weight={},connections={}\r\n",
            server.name,
            server.addr,
            server.weight,
            server.pool.open_connections()
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields_and_keyspace() {
        let f = parse(
            b"# Memory\r\nused_memory:100\r\n\r\n# Keyspace\r\ndb0:keys=3,expires=1,avg_ttl=50\r\n",
        );
        assert_eq!(f.get("used_memory").map(String::as_str), Some("100"));
        assert_eq!(keyspace(&f), (3, 1, 50));
        assert_eq!(sum(&[Some(f.clone()), None, Some(f)], "used_memory"), 200);
    }

    #[test]
    fn human_sizes_are_redis_servers() {
        assert_eq!(human(1000), "1000B");
        assert_eq!(human(870_000), "849.61K");
        assert_eq!(human(3 * 1024 * 1024), "3.00M");
    }
}
