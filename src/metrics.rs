//! Every metric Keyway exports, defined in one place and documented in `docs/metrics.md`.
//!
//! Metrics live in Keyway's own [`Registry`] (not the process-global one), so that tests and an
//! embedding program see exactly Keyway's series. Conventions: prefix `keyway_`, base units
//! (seconds, bytes), `_total` on counters, labels from small fixed sets only: command names
//! from the command table (plus `other`), server names from the topology, fixed outcome words.
//! Never keys, values or client addresses.
//!
//! The request path never looks a label up by string: per-command handles are resolved once
//! into a vector indexed like the command table, and per-server handles once per server pool.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::command::{self, CommandSpec};
use crate::error::ErrorKind;

/// Latency buckets, in seconds: 25 µs to 2.5 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5,
];

/// Counters of one command, resolved once.
#[derive(Clone)]
pub struct CommandMetrics {
    /// Requests answered with a non-error reply.
    pub ok: IntCounter,
    /// Requests answered with an error reply (from a server or from Keyway).
    pub error: IntCounter,
}

/// Metrics of one server, resolved once when its pool is created.
#[derive(Clone)]
pub struct ServerMetrics {
    /// Requests written to the server.
    pub requests: IntCounter,
    /// Requests that got no reply because the server was unavailable.
    pub unavailable: IntCounter,
    /// Requests that got no reply within the timeout.
    pub timeouts: IntCounter,
    /// Malformed replies (the connection is reset).
    pub protocol_errors: IntCounter,
    /// Time from writing a request to its reply.
    pub latency: Histogram,
    /// Connections currently open to the server.
    pub connections: IntGauge,
    /// Requests written and not yet answered.
    pub in_flight: IntGauge,
    /// 1 while the server is considered up, 0 while down.
    pub up: IntGauge,
    /// Transitions of the server's health state, by direction.
    pub went_down: IntCounter,
    pub went_up: IntCounter,
    /// Connections (data or probe) whose authentication the server refused.
    pub auth_failures: IntCounter,
    /// 1 while the server is recovering (no reads until its resync ends), 0 otherwise.
    pub recovering: IntGauge,
    /// Keys a resync restored on the server (copied, and copied again after a check).
    pub resync_keys: IntCounter,
    /// Resyncs of the server that ended, by outcome.
    pub resyncs_completed: IntCounter,
    pub resyncs_interrupted: IntCounter,
}

/// Keyway's registry and every metric in it.
pub struct Metrics {
    registry: Registry,
    /// `keyway_client_connections`.
    pub client_connections: IntGauge,
    /// `keyway_client_connections_accepted_total`.
    pub client_accepted: IntCounter,
    /// `keyway_client_connections_refused_total` (over `max_clients`).
    pub client_refused: IntCounter,
    /// `keyway_client_tls_handshake_failures_total`.
    pub client_tls_failures: IntCounter,
    /// `keyway_client_disconnects_total{reason}`.
    pub client_disconnects: IntCounterVec,
    /// `keyway_auth_failures_total{reason}`: client authentication failures (`unknown_user`,
    /// `disabled`, `wrong_password`) and refusals (`noauth`, `noperm`).
    pub auth_failures: IntCounterVec,
    /// `keyway_errors_total{kind}`, one handle per [`ErrorKind`], in [`ErrorKind::ALL`] order.
    errors: Vec<IntCounter>,
    /// Per command-table entry, then `other` last.
    commands: Vec<CommandMetrics>,
    /// `keyway_request_duration_seconds`.
    pub request_duration: Histogram,
    server_requests: IntCounterVec,
    server_errors: IntCounterVec,
    server_latency: HistogramVec,
    server_connections: IntGaugeVec,
    server_in_flight: IntGaugeVec,
    server_up: IntGaugeVec,
    server_transitions: IntCounterVec,
    server_auth_failures: IntCounterVec,
    server_recovering: IntGaugeVec,
    server_resync_keys: IntCounterVec,
    server_resyncs: IntCounterVec,
    /// `keyway_topology_version`.
    pub topology_version: IntGauge,
    /// `keyway_config_reloads_total{outcome}`.
    pub config_reloads: IntCounterVec,
    /// `keyway_draining`: 1 once shutdown began.
    pub draining: IntGauge,
    /// `keyway_scripts_reloaded_total`: EVALSHA/FCALL calls sent again after Keyway loaded the
    /// script or library on a server missing it.
    pub scripts_reloaded: IntCounter,
    /// `keyway_blocked_clients`: clients whose blocking command (BLPOP, XREAD BLOCK, ...) waits
    /// on a server connection of its own.
    pub blocked_clients: IntGauge,
    /// `keyway_client_buffered_bytes`: bytes held by the buffers of all clients (measured
    /// under `limits.max_memory`).
    pub client_buffered_bytes: IntGauge,
    /// `keyway_blocking_replays_failed_total`: a blocking pop's removal that a replica did not
    /// take (write = all|quorum).
    pub blocking_replays_failed: IntCounter,
    /// `keyway_pubsub_messages_delivered_total`: pub/sub messages handed to subscribed clients
    /// (one per client per message).
    pub pubsub_delivered: IntCounter,
    /// `keyway_pubsub_link_failures_total`: subscriber connections to a server lost (each is
    /// made again, with its subscriptions).
    pub pubsub_link_failures: IntCounter,
    twophase_transactions: IntCounterVec,
    twophase_prepares: IntCounterVec,
    twophase_commits: IntCounterVec,
    twophase_recoveries: IntCounterVec,
    twophase_snapshot_reads: IntCounterVec,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let v = IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| bug(name, e));
    register(r, Box::new(v.clone()), name);
    v
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let v = IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| bug(name, e));
    register(r, Box::new(v.clone()), name);
    v
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let v = IntCounter::new(name, help).unwrap_or_else(|e| bug(name, e));
    register(r, Box::new(v.clone()), name);
    v
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let v = IntGauge::new(name, help).unwrap_or_else(|e| bug(name, e));
    register(r, Box::new(v.clone()), name);
    v
}

fn register(r: &Registry, c: Box<dyn prometheus::core::Collector>, name: &str) {
    if let Err(e) = r.register(c) {
        bug(name, e)
    }
}

/// Metric definitions are constants of this file: an invalid one is a programming error caught
/// by the first test that builds [`Metrics`], never something a client can cause.
#[allow(
    clippy::panic,
    reason = "metric definitions are constants; the first test that builds Metrics catches one"
)]
fn bug(name: &str, e: prometheus::Error) -> ! {
    panic!("metric {name} is defined wrongly: {e}")
}

impl Metrics {
    /// A fresh registry with every metric at zero. One per proxy instance, so that several
    /// proxies in one process (as in tests) keep separate counts.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Metrics {
        let r = Registry::new();
        let requests = counter_vec(
            &r,
            "keyway_requests_total",
            "Client requests answered, by command and outcome (ok or error reply).",
            &["command", "outcome"],
        );
        let names = command::all_specs()
            .map(|s| s.name)
            .chain(std::iter::once("other"));
        let commands = names
            .map(|name| CommandMetrics {
                ok: requests.with_label_values(&[name, "ok"]),
                error: requests.with_label_values(&[name, "error"]),
            })
            .collect();
        let request_duration = Histogram::with_opts(
            HistogramOpts::new(
                "keyway_request_duration_seconds",
                "Time from decoding a client request to its reply being ready to write.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .unwrap_or_else(|e| bug("keyway_request_duration_seconds", e));
        register(
            &r,
            Box::new(request_duration.clone()),
            "keyway_request_duration_seconds",
        );
        let server_latency = HistogramVec::new(
            HistogramOpts::new(
                "keyway_server_request_duration_seconds",
                "Time from writing a request to a server to its reply, by server.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["server"],
        )
        .unwrap_or_else(|e| bug("keyway_server_request_duration_seconds", e));
        register(
            &r,
            Box::new(server_latency.clone()),
            "keyway_server_request_duration_seconds",
        );

        #[cfg(target_os = "linux")]
        register(
            &r,
            Box::new(prometheus::process_collector::ProcessCollector::new(
                std::process::id() as i32,
                "keyway",
            )),
            "process",
        );

        let metrics = Metrics {
            client_connections: gauge(&r, "keyway_client_connections", "Client connections open now."),
            client_accepted: counter(
                &r,
                "keyway_client_connections_accepted_total",
                "Client connections accepted.",
            ),
            scripts_reloaded: counter(
                &r,
                "keyway_scripts_reloaded_total",
                "EVALSHA or FCALL calls sent again after loading their script or library on a server that had lost it.",
            ),
            blocked_clients: gauge(
                &r,
                "keyway_blocked_clients",
                "Clients whose blocking command waits on a server connection of its own.",
            ),
            client_buffered_bytes: gauge(
                &r,
                "keyway_client_buffered_bytes",
                "Bytes held by the read and reply buffers of all clients (measured when limits.max_memory is set).",
            ),
            blocking_replays_failed: counter(
                &r,
                "keyway_blocking_replays_failed_total",
                "Blocking pops whose removal a replica of the slot did not take (write = all or quorum).",
            ),
            pubsub_delivered: counter(
                &r,
                "keyway_pubsub_messages_delivered_total",
                "Pub/sub messages handed to subscribed clients, one per client per message.",
            ),
            pubsub_link_failures: counter(
                &r,
                "keyway_pubsub_link_failures_total",
                "Subscriber connections to a server lost; each reconnects and subscribes again.",
            ),
            client_refused: counter(
                &r,
                "keyway_client_connections_refused_total",
                "Client connections refused: limits.max_clients reached, or a non-loopback address under protected mode.",
            ),
            client_tls_failures: counter(
                &r,
                "keyway_client_tls_handshake_failures_total",
                "TLS handshakes on tls_listen that failed or did not finish within tls.handshake_timeout (plaintext, a client certificate missing or not trusted, no common protocol).",
            ),
            auth_failures: counter_vec(
                &r,
                "keyway_auth_failures_total",
                "Client AUTH/HELLO AUTH failures (unknown_user, disabled, wrong_password) and commands refused for want of authentication (noauth) or permission (noperm).",
                &["reason"],
            ),
            client_disconnects: counter_vec(
                &r,
                "keyway_client_disconnects_total",
                "Client connections closed by Keyway, by reason (protocol_error, output_limit, idle_timeout, drain, cross_protocol, killed, max_memory).",
                &["reason"],
            ),
            errors: {
                let v = counter_vec(
                    &r,
                    "keyway_errors_total",
                    "Error replies Keyway itself made for clients, by kind (the RESP prefix follows from it; see docs/metrics.md).",
                    &["kind"],
                );
                ErrorKind::ALL
                    .iter()
                    .map(|k| v.with_label_values(&[k.label()]))
                    .collect()
            },
            commands,
            request_duration,
            server_requests: counter_vec(
                &r,
                "keyway_server_requests_total",
                "Requests written to a server, by server.",
                &["server"],
            ),
            server_errors: counter_vec(
                &r,
                "keyway_server_errors_total",
                "Requests to a server that got no reply, by server and kind (unavailable, timeout, protocol).",
                &["server", "kind"],
            ),
            server_latency,
            server_connections: gauge_vec(
                &r,
                "keyway_server_connections",
                "Connections open to a server, by server.",
                &["server"],
            ),
            server_in_flight: gauge_vec(
                &r,
                "keyway_server_in_flight_requests",
                "Requests written to a server and not yet answered, by server.",
                &["server"],
            ),
            server_up: gauge_vec(
                &r,
                "keyway_server_up",
                "1 while Keyway considers the server up, 0 while down, by server.",
                &["server"],
            ),
            server_transitions: counter_vec(
                &r,
                "keyway_server_state_changes_total",
                "Health state changes of a server, by server and new state (up, down).",
                &["server", "state"],
            ),
            server_auth_failures: counter_vec(
                &r,
                "keyway_server_auth_failures_total",
                "Connections to a server (data or health probe) whose AUTH the server refused, by server.",
                &["server"],
            ),
            server_recovering: gauge_vec(
                &r,
                "keyway_server_recovering",
                "1 while a server is recovering (restarted or came back empty: it takes writes, serves no reads until resynced), by server.",
                &["server"],
            ),
            server_resync_keys: counter_vec(
                &r,
                "keyway_resync_keys_total",
                "Keys a resync restored on a recovering server (DUMP from a healthy replica, RESTORE there), by server.",
                &["server"],
            ),
            server_resyncs: counter_vec(
                &r,
                "keyway_resyncs_total",
                "Resyncs of a recovering server that ended, by server and outcome (completed, interrupted).",
                &["server", "outcome"],
            ),
            topology_version: gauge(
                &r,
                "keyway_topology_version",
                "Version of the topology in use; increases by one at each swap.",
            ),
            config_reloads: counter_vec(
                &r,
                "keyway_config_reloads_total",
                "Topology reloads, by outcome (applied, rejected).",
                &["outcome"],
            ),
            draining: gauge(
                &r,
                "keyway_draining",
                "1 once Keyway is shutting down and draining its clients.",
            ),
            twophase_transactions: counter_vec(
                &r,
                "keyway_twophase_transactions_total",
                "Two-phase writes by final outcome (committed, failed, conflict, unavailable).",
                &["outcome"],
            ),
            twophase_snapshot_reads: counter_vec(
                &r,
                "keyway_twophase_snapshot_reads_total",
                "Reads over several servers under two_phase, by how their snapshot was taken: validated (read twice, unchanged), locked (as a transaction, after validation kept failing), failed.",
                &["how"],
            ),
            twophase_prepares: counter_vec(
                &r,
                "keyway_twophase_prepares_total",
                "Two-phase prepare rounds by vote (yes: every participant locked its keys; no).",
                &["vote"],
            ),
            twophase_commits: counter_vec(
                &r,
                "keyway_twophase_commits_total",
                "Commits attempted after a yes vote, by outcome (committed, failed).",
                &["outcome"],
            ),
            twophase_recoveries: counter_vec(
                &r,
                "keyway_twophase_recoveries_total",
                "Stale transactions resolved by recovery, by decision (commit, abort).",
                &["decision"],
            ),
            registry: r,
        };
        for o in ["committed", "failed", "conflict", "unavailable"] {
            metrics.twophase_transactions.with_label_values(&[o]);
        }
        for h in ["validated", "locked", "failed"] {
            metrics.twophase_snapshot_reads.with_label_values(&[h]);
        }
        for v in ["yes", "no"] {
            metrics.twophase_prepares.with_label_values(&[v]);
        }
        for o in ["committed", "failed"] {
            metrics.twophase_commits.with_label_values(&[o]);
        }
        for d in ["commit", "abort"] {
            metrics.twophase_recoveries.with_label_values(&[d]);
        }
        // Series that alerts take increase() of exist from the start, at zero.
        for outcome in ["applied", "rejected"] {
            metrics.config_reloads.with_label_values(&[outcome]);
        }
        for reason in [
            "protocol_error",
            "output_limit",
            "idle_timeout",
            "drain",
            "cross_protocol",
            "killed",
            "max_memory",
        ] {
            metrics.client_disconnects.with_label_values(&[reason]);
        }
        for reason in [
            "unknown_user",
            "disabled",
            "wrong_password",
            "noauth",
            "noperm",
        ] {
            metrics.auth_failures.with_label_values(&[reason]);
        }
        metrics
    }

    /// Counts an error reply Keyway made.
    pub(crate) fn error(&self, kind: ErrorKind) {
        if let Some(c) = self.errors.get(kind.index()) {
            c.inc();
        }
    }

    /// The handles of a command-table entry (`None`: a name the table does not know).
    pub fn command(&self, spec: Option<&'static CommandSpec>) -> &CommandMetrics {
        self.command_at(self.command_index(spec))
    }

    /// A small number standing for a command's handles (see [`Metrics::command_at`]), for
    /// callers that keep it per request.
    pub fn command_index(&self, spec: Option<&'static CommandSpec>) -> u16 {
        let other = self.commands.len().saturating_sub(1);
        let index = spec.and_then(spec_index).unwrap_or(other).min(other);
        u16::try_from(index).unwrap_or(u16::MAX)
    }

    /// The handles behind [`Metrics::command_index`]; out-of-range indexes count as `other`.
    pub fn command_at(&self, index: u16) -> &CommandMetrics {
        let other = self.commands.len().saturating_sub(1);
        // `commands` is never empty (it always has `other`), so `other` is in range.
        #[allow(
            clippy::indexing_slicing,
            reason = "clamped to the last index, which exists"
        )]
        &self.commands[usize::from(index).min(other)]
    }

    /// Resolves the handles of one server (once per pool).
    pub fn server(&self, name: &str) -> ServerMetrics {
        ServerMetrics {
            requests: self.server_requests.with_label_values(&[name]),
            unavailable: self.server_errors.with_label_values(&[name, "unavailable"]),
            timeouts: self.server_errors.with_label_values(&[name, "timeout"]),
            protocol_errors: self.server_errors.with_label_values(&[name, "protocol"]),
            latency: self.server_latency.with_label_values(&[name]),
            connections: self.server_connections.with_label_values(&[name]),
            in_flight: self.server_in_flight.with_label_values(&[name]),
            up: self.server_up.with_label_values(&[name]),
            went_down: self.server_transitions.with_label_values(&[name, "down"]),
            went_up: self.server_transitions.with_label_values(&[name, "up"]),
            auth_failures: self.server_auth_failures.with_label_values(&[name]),
            recovering: self.server_recovering.with_label_values(&[name]),
            resync_keys: self.server_resync_keys.with_label_values(&[name]),
            resyncs_completed: self.server_resyncs.with_label_values(&[name, "completed"]),
            resyncs_interrupted: self
                .server_resyncs
                .with_label_values(&[name, "interrupted"]),
        }
    }

    /// Counts a two-phase write's final outcome. Two-phase writes are rare next to requests;
    /// a label lookup here is fine.
    pub fn txn_outcome(&self, outcome: &str) {
        self.twophase_transactions
            .with_label_values(&[outcome])
            .inc();
    }

    /// Counts a read over several servers under two_phase by how its snapshot was taken.
    pub fn snapshot_read(&self, how: &str) {
        self.twophase_snapshot_reads.with_label_values(&[how]).inc();
    }

    /// Counts a prepare round: every participant voted yes, or not.
    pub fn txn_prepare(&self, yes: bool) {
        let vote = if yes { "yes" } else { "no" };
        self.twophase_prepares.with_label_values(&[vote]).inc();
    }

    /// Counts a commit attempted after a yes vote.
    pub fn txn_commit(&self, committed: bool) {
        let outcome = if committed { "committed" } else { "failed" };
        self.twophase_commits.with_label_values(&[outcome]).inc();
    }

    /// Counts a transaction resolved by recovery.
    pub fn txn_recovered(&self, commit: bool) {
        let decision = if commit { "commit" } else { "abort" };
        self.twophase_recoveries
            .with_label_values(&[decision])
            .inc();
    }

    /// Forgets the series of a server that left the topology.
    pub fn remove_server(&self, name: &str) {
        let _ = self.server_requests.remove_label_values(&[name]);
        for kind in ["unavailable", "timeout", "protocol"] {
            let _ = self.server_errors.remove_label_values(&[name, kind]);
        }
        let _ = self.server_latency.remove_label_values(&[name]);
        let _ = self.server_connections.remove_label_values(&[name]);
        let _ = self.server_in_flight.remove_label_values(&[name]);
        let _ = self.server_up.remove_label_values(&[name]);
        for state in ["up", "down"] {
            let _ = self.server_transitions.remove_label_values(&[name, state]);
        }
        let _ = self.server_auth_failures.remove_label_values(&[name]);
        let _ = self.server_recovering.remove_label_values(&[name]);
        let _ = self.server_resync_keys.remove_label_values(&[name]);
        for outcome in ["completed", "interrupted"] {
            let _ = self.server_resyncs.remove_label_values(&[name, outcome]);
        }
    }

    /// Everything in Prometheus's text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec fails only on I/O errors, which a Vec does not have.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Position of `spec` in the command table (specs are elements of one static array).
fn spec_index(spec: &'static CommandSpec) -> Option<usize> {
    let base = command::all_specs().next()? as *const CommandSpec as usize;
    let offset = (spec as *const CommandSpec as usize).checked_sub(base)?;
    Some(offset / std::mem::size_of::<CommandSpec>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_has_its_own_series() {
        let m = Metrics::new();
        let get = command::lookup("get");
        let before = m.command(get).ok.get();
        m.command(get).ok.inc();
        assert_eq!(m.command(get).ok.get(), before + 1);
        assert_eq!(m.command(command::lookup("set")).ok.get(), 0);
        m.command(None).error.inc();
        let text = m.render();
        assert!(text.contains("keyway_requests_total{command=\"get\",outcome=\"ok\"}"));
        assert!(text.contains("keyway_requests_total{command=\"other\",outcome=\"error\"} 1"));
    }
}
