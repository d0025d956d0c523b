//! Table-driven tests of [`plan`]: every `Plan` variant, replicas 1 and 2 (and 3 for quorum),
//! every read and write policy, failover. The topology is real (slot table, pools), on ports
//! nothing listens on: the planner never sends, and the pools' tasks never run (the runtime is
//! not driven while planning).

use std::sync::Arc;

use super::*;
use crate::config::PoolConfig;
use crate::metrics::Metrics;
use crate::topology::TopologyHandle;
use bytes::Bytes;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    handle: TopologyHandle,
    client: ClientState,
}

impl Fixture {
    /// A topology of `servers` servers with the `[pool]` settings `extra` (TOML lines).
    fn new(servers: usize, extra: &str) -> Fixture {
        let mut toml = format!("{extra}\ntimeout = \"20ms\"\n");
        for i in 0..servers {
            toml.push_str(&server_toml(i));
        }
        let config: PoolConfig = toml::from_str(&toml).expect("pool config");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let handle = runtime
            .block_on(async { TopologyHandle::new(&config, Arc::new(Metrics::new())) })
            .expect("topology");
        Fixture {
            runtime,
            handle,
            client: ClientState::new(7),
        }
    }

    fn topo(&self) -> Arc<Topology> {
        self.handle.load()
    }

    /// Marks server `i` down, as `fall` failed probes would.
    fn down(&self, i: u16) {
        let topo = self.topo();
        let server = topo.server(i).expect("server");
        for _ in 0..10 {
            server.pool.health().failure("test");
        }
        assert!(!topo.is_up(i));
    }
}

/// Server `i` of a fixture: a port of its own from 9 up (discard and other ports nothing on a
/// test machine serves; never connected here).
fn server_toml(i: usize) -> String {
    format!(
        "[[servers]]\nname = \"s{i}\"\naddr = \"127.0.0.1:{}\"\n",
        9 + i
    )
}

fn request(args: &[&str]) -> Request {
    Request::from_args(args)
}

/// Plans `args` on the fixture's current topology and hands the plan to `check`.
fn with_plan(f: &mut Fixture, args: &[&str], check: impl FnOnce(&Topology, Plan<'_, '_>)) {
    let topo = f.topo();
    let req = request(args);
    let mut keys = Vec::new();
    let (_, plan) = plan(&req, &topo, &mut f.client, &mut keys);
    check(&topo, plan);
}

fn slot(topo: &Topology, key: &str) -> Slot {
    key_slot(key.as_bytes(), topo.hash_tag)
}

/// The error kind of a refusal, or a description of what the plan was instead.
fn refusal(plan: &Plan<'_, '_>) -> Result<ErrorKind, String> {
    match plan {
        Plan::Refuse(e) => Ok(e.kind()),
        other => Err(format!("{other:?}")),
    }
}

#[test]
fn local_commands_are_answered_by_keyway() {
    let mut f = Fixture::new(3, "");
    for (args, local) in [
        (&["PING"][..], Local::Ping),
        (
            &["client", "setinfo", "lib-name", "x"],
            Local::ClientSetinfo,
        ),
        (&["RESET"], Local::Reset),
        (&["COMMAND"], Local::Command),
        (&["command", "count"], Local::CommandCount),
        (&["HELLO", "2"], Local::Hello),
    ] {
        with_plan(&mut f, args, |_, plan| {
            assert!(
                matches!(plan, Plan::Local(l) if l == local),
                "{args:?}: {plan:?}"
            );
        });
    }
}

#[test]
fn refusals_carry_their_kind() {
    let mut f = Fixture::new(3, "");
    let cases: [(&[&str], ErrorKind); 10] = [
        (&["GET", "__keyway:tx:1"], ErrorKind::Refused),
        (
            &["MSET", "a", "1", "__keyway:lock:a", "x"],
            ErrorKind::Refused,
        ),
        (&["NOSUCH", "x"], ErrorKind::UnknownCommand),
        (&["CLIENT", "nosuch"], ErrorKind::UnknownCommand),
        (&["GET"], ErrorKind::Arity),
        (&["WAIT", "1", "0"], ErrorKind::Refused),
        (&["RENAME", "a", "b"], ErrorKind::CrossSlot),
        (&["BLPOP", "a", "b", "0"], ErrorKind::CrossSlot),
        (&["SCAN", "x"], ErrorKind::Syntax),
        (&["MSET", "a", "1", "b"], ErrorKind::Arity),
    ];
    for (args, kind) in cases {
        with_plan(&mut f, args, |_, plan| {
            assert_eq!(refusal(&plan), Ok(kind), "{args:?}");
        });
    }
}

/// SORT's BY and GET patterns make key names of the sorted elements: one that could make a
/// `__keyway:` name is refused; fixed-prefix patterns, `#` and patterns without `*` are not.
#[test]
fn sort_patterns_that_could_name_keyways_keys_are_refused() {
    let mut f = Fixture::new(3, "");
    for args in [
        &["SORT", "l", "BY", "nosort", "GET", "*"][..],
        &["SORT", "l", "GET", "#", "GET", "__keyway:tx:*->steps"],
        &["SORT", "l", "LIMIT", "0", "10", "BY", "__k*"],
        &["SORT_RO", "l", "GET", "*->primary"],
        &["SORT", "l", "by", "_*", "STORE", "d"],
    ] {
        with_plan(&mut f, args, |_, plan| {
            assert_eq!(refusal(&plan), Ok(ErrorKind::Refused), "{args:?}");
        });
    }
    for args in [
        &["SORT", "l"][..],
        &[
            "SORT",
            "l",
            "BY",
            "weight_*",
            "GET",
            "#",
            "GET",
            "user:*->name",
        ],
        &["SORT", "l", "BY", "nosort", "GET", "__keyway:constant"],
        &["SORT", "l", "LIMIT", "0", "1", "ALPHA", "DESC"],
        &["SORT_RO", "l", "BY", "w*"],
    ] {
        with_plan(&mut f, args, |_, plan| {
            assert!(matches!(plan, Plan::Route(_)), "{args:?}: {plan:?}");
        });
    }
}

#[test]
fn one_replica_routes_to_the_slot_primary_or_any_server_when_keyless() {
    let mut f = Fixture::new(3, "");
    for key in ["a", "b", "user:1", "{t}x"] {
        for args in [["GET", key], ["SET", key]] {
            let args = [args[0], args[1], "v"];
            let args = if args[0] == "GET" {
                &args[..2]
            } else {
                &args[..]
            };
            with_plan(&mut f, args, |topo, plan| {
                let primary = topo.table.primary(slot(topo, key));
                assert!(
                    matches!(plan, Plan::Route(Route::One(s)) if s == primary),
                    "{args:?}: {plan:?}"
                );
            });
        }
    }
    // EVAL with no keys: the client's server of the pool (client id 7 over 3 servers).
    with_plan(&mut f, &["EVAL", "return 1", "0"], |_, plan| {
        assert!(matches!(plan, Plan::Route(Route::One(1))), "{plan:?}");
    });
    // Keyless commands any server answers: the first server up, the same for every client.
    with_plan(&mut f, &["TIME"], |_, plan| {
        assert!(matches!(plan, Plan::Route(Route::One(0))), "{plan:?}");
    });
    with_plan(&mut f, &["CONFIG", "GET", "maxmemory"], |_, plan| {
        assert!(matches!(plan, Plan::Route(Route::One(0))), "{plan:?}");
    });
}

#[test]
fn keyless_commands_skip_servers_that_are_down() {
    let mut f = Fixture::new(3, "");
    f.down(0);
    with_plan(&mut f, &["CONFIG", "GET", "maxmemory"], |_, plan| {
        assert!(matches!(plan, Plan::Route(Route::One(1))), "{plan:?}");
    });
    // Client 7's server is 1 (7 mod 3); down, the next one up.
    f.down(1);
    with_plan(&mut f, &["EVAL", "return 1", "0"], |_, plan| {
        assert!(matches!(plan, Plan::Route(Route::One(2))), "{plan:?}");
    });
    with_plan(&mut f, &["TIME"], |_, plan| {
        assert!(matches!(plan, Plan::Route(Route::One(2))), "{plan:?}");
    });
}

#[test]
fn failover_next_moves_a_down_primary_slots_and_none_refuses_them() {
    let mut f = Fixture::new(3, "");
    let topo = f.topo();
    let s = slot(&topo, "k");
    let ranked = topo.table.ranked(s).to_vec();
    f.down(ranked[0]);
    with_plan(&mut f, &["GET", "k"], |_, plan| {
        assert!(
            matches!(plan, Plan::Route(Route::One(x)) if x == ranked[1]),
            "{plan:?}"
        );
    });
    let mut f = Fixture::new(3, "[health]\nfailover = \"none\"");
    let topo = f.topo();
    f.down(topo.table.primary(slot(&topo, "k")));
    with_plan(&mut f, &["GET", "k"], |_, plan| {
        assert_eq!(refusal(&plan), Ok(ErrorKind::TryAgain));
    });
}

#[test]
fn reads_follow_the_read_policy_with_a_retry_on_the_other_replica() {
    let mut f = Fixture::new(3, "replicas = 2\nread = \"primary\"");
    let topo = f.topo();
    let set = topo.replica_set(slot(&topo, "k")).to_vec();
    with_plan(&mut f, &["GET", "k"], |_, plan| {
        assert!(
            matches!(plan, Plan::Route(Route::Read { server, alternate }) if server == set[0] && alternate == set[1]),
            "{plan:?}"
        );
    });
    // The primary down: the other replica, with nothing left to retry on.
    f.down(set[0]);
    with_plan(&mut f, &["GET", "k"], |_, plan| {
        assert!(
            matches!(plan, Plan::Route(Route::One(s)) if s == set[1]),
            "{plan:?}"
        );
    });

    let mut f = Fixture::new(3, "replicas = 2\nread = \"round_robin\"");
    let mut seen = Vec::new();
    for _ in 0..2 {
        with_plan(&mut f, &["GET", "k"], |_, plan| match plan {
            Plan::Route(Route::Read { server, alternate }) => {
                assert_ne!(server, alternate);
                seen.push(server);
            }
            other => panic!("{other:?}"),
        });
    }
    assert_ne!(seen[0], seen[1], "round robin alternates: {seen:?}");

    for policy in ["random", "least_outstanding"] {
        let mut f = Fixture::new(3, &format!("replicas = 2\nread = \"{policy}\""));
        let topo = f.topo();
        let set = topo.replica_set(slot(&topo, "k")).to_vec();
        for _ in 0..20 {
            with_plan(&mut f, &["GET", "k"], |_, plan| match plan {
                Plan::Route(Route::Read { server, alternate }) => {
                    assert!(
                        set.contains(&server) && set.contains(&alternate),
                        "{policy}"
                    );
                }
                other => panic!("{policy}: {other:?}"),
            });
        }
    }
}

#[test]
fn writes_follow_the_write_policy() {
    for (replicas, write, expect_need) in [
        (2, "all", Some(2)),
        (3, "quorum", Some(2)),
        (2, "quorum", Some(2)),
        (2, "primary", None),
    ] {
        let mut f = Fixture::new(3, &format!("replicas = {replicas}\nwrite = \"{write}\""));
        let topo = f.topo();
        let set = topo.replica_set(slot(&topo, "k")).to_vec();
        with_plan(&mut f, &["SET", "k", "v"], |_, plan| {
            match (plan, expect_need) {
                (
                    Plan::Route(Route::FanOut {
                        targets,
                        need,
                        skip_down: false,
                    }),
                    Some(n),
                ) => {
                    assert_eq!((targets, need), (&set[..], n), "{write}");
                }
                (Plan::Route(Route::One(s)), None) => assert_eq!(s, set[0], "{write}"),
                (other, _) => panic!("{write}: {other:?}"),
            }
        });
    }
    // Replicas would pop different members.
    let mut f = Fixture::new(3, "replicas = 2\nwrite = \"all\"");
    with_plan(&mut f, &["SPOP", "k"], |_, plan| {
        assert_eq!(refusal(&plan), Ok(ErrorKind::Refused));
    });
}

/// The error text of a refused plan.
fn refusal_text(plan: &Plan<'_, '_>) -> String {
    match plan {
        Plan::Refuse(e) => e.to_string(),
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn writes_fail_fast_on_replicas_that_are_down() {
    // write = all, one replica down: refused before anything is sent, naming it.
    let mut f = Fixture::new(3, "replicas = 2\nwrite = \"all\"");
    let topo = f.topo();
    let set = topo.replica_set(slot(&topo, "k")).to_vec();
    f.down(set[1]);
    let name = |i: u16| topo.server(i).expect("server").name.clone();
    with_plan(&mut f, &["SET", "k", "v"], |_, plan| {
        assert_eq!(
            refusal_text(&plan),
            format!(
                "TRYAGAIN keyway: server '{}' holding a replica of these keys is down; write = all needs every replica, so nothing was written; writes to these keys resume when it is back",
                name(set[1])
            )
        );
    });
    // A split write with one part on that replica set is refused whole.
    let others: Vec<String> = (0..200)
        .map(|i| format!("o{i}"))
        .filter(|k| !topo.replica_set(slot(&topo, k)).contains(&set[1]))
        .take(3)
        .collect();
    let mut args = vec!["MSET", "k", "v"];
    for k in &others {
        args.extend([k.as_str(), "v"]);
    }
    with_plan(&mut f, &args, |_, plan| {
        assert_eq!(refusal(&plan), Ok(ErrorKind::TryAgain));
    });
    // Keys whose replicas are up are written as before.
    with_plan(&mut f, &["SET", &others[0], "v"], |_, plan| {
        assert!(
            matches!(
                plan,
                Plan::Route(Route::FanOut {
                    skip_down: false,
                    need: 2,
                    ..
                })
            ),
            "{plan:?}"
        );
    });
    // The whole set down: the guard sends the write anyway (it fails fast if they are dead).
    f.down(set[0]);
    with_plan(&mut f, &["SET", "k", "v"], |_, plan| {
        assert!(
            matches!(
                plan,
                Plan::Route(Route::FanOut {
                    skip_down: false,
                    need: 2,
                    ..
                })
            ),
            "{plan:?}"
        );
    });

    // write = quorum over 3: one down, a majority up: sent to the two that are up.
    let mut f = Fixture::new(3, "replicas = 3\nwrite = \"quorum\"");
    let topo = f.topo();
    let set = topo.replica_set(slot(&topo, "k")).to_vec();
    f.down(set[0]);
    with_plan(&mut f, &["SET", "k", "v"], |_, plan| {
        assert!(
            matches!(
                plan,
                Plan::Route(Route::FanOut {
                    skip_down: true,
                    need: 2,
                    ..
                })
            ),
            "{plan:?}"
        );
    });
    // Two down: no majority, refused.
    f.down(set[2]);
    let name = |i: u16| topo.server(i).expect("server").name.clone();
    with_plan(&mut f, &["SET", "k", "v"], |_, plan| {
        assert_eq!(
            refusal_text(&plan),
            format!(
                "TRYAGAIN keyway: servers '{}', '{}' holding replicas of these keys are down; write = quorum needs 2 of 3 replicas, so nothing was written; writes to these keys resume when a majority is up",
                name(set[0]),
                name(set[2])
            )
        );
    });

    // write = primary: the primary down is refused (a write never moves to another replica);
    // a secondary down changes nothing.
    let mut f = Fixture::new(3, "replicas = 2\nwrite = \"primary\"");
    let topo = f.topo();
    let set = topo.replica_set(slot(&topo, "k")).to_vec();
    f.down(set[1]);
    with_plan(&mut f, &["SET", "k", "v"], |_, plan| {
        assert_eq!(plan_route(&plan), Some(Route::One(set[0])));
    });
    // Both down: the guard.
    f.down(set[0]);
    with_plan(&mut f, &["SET", "k", "v"], |_, plan| {
        assert_eq!(plan_route(&plan), Some(Route::One(set[0])));
    });
    let mut f = Fixture::new(3, "replicas = 2\nwrite = \"primary\"");
    f.down(set[0]);
    with_plan(&mut f, &["SET", "k", "v"], |_, plan| {
        assert_eq!(
            refusal_text(&plan),
            format!(
                "TRYAGAIN keyway: server '{}', the primary of these keys, is down; write = primary writes there only, so nothing was written; writes to these keys resume when it is back",
                name(set[0])
            )
        );
    });
    // Reads of that key go to the replica that is up.
    with_plan(&mut f, &["GET", "k"], |_, plan| {
        assert_eq!(plan_route(&plan), Some(Route::One(set[1])));
    });
}

/// The route of a routed plan.
fn plan_route<'t>(plan: &Plan<'_, 't>) -> Option<Route<'t>> {
    match plan {
        Plan::Route(route) => Some(*route),
        _ => None,
    }
}

#[test]
fn keyless_scripts_that_may_write_are_refused_where_writes_reach_every_replica() {
    let keyless: [&[&str]; 3] = [
        &["EVAL", "return redis.call('SET', 'k', 'v')", "0"],
        &["EVALSHA", "0123456789012345678901234567890123456789", "0"],
        &["FCALL", "f", "0"],
    ];
    let read_only: [&[&str]; 2] = [&["EVAL_RO", "return 1", "0"], &["FCALL_RO", "f", "0"]];
    for (pool, refused) in [
        ("", false),
        ("replicas = 2\nwrite = \"primary\"", false),
        ("replicas = 2\nwrite = \"all\"", true),
        ("replicas = 3\nwrite = \"quorum\"", true),
        ("replicas = 2\nwrite = \"two_phase\"", true),
    ] {
        let mut f = Fixture::new(3, pool);
        for args in keyless {
            with_plan(&mut f, args, |_, plan| {
                if refused {
                    assert_eq!(refusal(&plan), Ok(ErrorKind::Refused), "{pool}: {args:?}");
                } else {
                    assert!(
                        matches!(plan, Plan::Route(Route::One(_))),
                        "{pool}: {plan:?}"
                    );
                }
            });
        }
        for args in read_only {
            with_plan(&mut f, args, |_, plan| {
                assert!(
                    matches!(plan, Plan::Route(Route::One(_))),
                    "{pool}: {args:?} {plan:?}"
                );
            });
        }
    }
}

#[test]
fn blocking_commands_go_to_the_primary_and_pops_replay_on_fan_out() {
    for (pool, replays) in [
        ("", false),
        ("replicas = 2\nwrite = \"primary\"", false),
        ("replicas = 2\nwrite = \"all\"", true),
        ("replicas = 2\nwrite = \"quorum\"", true),
    ] {
        let mut f = Fixture::new(3, pool);
        let cases: [(&[&str], bool); 4] = [
            (&["BLPOP", "{q}a", "{q}b", "0"], replays),
            (&["BZPOPMIN", "{q}z", "1.5"], replays),
            // Reads replay nothing.
            (&["XREAD", "BLOCK", "0", "STREAMS", "{q}s", "$"], false),
            (
                &[
                    "XREADGROUP",
                    "GROUP",
                    "g",
                    "c",
                    "BLOCK",
                    "0",
                    "STREAMS",
                    "{q}s",
                    ">",
                ],
                replays,
            ),
        ];
        for (args, replays) in cases {
            with_plan(&mut f, args, |topo, plan| {
                let set = topo.replica_set(slot(topo, "{q}"));
                let Plan::Block { server, replay } = plan else {
                    panic!("{args:?}: {plan:?}")
                };
                assert_eq!(server, set[0], "{pool} {args:?}");
                let want: &[u16] = if replays { &set[1..] } else { &[] };
                assert_eq!(replay, want, "{pool} {args:?}");
            });
        }
        // Without BLOCK, XREAD is an ordinary read.
        with_plan(&mut f, &["XREAD", "STREAMS", "{q}s", "0"], |_, plan| {
            assert!(matches!(plan, Plan::Route(_)), "{plan:?}");
        });
    }
}

#[test]
fn multi_key_commands_split_per_server_and_stay_whole_on_one() {
    let mut f = Fixture::new(3, "");
    let keys: Vec<String> = (0..30).map(|i| format!("key:{i}")).collect();
    let mut args = vec!["MGET"];
    args.extend(keys.iter().map(String::as_str));
    with_plan(&mut f, &args, |topo, plan| {
        let Plan::Split(split) = plan else {
            panic!("{plan:?}")
        };
        assert_eq!(split.how, Merge::Array);
        assert_eq!(split.runs.len(), keys.len());
        let mut primaries: Vec<u16> = keys
            .iter()
            .map(|k| topo.table.primary(slot(topo, k)))
            .collect();
        primaries.sort_unstable();
        primaries.dedup();
        assert_eq!(split.parts.len(), primaries.len());
        // Each key's part goes to its slot's primary.
        for (k, &(part, run)) in keys.iter().zip(&split.runs) {
            let p = &split.parts[part as usize];
            assert_eq!(p.route, Route::One(topo.table.primary(slot(topo, k))));
            assert!(run.is_some(), "runs are spans of the client's frame");
        }
        assert_eq!(
            split.parts.iter().map(|p| p.keys).sum::<usize>(),
            keys.len()
        );
    });
    // Hash-tagged keys: one server, the frame as it is.
    with_plan(&mut f, &["MSET", "{u}a", "1", "{u}b", "2"], |topo, plan| {
        let primary = topo.table.primary(slot(topo, "{u}"));
        assert!(
            matches!(plan, Plan::Route(Route::One(s)) if s == primary),
            "{plan:?}"
        );
    });
    // Replica sets under write = all: each part fans out.
    let mut f = Fixture::new(3, "replicas = 2\nwrite = \"all\"");
    with_plan(
        &mut f,
        &["DEL", "a", "b", "c", "d", "e"],
        |_, plan| match plan {
            Plan::Split(split) => {
                assert_eq!(split.how, Merge::SumInt);
                assert!(split
                    .parts
                    .iter()
                    .all(|p| matches!(p.route, Route::FanOut { need: 2, .. })));
            }
            Plan::Route(Route::FanOut { .. }) => {}
            other => panic!("{other:?}"),
        },
    );
}

#[test]
fn whole_pool_commands_scan_and_randomkey() {
    let mut f = Fixture::new(3, "");
    with_plan(&mut f, &["DBSIZE"], |_, plan| {
        assert!(matches!(plan, Plan::All(Merge::SumInt)), "{plan:?}");
    });
    with_plan(&mut f, &["KEYS", "*"], |_, plan| {
        assert!(matches!(plan, Plan::All(Merge::Concat)), "{plan:?}");
    });
    for _ in 0..20 {
        with_plan(&mut f, &["RANDOMKEY"], |_, plan| {
            assert!(
                matches!(plan, Plan::RandomKey { start } if start < 3),
                "{plan:?}"
            );
        });
    }
    with_plan(&mut f, &["SCAN", "0"], |_, plan| {
        assert!(
            matches!(
                plan,
                Plan::Scan {
                    server: 0,
                    cursor: 0
                }
            ),
            "{plan:?}"
        );
    });
    let cursor = ((5u64 << SCAN_SHIFT) | 2).to_string();
    with_plan(&mut f, &["SCAN", &cursor, "COUNT", "10"], |_, plan| {
        assert!(
            matches!(
                plan,
                Plan::Scan {
                    server: 2,
                    cursor: 5
                }
            ),
            "{plan:?}"
        );
    });
    with_plan(&mut f, &["SCAN", "3"], |_, plan| {
        assert_eq!(refusal(&plan), Ok(ErrorKind::Syntax));
    });
}

#[test]
fn two_phase_writes_become_transactions_over_the_replica_sets() {
    let mut f = Fixture::new(3, "replicas = 2\nwrite = \"two_phase\"");
    let topo = f.topo();
    let set = topo.replica_set(slot(&topo, "k")).to_vec();
    with_plan(&mut f, &["INCR", "k"], |_, plan| {
        let Plan::TwoPhase(tx) = plan else {
            panic!("{plan:?}")
        };
        assert_eq!(tx.primary, set[0]);
        assert_eq!(
            tx.parts.keys().copied().collect::<Vec<_>>().len(),
            set.len()
        );
        assert_eq!(tx.reply, txn::ReplyShape::Integer);
        let step = &tx.parts[&set[0]].steps[0];
        assert_eq!(step.readback, vec![Bytes::from("GET"), Bytes::from("k")]);
        assert!(step.counts);
    });
    with_plan(
        &mut f,
        &["MSET", "a", "1", "b", "2", "c", "3"],
        |_, plan| {
            let Plan::TwoPhase(tx) = plan else {
                panic!("{plan:?}")
            };
            assert_eq!(tx.reply, txn::ReplyShape::Ok);
            // Each key staged on each replica of its slot: 3 keys x 2 replicas.
            let steps: usize = tx.parts.values().map(|p| p.steps.len()).sum();
            assert_eq!(steps, 6);
        },
    );
    // A recovering primary replica (being resynced) does not make the reply: the other does.
    if let Some(s) = topo.server(set[0]) {
        s.pool.health().set_recovering(true);
    }
    with_plan(&mut f, &["INCR", "k"], |_, plan| {
        let Plan::TwoPhase(tx) = plan else {
            panic!("{plan:?}")
        };
        assert_eq!(tx.primary, set[1]);
        assert!(tx.parts[&set[1]].steps[0].counts);
        assert!(!tx.parts[&set[0]].steps[0].counts);
    });
    if let Some(s) = topo.server(set[0]) {
        s.pool.health().set_recovering(false);
    }
    // Reads are not transactions: they check their keys' locks first.
    with_plan(&mut f, &["GET", "k"], |_, plan| {
        assert!(
            matches!(plan, Plan::Guarded(Route::Read { .. })),
            "{plan:?}"
        );
    });
    with_plan(&mut f, &["SPOP", "k"], |_, plan| {
        assert_eq!(refusal(&plan), Ok(ErrorKind::Refused));
    });
    // Keyway's own keys are refused before anything is staged.
    for args in [
        &["MSET", "a", "1", "__keyway:lock:a", "x"][..],
        &["SET", "__keyway:txs", "x"],
    ] {
        with_plan(&mut f, args, |_, plan| {
            assert_eq!(refusal(&plan), Ok(ErrorKind::Refused), "{args:?}");
        });
    }
}

#[test]
fn a_get_on_a_moved_slot_warms_from_its_previous_server_during_warmup() {
    let mut f = Fixture::new(2, "warmup = \"1h\"");
    let before = f.topo();
    // A third server takes some slots; a key of one of them reads through its old server.
    let mut toml = "warmup = \"1h\"\ntimeout = \"20ms\"\n".to_string();
    for i in 0..3 {
        toml.push_str(&server_toml(i));
    }
    let config: PoolConfig = toml::from_str(&toml).expect("pool config");
    f.runtime.block_on(f.handle.swap(&config)).expect("swap");
    let after = f.topo();
    let key = (0..10_000)
        .map(|i| format!("k{i}"))
        .find(|k| {
            let s = slot(&after, k);
            before.table.primary(s) != after.table.primary(s)
        })
        .expect("a key whose slot moved");
    // A fresh topology's servers are up until health says otherwise.
    with_plan(&mut f, &["GET", &key], |topo, plan| {
        let s = slot(topo, &key);
        let (new, old) = (topo.table.primary(s), before.table.primary(s));
        assert!(
            matches!(plan, Plan::WarmGet { new: n, old: o } if n == new && o == old),
            "{plan:?}"
        );
    });
    // Writes and other reads are routed as usual.
    with_plan(&mut f, &["SET", &key, "v"], |_, plan| {
        assert!(matches!(plan, Plan::Route(Route::One(_))), "{plan:?}");
    });
    with_plan(&mut f, &["STRLEN", &key], |_, plan| {
        assert!(matches!(plan, Plan::Route(Route::One(_))), "{plan:?}");
    });
}
