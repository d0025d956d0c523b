//! Real job frameworks and pub/sub clients, end to end through Keyway over three redis-servers,
//! run as their users run them: BullMQ (a producer, two worker processes, QueueEvents), RQ
//! (`rq worker --burst`), Celery (a prefork worker, the Redis broker and result backend,
//! `inspect`, events), and redis-py, ioredis and node-redis subscribers on one Keyway receiving
//! from publishers on another. The framework sessions live in `tests/frameworks/`, check their
//! own results and print `ok` last; this file starts the servers and Keyway, runs them, and
//! checks what the servers hold afterwards (every job exactly once, results stored).
//!
//! `scripts/ensure-deps.sh` installs the pinned versions (RQ 3.0.0, Celery 5.7.0 and kombu
//! 5.7.0 with pip; BullMQ 6.7.6, ioredis 5.11.1 and node-redis 5.12.4 from
//! `tests/frameworks/package-lock.json` with `npm ci`); a test whose interpreter or package is
//! missing prints `skipped` and passes. How to configure each framework for Keyway:
//! docs/frameworks/.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed assumption is a failed test"
)]

mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

fn frameworks_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/frameworks")
}

/// Why a test cannot run here (its first missing requirement), or `None` when it can.
/// Requirements: `py:MODULE` (importable by python3), `cli:PROGRAM`, `npm:PACKAGE` (in
/// tests/frameworks/node_modules, with node).
fn missing(needs: &[&str]) -> Option<String> {
    let works = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    needs.iter().find_map(|need| {
        let (kind, name) = need.split_once(':').unwrap();
        let ok = match kind {
            "py" => works("python3", &["-c", &format!("import {name}")]),
            "cli" => works(name, &["--version"]),
            "npm" => {
                works("node", &["--version"])
                    && frameworks_dir().join("node_modules").join(name).is_dir()
            }
            _ => panic!("unknown requirement {need}"),
        };
        (!ok).then(|| format!("{need} is missing (scripts/ensure-deps.sh installs it)"))
    })
}

fn skipped(test: &str, needs: &[&str]) -> bool {
    match missing(needs) {
        Some(why) => {
            eprintln!("{test}: skipped: {why}");
            true
        }
        None => false,
    }
}

/// A framework process started in tests/frameworks, its output in files.
struct Run {
    what: String,
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl Run {
    fn start(program: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(frameworks_dir())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        Run {
            what: format!("{program} {}", args.join(" ")),
            child,
            dir,
        }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    fn describe(&self) -> String {
        let tail = |s: String| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        format!(
            "{}\nstdout:\n{}\nstderr:\n{}",
            self.what,
            tail(self.stdout()),
            tail(self.stderr())
        )
    }

    /// Waits up to `limit` for the process to exit; fails the test unless it exited 0 having
    /// printed `ok` last. Returns its stdout.
    fn finish(mut self, limit: Duration) -> String {
        let mut status = None;
        let exited = wait_until(limit, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        assert!(exited, "ran for more than {limit:?}: {}", self.describe());
        let out = self.stdout();
        assert!(
            status.is_some_and(|s| s.success()) && out.trim_end().ends_with("ok"),
            "failed ({status:?}): {}",
            self.describe()
        );
        eprintln!("{}: {}", self.what, out.trim_end().replace('\n', "; "));
        out
    }

    /// Asks the process to stop (SIGTERM, as a deployment does) and waits up to `limit`.
    fn terminate(mut self, limit: Duration) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let stopped = wait_until(limit, || self.child.try_wait().unwrap().is_some());
        if !stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        assert!(stopped, "did not stop on SIGTERM: {}", self.describe());
    }
}

/// A test that fails midway does not leave its framework processes running.
impl Drop for Run {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn run(program: &str, args: &[&str], env: &[(&str, &str)], limit: Duration) -> String {
    Run::start(program, args, env).finish(limit)
}

fn three_and_proxy() -> (Vec<RedisServer>, Proxy) {
    let servers = servers(3);
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let proxy = Proxy::start(&refs);
    (servers, proxy)
}

/// Which servers hold keys matching `pattern`.
fn holders(servers: &[RedisServer], pattern: &str) -> Vec<usize> {
    (0..servers.len())
        .filter(|&i| {
            let found: Vec<String> = redis::cmd("SCAN")
                .arg(0)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(100_000)
                .query::<(u64, Vec<String>)>(&mut servers[i].client())
                .unwrap()
                .1;
            !found.is_empty()
        })
        .collect()
}

const BULLMQ_JOBS: usize = 10_000;

/// BullMQ with the queue prefix `{bull}`: 10,000 jobs added with addBulk (100 of them delayed
/// by a second, 200 failing their first attempt with `attempts: 2`), two worker processes
/// (concurrency 16 each), QueueEvents following the events stream. Every job completes exactly
/// once (the ids the workers completed, together, are each job once) with its result stored;
/// a queue without a hash tag gets Keyway's CROSSSLOT error. Then BullMQ's other features.
#[test]
fn bullmq_ten_thousand_jobs_two_workers() {
    if skipped("bullmq", &["npm:bullmq"]) {
        return;
    }
    let started = Instant::now();
    let (servers, proxy) = three_and_proxy();
    let port = proxy.addr.port().to_string();
    let out = tempfile::tempdir().unwrap();
    let files: Vec<String> = ["w1", "w2"]
        .iter()
        .map(|w| out.path().join(w).to_string_lossy().into_owned())
        .collect();
    let total = BULLMQ_JOBS.to_string();
    let workers: Vec<Run> = ["w1", "w2"]
        .iter()
        .zip(&files)
        .map(|(w, f)| Run::start("node", &["bullmq.mjs", &port, "worker", w, f, &total], &[]))
        .collect();
    run(
        "node",
        &["bullmq.mjs", &port, "produce", &total],
        &[],
        Duration::from_secs(170),
    );
    for w in workers {
        w.finish(Duration::from_secs(60));
    }
    // Exactly once: the two workers' completed ids are every job, none twice.
    let mut seen = HashSet::new();
    let mut per_worker = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let ids: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        per_worker.push(ids.len());
        for id in ids {
            assert!(seen.insert(id.to_string()), "{id} completed twice");
        }
    }
    assert_eq!(seen.len(), BULLMQ_JOBS, "jobs completed: {per_worker:?}");
    for i in 0..BULLMQ_JOBS {
        assert!(
            seen.contains(&format!("job-{i}")),
            "job-{i} never completed"
        );
    }
    assert!(
        per_worker.iter().all(|&n| n > 0),
        "one worker did everything: {per_worker:?}"
    );
    // The results as stored, read back through Keyway: each job's returnvalue.
    let mut con = proxy.client();
    let mut pipe = redis::pipe();
    for i in 0..BULLMQ_JOBS {
        pipe.hget(format!("{{bull}}:jobs:job-{i}"), "returnvalue");
    }
    let stored: Vec<Option<String>> = pipe.query(&mut con).unwrap();
    let sum: u64 = stored
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let v = v
                .as_deref()
                .unwrap_or_else(|| panic!("job-{i} has no result"));
            assert_eq!(v, (i * 3 + 1).to_string(), "job-{i}'s result");
            v.parse::<u64>().unwrap()
        })
        .sum();
    let want: u64 = (0..BULLMQ_JOBS as u64).map(|i| i * 3 + 1).sum();
    assert_eq!(sum, want);
    // The whole queue lives on the server of the `{bull}` slot.
    assert_eq!(holders(&servers, "{bull}:*").len(), 1);
    // Without a hash tag BullMQ's scripts name keys of several slots: a clear error.
    let crossslot = run(
        "node",
        &["bullmq.mjs", &port, "crossslot"],
        &[],
        Duration::from_secs(60),
    );
    assert!(crossslot.contains("CROSSSLOT"), "{crossslot}");
    // Flows, job schedulers, the rate limiter, pause/resume, getWorkers, a queue tagged by its
    // name; a flow over two tags is refused.
    let features = run(
        "node",
        &["bullmq.mjs", &port, "features"],
        &[],
        Duration::from_secs(90),
    );
    assert!(features.contains("EXECABORT"), "{features}");
    eprintln!(
        "bullmq: {BULLMQ_JOBS} jobs completed once each (workers {per_worker:?}), 0 lost, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Runs `rq worker --burst` with `extra` options until it exits. RQ's worker stops its pub/sub
/// thread after unsubscribing; when that thread already read the reply it sits in a 60-second
/// read while the worker waits for its lock (RQ 3.0.0; as often on a redis-server directly).
/// Once the worker said it is unsubscribing its work is done: it gets 5 s, then is stopped.
fn rq_worker(extra: &[&str], url: &str, env: &[(&str, &str)]) {
    let mut args = vec!["worker", "--burst", "--url", url];
    args.extend_from_slice(extra);
    args.push("default");
    let mut worker = Run::start("rq", &args, env);
    let mut quitting: Option<Instant> = None;
    let mut status = None;
    let exited = wait_until(Duration::from_secs(170), || {
        status = worker.child.try_wait().unwrap();
        if status.is_some() {
            return true;
        }
        let log = worker.stderr() + &worker.stdout();
        if log.contains("unsubscribing from channel") {
            let since = *quitting.get_or_insert_with(Instant::now);
            return since.elapsed() > Duration::from_secs(5);
        }
        false
    });
    assert!(exited, "rq worker ran for 170 s: {}", worker.describe());
    if status.is_none() {
        eprintln!(
            "rq worker: waited on its pub/sub thread after its last job (RQ's own race); stopped it"
        );
        let _ = worker.child.kill();
        let _ = worker.child.wait();
    } else {
        assert!(
            status.is_some_and(|s| s.success()),
            "rq worker failed: {}",
            worker.describe()
        );
    }
    let log = worker.stderr() + &worker.stdout();
    assert!(
        log.contains("done, quitting") || log.contains("jobs, quitting"),
        "{}",
        worker.describe()
    );
}

const RQ_JOBS: usize = 2_000;

/// RQ with `RQ_KEY_PREFIX={rq}`: 2,000 jobs enqueued on one queue, `rq worker --burst` runs
/// them all (100 by RQ's default worker, a forked work horse per job, the rest by its
/// SimpleWorker), every result read back; without the prefix RQ's enqueue transaction gets
/// CROSSSLOT.
#[test]
fn rq_two_thousand_jobs_burst_worker() {
    if skipped("rq", &["py:rq", "cli:rq"]) {
        return;
    }
    let started = Instant::now();
    let (servers, proxy) = three_and_proxy();
    let port = proxy.addr.port().to_string();
    let url = proxy.url();
    let tag = [("RQ_KEY_PREFIX", "{rq}")];
    let n = RQ_JOBS.to_string();
    run(
        "python3",
        &["rq_jobs.py", &port, "enqueue", &n],
        &tag,
        Duration::from_secs(60),
    );
    let worker_started = Instant::now();
    // RQ's default worker forks a work horse (a new process and connection) per job: 100 jobs
    // so, then the SimpleWorker (jobs in the worker's process) runs the other 1,900, which
    // keeps the test's time to what Keyway does rather than to 2,000 forks.
    rq_worker(&["--max-jobs", "100"], &url, &tag);
    rq_worker(&["--worker-class", "rq.worker.SimpleWorker"], &url, &tag);
    let worker_took = worker_started.elapsed();
    run(
        "python3",
        &["rq_jobs.py", &port, "check", &n],
        &tag,
        Duration::from_secs(60),
    );
    // Every key RQ made is in the `{rq}` slot, on one server.
    assert_eq!(holders(&servers, "{rq}:*").len(), 1);
    let crossslot = run(
        "python3",
        &["rq_jobs.py", &port, "crossslot"],
        &[],
        Duration::from_secs(60),
    );
    assert!(crossslot.contains("same slot"), "{crossslot}");
    eprintln!(
        "rq: {RQ_JOBS} jobs finished, 0 lost, worker {:.1} s, test {:.1} s",
        worker_took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

const CELERY_TASKS: usize = 2_000;

/// Celery with the broker's keys under `{celery}` (kombu's `global_keyprefix`) and the result
/// backend's keys as they are: a prefork worker (concurrency 2, events on) runs 2,000 tasks,
/// every result comes back (the backend's pub/sub), every task-succeeded event arrives, and
/// `inspect ping`/`stats` are answered; without the prefix the broker gets CROSSSLOT. Then a
/// group and a chord with the results under `{celery-results}`.
#[test]
fn celery_two_thousand_tasks() {
    if skipped(
        "celery",
        &["py:celery", "py:kombu.transport.redis", "cli:celery"],
    ) {
        return;
    }
    let started = Instant::now();
    let (servers, proxy) = three_and_proxy();
    let port = proxy.addr.port().to_string();
    let env = [("KEYWAY_PORT", port.as_str())];
    let worker = Run::start(
        "celery",
        &[
            "-A",
            "celery_app",
            "worker",
            "--concurrency",
            "2",
            "-E",
            "--loglevel",
            "WARNING",
            "-n",
            "keyway-test@%h",
        ],
        &env,
    );
    let n = CELERY_TASKS.to_string();
    let client = Run::start("python3", &["celery_client.py", &n], &env);
    let out = client.finish(Duration::from_secs(170));
    assert!(out.contains("inspect ping"), "{out}");
    worker.terminate(Duration::from_secs(60));
    // The broker's keys on the server of `{celery}`, results wherever their keys hash.
    assert_eq!(holders(&servers, "{celery}*").len(), 1);
    assert_eq!(holders(&servers, "celery-task-meta-*").len(), 3);
    let crossslot = run(
        "python3",
        &["celery_client.py", "crossslot"],
        &[("KEYWAY_PORT", port.as_str()), ("CELERY_KEYPREFIX", "")],
        Duration::from_secs(60),
    );
    assert!(crossslot.contains("same slot"), "{crossslot}");
    // Canvas: a group, and a chord, whose counters in several result keys need the results
    // under one tag too.
    let results_tagged = [
        ("KEYWAY_PORT", port.as_str()),
        ("CELERY_RESULT_KEYPREFIX", "{celery-results}"),
    ];
    let worker = Run::start(
        "celery",
        &[
            "-A",
            "celery_app",
            "worker",
            "--concurrency",
            "2",
            "--loglevel",
            "WARNING",
        ],
        &results_tagged,
    );
    run(
        "python3",
        &["celery_client.py", "canvas"],
        &results_tagged,
        Duration::from_secs(90),
    );
    worker.terminate(Duration::from_secs(60));
    assert_eq!(holders(&servers, "{celery-results}*").len(), 1);
    eprintln!(
        "celery: {CELERY_TASKS} tasks, results all returned, 0 lost, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Subscribers on one Keyway, publishers on another over the same three servers: redis-py
/// PubSub (listen, get_message, psubscribe, run_in_thread; RESP2 and RESP3), ioredis and
/// node-redis (RESP2 and RESP3). One channel per server; each channel's messages arrive whole
/// and in order.
#[test]
fn pubsub_clients_across_two_keyways() {
    let started = Instant::now();
    let servers = servers(3);
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let subscribers = Proxy::start(&refs);
    let publishers = Proxy::start(&refs);
    let channels: Vec<String> = (0..3).map(|i| key_on(&subscribers, i, "fw-ch")).collect();
    let mut args = vec![
        subscribers.addr.port().to_string(),
        publishers.addr.port().to_string(),
    ];
    args.extend(channels.iter().cloned());
    if !skipped("redis-py pubsub", &["py:redis"]) {
        let mut a = vec!["pubsub_py.py"];
        a.extend(args.iter().map(String::as_str));
        run("python3", &a, &[], Duration::from_secs(90));
    }
    if !skipped("node pubsub", &["npm:ioredis", "npm:redis"]) {
        let mut a = vec!["pubsub_node.mjs"];
        a.extend(args.iter().map(String::as_str));
        run("node", &a, &[], Duration::from_secs(90));
    }
    eprintln!("pubsub clients: {:.1} s", started.elapsed().as_secs_f64());
}
