//! The read policy: which member of a slot's replica set serves a read. Pure: the caller says
//! which servers are up and how busy each is.

use serde::{Deserialize, Serialize};

/// `pool.read`: which healthy replica of a slot serves a read.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ReadPolicy {
    /// The first healthy replica in rendezvous order (the primary while it is up).
    #[default]
    Primary,
    /// Each client turns through the healthy replicas.
    RoundRobin,
    /// A healthy replica picked at random.
    Random,
    /// Power of two choices on requests in flight: two random healthy replicas, the less busy.
    LeastOutstanding,
}

/// The replica a read goes to, by `policy`, among the members of `set` that `is_up` says are
/// healthy; the first member when none is (see `Topology::placement`'s guard). `rr` is the
/// client's round-robin position, advanced by [`ReadPolicy::RoundRobin`]; `load` tells
/// [`ReadPolicy::LeastOutstanding`] how many requests a server has in flight.
pub fn choose_read(
    policy: ReadPolicy,
    set: &[u16],
    is_up: impl Fn(u16) -> bool,
    load: impl Fn(u16) -> i64,
    rr: &mut usize,
) -> u16 {
    let first = set.first().copied().unwrap_or(0);
    let up = set.iter().filter(|&&i| is_up(i)).count();
    if up == 0 {
        return first;
    }
    let nth_up = |n: usize| {
        set.iter()
            .copied()
            .filter(|&i| is_up(i))
            .nth(n)
            .unwrap_or(first)
    };
    match policy {
        ReadPolicy::Primary => nth_up(0),
        ReadPolicy::RoundRobin => {
            *rr = rr.wrapping_add(1);
            nth_up(*rr % up)
        }
        ReadPolicy::Random => nth_up(rand::random_range(0..up)),
        ReadPolicy::LeastOutstanding => {
            // Power of two choices: two distinct random healthy replicas, the less busy.
            let a = rand::random_range(0..up);
            let b = if up > 1 {
                (a + 1 + rand::random_range(0..up - 1)) % up
            } else {
                a
            };
            let (a, b) = (nth_up(a), nth_up(b));
            if load(b) < load(a) {
                b
            } else {
                a
            }
        }
    }
}

/// Where a read that failed on a connection error is retried (reads are idempotent): the next
/// healthy member of `set` after `chosen`, in ring order; `None` when no other is up.
pub fn alternate(set: &[u16], chosen: u16, is_up: impl Fn(u16) -> bool) -> Option<u16> {
    set.iter()
        .cycle()
        .skip_while(|&&i| i != chosen)
        .skip(1)
        .take(set.len().saturating_sub(1))
        .copied()
        .find(|&i| is_up(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET: [u16; 3] = [4, 7, 9];

    #[test]
    fn primary_reads_the_first_healthy_member() {
        let mut rr = 0;
        let all = |_| true;
        assert_eq!(
            choose_read(ReadPolicy::Primary, &SET, all, |_| 0, &mut rr),
            4
        );
        let no4 = |i| i != 4;
        assert_eq!(
            choose_read(ReadPolicy::Primary, &SET, no4, |_| 0, &mut rr),
            7
        );
    }

    #[test]
    fn round_robin_turns_through_healthy_members_only() {
        let mut rr = 0;
        let no7 = |i| i != 7;
        let picks: Vec<u16> = (0..4)
            .map(|_| choose_read(ReadPolicy::RoundRobin, &SET, no7, |_| 0, &mut rr))
            .collect();
        assert_eq!(picks, [9, 4, 9, 4]);
    }

    #[test]
    fn random_and_least_outstanding_stay_on_healthy_members() {
        let mut rr = 0;
        let no9 = |i| i != 9;
        for policy in [ReadPolicy::Random, ReadPolicy::LeastOutstanding] {
            for _ in 0..100 {
                let pick = choose_read(policy, &SET, no9, |_| 0, &mut rr);
                assert!(pick == 4 || pick == 7, "{policy:?} picked {pick}");
            }
        }
    }

    #[test]
    fn least_outstanding_prefers_the_idle_member_of_two() {
        let mut rr = 0;
        let two = [1u16, 2];
        let load = |i| if i == 1 { 100 } else { 0 };
        for _ in 0..50 {
            assert_eq!(
                choose_read(ReadPolicy::LeastOutstanding, &two, |_| true, load, &mut rr),
                2
            );
        }
    }

    #[test]
    fn with_nothing_up_the_first_member_is_tried() {
        let mut rr = 0;
        for policy in [
            ReadPolicy::Primary,
            ReadPolicy::RoundRobin,
            ReadPolicy::Random,
            ReadPolicy::LeastOutstanding,
        ] {
            assert_eq!(choose_read(policy, &SET, |_| false, |_| 0, &mut rr), 4);
        }
    }

    #[test]
    fn the_alternate_is_the_next_healthy_member_in_ring_order() {
        assert_eq!(alternate(&SET, 9, |_| true), Some(4));
        assert_eq!(alternate(&SET, 4, |i| i != 7), Some(9));
        assert_eq!(alternate(&SET, 4, |i| i == 4), None);
        assert_eq!(alternate(&[4], 4, |_| true), None);
    }
}
