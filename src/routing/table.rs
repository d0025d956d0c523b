//! The slot table: for every slot, the first `depth` servers of its rendezvous ranking.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use super::hrw::{hash_input, score_with};
use super::{RoutingError, Slot, SLOTS};

/// Most servers a table can rank: server indexes are `u16`.
pub const MAX_SERVERS: usize = 1 << 16;

/// For each slot, the first `depth` servers of its ranking (indexes into the `servers` slice
/// given to [`SlotTable::build`]), best first. Built once per topology version; a lookup is an
/// array index, so its cost does not depend on the number of servers.
///
/// Ranking: servers sorted by [`super::score`] for the slot, highest first; equal scores (never
/// seen in practice, but possible in principle) are broken by name, smaller name first. Each
/// server's score depends only on its own name, weight and the slot, so adding or removing a
/// server never reorders the others (minimal movement).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotTable {
    /// Servers per slot: `1 <= depth <= servers`.
    depth: usize,
    /// Number of servers the table was built from.
    servers: usize,
    /// `SLOTS * depth` server indexes; slot `s` owns `ranks[s * depth..(s + 1) * depth]`.
    ranks: Box<[u16]>,
    /// Each slot's primary (`ranks[s * depth]`), apart: the one entry most requests read, in
    /// 32 KiB that stay in cache instead of one line per slot of the whole table.
    primaries: Box<[u16]>,
}

impl SlotTable {
    /// Ranks `servers` (name, weight) for every slot and keeps the first `depth` of each ranking.
    /// `depth` is clamped to `1..=servers.len()` (a slot always has a primary, and a ranking
    /// cannot be longer than the server list).
    ///
    /// Cost: one hash and one logarithm per (server, slot) pair, plus a partial sort: about
    /// 16384 × servers score evaluations (see `benches/routing.rs`).
    ///
    /// # Errors
    ///
    /// - [`RoutingError::NoServers`] if `servers` is empty;
    /// - [`RoutingError::TooManyServers`] beyond [`MAX_SERVERS`];
    /// - [`RoutingError::InvalidWeight`] for a weight that is not finite and `> 0`;
    /// - [`RoutingError::DuplicateName`] if two servers share a name.
    pub fn build(servers: &[(&str, f64)], depth: usize) -> Result<SlotTable, RoutingError> {
        check_servers(servers)?;
        let n = servers.len();
        let depth = depth.clamp(1, n);

        let mut inputs: Vec<Vec<u8>> = servers.iter().map(|(name, _)| hash_input(name)).collect();
        let mut scored: Vec<(f64, u16)> = Vec::with_capacity(n);
        let mut ranks: Vec<u16> = Vec::with_capacity(SLOTS * depth);
        // Best first: higher score, then smaller name. Names are unique (checked above), so this
        // is a total order and the result does not depend on the sort algorithm.
        let better = |a: &(f64, u16), b: &(f64, u16)| -> Ordering {
            b.0.total_cmp(&a.0)
                .then_with(|| name_of(servers, a.1).cmp(name_of(servers, b.1)))
        };
        for slot in Slot::all() {
            scored.clear();
            // `check_servers` guarantees n <= MAX_SERVERS, so every index fits a u16.
            for ((input, &(_, weight)), index) in inputs.iter_mut().zip(servers).zip(0u16..) {
                scored.push((score_with(input, weight, slot), index));
            }
            if depth < n {
                scored.select_nth_unstable_by(depth - 1, better);
            }
            let top = scored.get_mut(..depth).unwrap_or_default();
            top.sort_unstable_by(better);
            ranks.extend(top.iter().map(|&(_, index)| index));
        }
        let primaries = ranks.iter().step_by(depth).copied().collect();
        Ok(SlotTable {
            depth,
            servers: n,
            ranks: ranks.into_boxed_slice(),
            primaries,
        })
    }

    /// The first [`depth`](Self::depth) servers of `slot`'s ranking, best first.
    #[inline]
    pub fn ranked(&self, slot: Slot) -> &[u16] {
        let start = slot.index() * self.depth;
        // Cannot panic: `ranks.len() == SLOTS * depth` (build pushes `depth` entries for each of
        // the SLOTS slots) and `Slot::index` masks to `< SLOTS`, so `start + depth <= len`.
        #[allow(clippy::indexing_slicing, reason = "in range by construction (above)")]
        &self.ranks[start..start + self.depth]
    }

    /// The first server of `slot`'s ranking: the slot's primary.
    #[inline]
    pub fn primary(&self, slot: Slot) -> u16 {
        // Cannot panic: `build` clamps depth to at least 1 and refuses an empty server list, so
        // every ranking holds at least one server, and `primaries` has one entry per slot;
        // `Slot::index` masks to `< SLOTS`.
        #[allow(clippy::indexing_slicing, reason = "in range by construction (above)")]
        self.primaries[slot.index()]
    }

    /// Servers kept per slot (`1..=server_count()`).
    #[inline]
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Number of servers the table was built from.
    #[inline]
    pub fn server_count(&self) -> usize {
        self.servers
    }
}

/// Checks that a server list can be ranked: the conditions of [`SlotTable::build`]'s errors.
///
/// # Errors
///
/// As [`SlotTable::build`].
pub fn check_servers(servers: &[(&str, f64)]) -> Result<(), RoutingError> {
    if servers.is_empty() {
        return Err(RoutingError::NoServers);
    }
    if servers.len() > MAX_SERVERS {
        return Err(RoutingError::TooManyServers(servers.len()));
    }
    let mut names: Vec<&str> = Vec::with_capacity(servers.len());
    for &(name, weight) in servers {
        if !(weight.is_finite() && weight > 0.0) {
            return Err(RoutingError::InvalidWeight {
                name: name.to_owned(),
                weight,
            });
        }
        names.push(name);
    }
    names.sort_unstable();
    if let Some([name, _]) = names.windows(2).find(|pair| pair.first() == pair.get(1)) {
        return Err(RoutingError::DuplicateName((*name).to_owned()));
    }
    Ok(())
}

fn name_of<'a>(servers: &[(&'a str, f64)], index: u16) -> &'a str {
    servers
        .get(usize::from(index))
        .map_or("", |&(name, _)| name)
}

/// What changes between two tables: the number of slots whose primary moved, per (from, to)
/// server name. Servers are compared by name, so the two tables may list them in any order.
/// Slots that keep their primary are not counted; an empty map means no key changes primary.
///
/// `old_names` and `new_names` are the names in the order given to each table's `build`. An
/// index with no name (a names slice shorter than the table's server list) is reported as
/// `#<index>` rather than panicking.
pub fn primary_moves(
    old: &SlotTable,
    old_names: &[&str],
    new: &SlotTable,
    new_names: &[&str],
) -> BTreeMap<(String, String), usize> {
    let mut moves = BTreeMap::new();
    for slot in Slot::all() {
        let from = label(old_names, old.primary(slot));
        let to = label(new_names, new.primary(slot));
        if from != to {
            *moves.entry((from, to)).or_insert(0) += 1;
        }
    }
    moves
}

fn label(names: &[&str], index: u16) -> String {
    match names.get(usize::from(index)) {
        Some(name) => (*name).to_owned(),
        None => format!("#{index}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::score;

    #[test]
    fn build_refuses_bad_server_lists() {
        assert_eq!(SlotTable::build(&[], 1), Err(RoutingError::NoServers));
        for weight in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = SlotTable::build(&[("a", 1.0), ("b", weight)], 1).unwrap_err();
            assert!(matches!(err, RoutingError::InvalidWeight { ref name, .. } if name == "b"));
        }
        assert_eq!(
            SlotTable::build(&[("a", 1.0), ("b", 1.0), ("a", 2.0)], 1),
            Err(RoutingError::DuplicateName("a".into()))
        );
    }

    #[test]
    fn depth_is_clamped() {
        let servers = [("a", 1.0), ("b", 1.0), ("c", 1.0)];
        assert_eq!(SlotTable::build(&servers, 0).unwrap().depth(), 1);
        assert_eq!(SlotTable::build(&servers, 2).unwrap().depth(), 2);
        assert_eq!(SlotTable::build(&servers, 99).unwrap().depth(), 3);
        assert_eq!(SlotTable::build(&servers, 99).unwrap().server_count(), 3);
    }

    #[test]
    fn ranking_follows_scores_for_every_slot() {
        let servers = [("a", 1.0), ("b", 2.0), ("c", 1.0), ("d", 0.5)];
        let full = SlotTable::build(&servers, 4).unwrap();
        let top2 = SlotTable::build(&servers, 2).unwrap();
        for slot in Slot::all() {
            let ranked = full.ranked(slot);
            let scores: Vec<f64> = ranked
                .iter()
                .map(|&i| score(servers[i as usize].0, servers[i as usize].1, slot))
                .collect();
            assert!(
                scores.windows(2).all(|w| w[0] >= w[1]),
                "slot {slot:?}: {scores:?}"
            );
            assert_eq!(top2.ranked(slot), &ranked[..2]);
            assert_eq!(full.primary(slot), ranked[0]);
            assert_eq!(top2.primary(slot), ranked[0]);
        }
    }

    #[test]
    fn out_of_range_slot_field_is_masked() {
        let table = SlotTable::build(&[("a", 1.0), ("b", 1.0)], 2).unwrap();
        assert_eq!(table.ranked(Slot(u16::MAX)), table.ranked(Slot(16383)));
    }

    #[test]
    fn moves_by_name_not_index() {
        let t1 = SlotTable::build(&[("a", 1.0), ("b", 1.0)], 1).unwrap();
        let t2 = SlotTable::build(&[("b", 1.0), ("a", 1.0)], 1).unwrap();
        assert!(primary_moves(&t1, &["a", "b"], &t2, &["b", "a"]).is_empty());
        // Missing names are labelled, not a panic.
        let m = primary_moves(&t1, &[], &t2, &["b", "a"]);
        assert_eq!(m.values().sum::<usize>(), SLOTS);
        assert!(m.keys().all(|(from, _)| from.starts_with('#')));
    }
}
