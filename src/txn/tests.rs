//! Unit tests of the retry schedule, the retry loop (in virtual time) and the errors' replies.

use std::cell::RefCell;

use tokio::time::Instant;

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn options(retries: u32) -> TxOptions {
    TxOptions {
        lock_timeout: ms(1000),
        retries,
    }
}

/// A lock held by a live transaction (its intent is 5 ms old).
fn live_lock() -> Lock {
    Lock {
        holder: "live".into(),
        age_ms: 5,
        server: 0,
        name: "s0".into(),
        alive: true,
        key: None,
    }
}

/// The base of the wait after attempt `attempt`: 4 ms, doubling, at most 512 ms.
fn base(attempt: u32) -> Duration {
    ms(4 << (attempt.min(8) - 1))
}

#[test]
fn the_retry_delay_doubles_from_4ms_to_512ms_plus_a_jitter_of_up_to_as_much_again() {
    let want = [4, 8, 16, 32, 64, 128, 256, 512, 512, 512];
    for (attempt, want) in (1..).zip(want) {
        assert_eq!(
            retry_delay(attempt, 0),
            ms(want),
            "attempt {attempt}, no jitter"
        );
        assert_eq!(
            retry_delay(attempt, want),
            ms(2 * want),
            "attempt {attempt}, top"
        );
        // Past the top the jitter wraps round, never beyond.
        assert_eq!(
            retry_delay(attempt, want + 1),
            ms(want),
            "attempt {attempt}"
        );
    }
    assert_eq!(retry_delay(u32::MAX, 0), ms(512));
    // Every jitter in between is reachable.
    let waits: Vec<Duration> = (0..=4).map(|j| retry_delay(1, j)).collect();
    assert_eq!(waits, [4, 5, 6, 7, 8].map(ms));
}

#[test]
fn the_retry_delay_stays_within_its_bounds_for_any_jitter() {
    for attempt in 1..=20 {
        for jitter in (0..1000).map(|_| rand::random::<u64>()).chain([u64::MAX]) {
            let wait = retry_delay(attempt, jitter);
            assert!(wait >= base(attempt), "attempt {attempt}: {wait:?}");
            assert!(wait <= 2 * base(attempt), "attempt {attempt}: {wait:?}");
        }
    }
}

#[test]
fn a_lock_is_stale_when_its_intent_is_older_than_the_lock_timeout_or_gone() {
    let lock = |age_ms, alive| Lock {
        holder: "h".into(),
        age_ms,
        server: 0,
        name: "s0".into(),
        alive,
        key: None,
    };
    assert!(!lock(0, true).is_stale(ms(1000)));
    assert!(!lock(1000, true).is_stale(ms(1000)));
    assert!(lock(1001, true).is_stale(ms(1000)));
    assert!(
        lock(-1, true).is_stale(ms(1000)),
        "no intent: its holder is gone"
    );
    assert!(
        lock(0, false).is_stale(ms(1000)),
        "its coordinator's lease expired: resolved at once"
    );
}

#[test]
fn errors_answer_tryagain_only_when_nothing_was_written() {
    let conflict = |alive| TxnError::Conflict {
        holder: "7f3a".into(),
        server: "s1".into(),
        alive,
    };
    assert_eq!(
        &ReplyError::from(conflict(true)).to_bytes()[..],
        &b"-TRYAGAIN keyway: keys are locked by two-phase transaction 7f3a on server 's1' (its coordinator is alive); nothing was written, retry\r\n"[..]
    );
    assert_eq!(
        &ReplyError::from(conflict(false)).to_bytes()[..],
        &b"-TRYAGAIN keyway: keys are locked by two-phase transaction 7f3a on server 's1' (its coordinator is gone: recovery is resolving it); nothing was written, retry\r\n"[..]
    );
    let late = CallError::Late {
        server: "s3".into(),
        late_ms: 750,
    };
    assert_eq!(
        &ReplyError::from(TxnError::PrepareFailed(late)).to_bytes()[..],
        &b"-TRYAGAIN keyway: two-phase prepare failed, nothing was written (server 's3' ran the prepare 750 ms after its deadline, and refused it)\r\n"[..]
    );
    let down = TxnError::ParticipantDown {
        server: "s1".into(),
    };
    assert_eq!(
        &ReplyError::from(down.clone()).to_bytes()[..],
        &b"-TRYAGAIN keyway: server 's1' holding a replica of these keys is down; write = two_phase needs every replica, so nothing was written; writes to these keys resume when it is back\r\n"[..]
    );
    let unanswered = CallError::ConnectionEnded {
        server: "s2".into(),
    };
    assert_eq!(
        &ReplyError::from(TxnError::PrepareFailed(unanswered.clone())).to_bytes()[..],
        &b"-TRYAGAIN keyway: two-phase prepare failed, nothing was written (server 's2': connection ended)\r\n"[..]
    );
    assert_eq!(
        &ReplyError::from(TxnError::CommitUnknown(unanswered.clone())).to_bytes()[..],
        &b"-ERR keyway: two-phase commit outcome unknown (server 's2': connection ended); recovery will finish it on every replica\r\n"[..]
    );
    assert_eq!(
        &ReplyError::from(TxnError::OnePhase(unanswered)).to_bytes()[..],
        b"-ERR keyway: server 's2': connection ended\r\n"
    );
    assert_eq!(TxnError::AbortedByRecovery.kind().prefix(), "TRYAGAIN");
    assert_eq!(TxnError::IntentVanished.kind().prefix(), "ERR");
    assert_eq!(conflict(true).outcome(), "conflict");
    assert_eq!(down.outcome(), "unavailable");
    assert_eq!(TxnError::IntentVanished.outcome(), "failed");
}

/// The loop's run against attempts that answer `outcomes` in turn (the last one again once
/// they run out): when each attempt began, how many locks it resolved, and its result.
async fn run_loop(
    retries: u32,
    outcomes: Vec<Attempt>,
) -> (Vec<Instant>, usize, Result<Bytes, TxnError>) {
    let began = RefCell::new(Vec::new());
    let resolved = RefCell::new(0);
    let outcomes = RefCell::new(outcomes);
    let result = retrying(
        &options(retries),
        || {
            began.borrow_mut().push(Instant::now());
            let mut outcomes = outcomes.borrow_mut();
            let next = match outcomes.as_slice() {
                [Attempt::Conflict(lock)] => Attempt::Conflict(lock.clone()),
                [] => panic!("the loop asked again after an attempt that ends it"),
                _ => outcomes.remove(0),
            };
            async move { next }
        },
        |_lock| {
            *resolved.borrow_mut() += 1;
            async {}
        },
    )
    .await;
    (began.into_inner(), resolved.into_inner(), result)
}

fn gaps(began: &[Instant]) -> Vec<Duration> {
    began.windows(2).map(|w| w[1] - w[0]).collect()
}

/// Virtual time: live locks every time: `retries` retries, each after a jittered wait within
/// its bounds, then TRYAGAIN; a live lock is never resolved.
#[tokio::test(start_paused = true)]
async fn a_conflict_is_retried_retries_times_with_jittered_backoff_then_answers_tryagain() {
    for _ in 0..20 {
        let (began, resolved, result) = run_loop(3, vec![Attempt::Conflict(live_lock())]).await;
        assert_eq!(began.len(), 4, "the attempt and 3 retries");
        for (attempt, gap) in (1..).zip(gaps(&began)) {
            assert!(
                gap >= base(attempt),
                "wait after attempt {attempt}: {gap:?}"
            );
            assert!(
                gap <= 2 * base(attempt),
                "wait after attempt {attempt}: {gap:?}"
            );
        }
        assert_eq!(resolved, 0, "a live lock is waited out, not resolved");
        assert!(
            matches!(result, Err(TxnError::Conflict { .. })),
            "{result:?}"
        );
    }
}

/// Virtual time: a lock whose holder is presumed dead is resolved after every attempt that
/// met it, the last one included.
#[tokio::test(start_paused = true)]
async fn a_stale_lock_is_resolved_after_each_attempt_that_met_it() {
    let stale = Lock {
        holder: "dead".into(),
        age_ms: 5000,
        server: 1,
        name: "s1".into(),
        alive: true,
        key: None,
    };
    let (began, resolved, result) = run_loop(2, vec![Attempt::Conflict(stale)]).await;
    assert_eq!(began.len(), 3);
    assert_eq!(resolved, 3);
    assert!(
        matches!(result, Err(TxnError::Conflict { .. })),
        "{result:?}"
    );
}

/// Virtual time: a conflict then a commit answers the commit, after one wait.
#[tokio::test(start_paused = true)]
async fn a_retry_that_commits_answers_the_commit() {
    let ok = Bytes::from_static(b"+OK\r\n");
    let (began, _, result) = run_loop(
        3,
        vec![Attempt::Conflict(live_lock()), Attempt::Done(ok.clone())],
    )
    .await;
    assert_eq!(began.len(), 2);
    let gap = began[1] - began[0];
    assert!(gap >= ms(4) && gap <= ms(8), "{gap:?}");
    assert_eq!(result.expect("committed"), ok);
}

/// Virtual time: a failed attempt is not retried, and no time passes; nor is a conflict when
/// `retries` is 0.
#[tokio::test(start_paused = true)]
async fn a_failure_or_a_conflict_with_no_retries_left_answers_at_once() {
    let start = Instant::now();
    let (began, _, result) = run_loop(3, vec![Attempt::Failed(TxnError::IntentVanished)]).await;
    assert_eq!(began, [start]);
    assert!(
        matches!(result, Err(TxnError::IntentVanished)),
        "{result:?}"
    );

    let (began, _, result) = run_loop(0, vec![Attempt::Conflict(live_lock())]).await;
    assert_eq!(began, [start]);
    assert_eq!(Instant::now(), start);
    assert!(
        matches!(result, Err(TxnError::Conflict { .. })),
        "{result:?}"
    );
}

#[test]
fn script_calls_are_evalsha_and_turn_back_into_eval() {
    let keys = vec![Bytes::from_static(b"k1"), Bytes::from_static(b"k2")];
    let args = vec![Bytes::from_static(b"a")];
    let sha_frame = eval(scripts::COMMIT, keys.clone(), args.clone());
    let mut all = vec![
        Bytes::from_static(b"EVAL"),
        Bytes::from_static(scripts::COMMIT.as_bytes()),
        Bytes::from_static(b"2"),
    ];
    all.extend(keys);
    all.extend(args);
    let eval_frame = Request::from_args(&all).frame().clone();
    assert!(sha_frame.len() < 200, "{}", sha_frame.len());
    assert_eq!(as_eval(&sha_frame), Some(eval_frame));
    // Every script's SHA1 is distinct; a frame that is no call of them is left alone.
    let shas: std::collections::HashSet<_> = shas().iter().map(|(_, s)| s.clone()).collect();
    assert_eq!(shas.len(), scripts::ALL.len());
    assert_eq!(as_eval(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"), None);
    // The SHA1 of "return 1", as redis-server's SCRIPT LOAD answers it.
    assert_eq!(
        sha1_hex(b"return 1"),
        Bytes::from_static(b"e0e1f9fabfc9d4800c877a703b823ac0578ff8db")
    );
}
