//! The wheel's model tests: a reference model under random operations, slot-visit counts,
//! and the invariant checks the tests run after every step.

use super::slab::{Cell, CHUNK, MAX_TICK, NIL, RESERVED, UNLINKED};
use super::*;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use std::collections::BTreeMap;

const P: [u64; 7] = [
    1,
    64,
    64 * 64,
    64 * 64 * 64,
    64 * 64 * 64 * 64,
    64 * 64 * 64 * 64 * 64,
    HORIZON,
];

/// Polls at `now` until `None`, returning the ids in order and checking each is due.
fn drain(wheel: &mut Wheel<u64>, now: u64) -> Vec<NodeId> {
    let mut out = Vec::new();
    // A `now` behind `elapsed` counts as `elapsed`.
    let now = now.max(wheel.elapsed());
    while let Some(id) = wheel.poll(now) {
        assert!(wheel.when(id) <= now, "node {id} returned early");
        out.push(id);
    }
    assert_eq!(wheel.elapsed(), now);
    if let Some(next) = wheel.next_expiration() {
        assert!(
            next > now,
            "next_expiration {next} <= now {now} after draining"
        );
    }
    wheel.check();
    out
}

#[test]
fn node_is_small() {
    // An item plus 16 bytes: the free variant and the location cost nothing.
    assert_eq!(mem::size_of::<Cell<u64>>(), 24);
    assert_eq!(mem::size_of::<Cell<String>>(), 40);
}

#[test]
fn ticks_past_max_tick_count_as_max_tick() {
    let mut wheel = Wheel::new();
    let a = wheel.insert(u64::MAX, 1);
    assert_eq!(wheel.when(a), MAX_TICK);
    wheel.reschedule(a, 5);
    assert_eq!(wheel.when(a), 5);
    wheel.reschedule(a, u64::MAX);
    assert_eq!(drain(&mut wheel, MAX_TICK - 1), vec![]);
    assert_eq!(drain(&mut wheel, MAX_TICK), vec![a]);
}

#[test]
fn empty_wheel() {
    let mut wheel = Wheel::<u64>::new();
    assert_eq!(wheel.elapsed(), 0);
    assert!(wheel.is_empty());
    assert_eq!(wheel.len(), 0);
    assert_eq!(wheel.next_expiration(), None);
    assert_eq!(wheel.poll(P[5] * 3), None);
    assert_eq!(wheel.elapsed(), P[5] * 3);
    assert_eq!(wheel.next_expiration(), None);
    assert_eq!(wheel.slots_visited(), 0);
    // Going back is harmless.
    assert_eq!(wheel.poll(5), None);
    assert_eq!(wheel.elapsed(), P[5] * 3);
}

#[test]
fn insert_then_poll() {
    let mut wheel = Wheel::new();
    let a = wheel.insert(10, 100);
    let b = wheel.insert(70, 200);
    let c = wheel.insert(70, 300);
    assert_eq!(wheel.len(), 3);
    wheel.check();
    assert_eq!(wheel.next_expiration(), Some(10));
    assert_eq!(drain(&mut wheel, 9), vec![]);
    assert_eq!(wheel.elapsed(), 9);
    assert_eq!(drain(&mut wheel, 10), vec![a]);
    assert_eq!(*wheel.get(a), 100);
    assert_eq!(wheel.len(), 3, "a fired node stays allocated");
    assert_eq!(wheel.remove(a), 100);
    assert_eq!(wheel.len(), 2);
    // 70 is in level 1 (slot 1, start 64).
    assert_eq!(wheel.next_expiration(), Some(64));
    assert_eq!(drain(&mut wheel, 69), vec![]);
    assert_eq!(wheel.next_expiration(), Some(70));
    let mut fired = drain(&mut wheel, 1_000);
    fired.sort_unstable();
    assert_eq!(fired, vec![b, c]);
    assert_eq!(wheel.when(b), 70);
    assert_eq!(wheel.next_expiration(), None);
}

#[test]
fn past_deadline_is_due_at_once() {
    let mut wheel = Wheel::new();
    assert_eq!(wheel.poll(500), None);
    let a = wheel.insert(500, 1);
    let b = wheel.insert(3, 2);
    assert_eq!(wheel.next_expiration(), Some(500));
    wheel.check();
    // Even polling "before" elapsed returns them: it is treated as elapsed.
    let mut fired = drain(&mut wheel, 0);
    fired.sort_unstable();
    assert_eq!(fired, vec![a, b]);
    assert_eq!(wheel.elapsed(), 500);
}

#[test]
fn reschedule_earlier_and_later() {
    let mut wheel = Wheel::new();
    let a = wheel.insert(P[4] * 2, 1);
    wheel.reschedule(a, 5);
    wheel.check();
    assert_eq!(wheel.next_expiration(), Some(5));
    assert_eq!(drain(&mut wheel, 4), vec![]);
    wheel.reschedule(a, 4_000);
    wheel.check();
    assert_eq!(drain(&mut wheel, 3_999), vec![]);
    assert_eq!(drain(&mut wheel, 4_000), vec![a]);
    assert_eq!(wheel.remove(a), 1);
    assert!(wheel.is_empty());
}

#[test]
fn reschedule_fired_node() {
    let mut wheel = Wheel::new();
    let a = wheel.insert(10, 7);
    assert_eq!(wheel.poll(20), Some(a));
    // Later: re-linked, same id, fires again at its new tick only.
    wheel.reschedule(a, 30);
    wheel.check();
    assert_eq!(wheel.len(), 1);
    assert_eq!(wheel.poll(20), None);
    assert_eq!(wheel.next_expiration(), Some(30));
    assert_eq!(wheel.poll(30), Some(a));
    // Into the past: due at the next poll.
    wheel.reschedule(a, 1);
    assert_eq!(wheel.next_expiration(), Some(30));
    assert_eq!(wheel.poll(30), Some(a));
    assert_eq!(wheel.poll(30), None);
    assert_eq!(*wheel.get(a), 7);
    wheel.check();
}

#[test]
fn remove_scheduled_and_fired() {
    let mut wheel = Wheel::new();
    let a = wheel.insert(100, 1);
    let b = wheel.insert(100, 2);
    let c = wheel.insert(100, 3);
    let d = wheel.insert(50, 4);
    assert_eq!(wheel.remove(b), 2, "middle of a slot list");
    wheel.check();
    assert_eq!(wheel.poll(60), Some(d));
    assert_eq!(wheel.remove(d), 4, "fired");
    wheel.check();
    assert_eq!(wheel.remove(c), 3, "head of a slot list");
    assert_eq!(wheel.remove(a), 1, "last in its slot");
    wheel.check();
    assert!(wheel.is_empty());
    assert_eq!(wheel.next_expiration(), None);
    assert_eq!(wheel.poll(1_000), None);
}

#[test]
#[should_panic(expected = "not allocated")]
fn remove_twice_panics() {
    let mut wheel = Wheel::new();
    let a = wheel.insert(1, ());
    wheel.remove(a);
    wheel.remove(a);
}

#[test]
#[should_panic(expected = "not allocated")]
fn get_unknown_panics() {
    let wheel = Wheel::<()>::new();
    wheel.get(0);
}

#[test]
fn slab_reuses_ids() {
    let mut wheel = Wheel::new();
    let ids: Vec<_> = (0..10).map(|i| wheel.insert(i * 1000, i)).collect();
    assert_eq!(wheel.len(), 10);
    for &id in &ids[2..5] {
        wheel.remove(id);
    }
    assert_eq!(wheel.len(), 7);
    let mut again: Vec<_> = (0..3).map(|i| wheel.insert(5, 100 + i)).collect();
    again.sort_unstable();
    assert_eq!(again, ids[2..5].to_vec(), "freed ids come back");
    assert_eq!(wheel.len(), 10);
    assert_eq!(wheel.entries.len(), 10, "no growth while cells are free");
    let fresh = wheel.insert(5, 999);
    assert_eq!(fresh, 10);
    wheel.check();
}

#[test]
fn ids_held_by_the_caller() {
    let mut wheel = Wheel::new();
    // Ids the wheel never saw: the slab grows to them, leaving the cells between held.
    wheel.link(5, 10, 50);
    wheel.link(2, 20, 20);
    wheel.check();
    assert_eq!(wheel.len(), 2);
    assert_eq!(wheel.take_free(), None, "held cells are not free");
    for held in [0, 1, 3, 4] {
        wheel.release(held);
    }
    wheel.release(9);
    wheel.check();
    assert_eq!(wheel.free_len(), 5);
    assert_eq!(wheel.take(2), 20, "taken out: the caller holds the id");
    assert_eq!(wheel.free_len(), 5);
    wheel.check();
    wheel.link(2, 20, 20);
    assert_eq!(wheel.remove(5), 50);
    assert_eq!(wheel.free_len(), 6);
    let mut taken: Vec<_> = std::iter::from_fn(|| wheel.take_free()).collect();
    taken.sort_unstable();
    assert_eq!(taken, vec![0, 1, 3, 4, 5, 9]);
    wheel.check();
    wheel.link(9, 15, 90);
    let mut fired = drain(&mut wheel, 20);
    fired.sort_unstable();
    assert_eq!(fired, vec![2, 9]);
    wheel.remove(9);
    wheel.remove(2);
    for id in [0, 1, 3, 4, 5] {
        wheel.release(id);
    }
    wheel.check();
    assert!(wheel.is_empty());
}

#[test]
#[should_panic(expected = "not held by the caller")]
fn linking_a_free_id_panics() {
    let mut wheel = Wheel::new();
    let a = wheel.insert(3, 1);
    wheel.remove(a);
    wheel.link(a, 4, 2);
}

#[test]
#[should_panic(expected = "not held by the caller")]
fn linking_a_live_id_panics() {
    let mut wheel = Wheel::new();
    let a = wheel.insert(3, 1);
    wheel.link(a, 4, 2);
}

#[test]
fn slab_grows_by_chunks() {
    let mut wheel = Wheel::new();
    let n = 3 * CHUNK + 5;
    let ids: Vec<_> = (0..n as u64)
        .map(|i| wheel.insert(i % 700 + 1, i))
        .collect();
    assert_eq!(ids, (0..n as u32).collect::<Vec<_>>());
    let chunks = &wheel.entries.chunks;
    assert_eq!(chunks.len(), 4);
    assert!(
        chunks.iter().all(|c| c.cells.capacity() == CHUNK),
        "no spare beyond one chunk"
    );
    assert_eq!(wheel.entries.len(), n);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(*wheel.get(*id), i as u64);
    }
    wheel.check();
    let mut fired = drain(&mut wheel, 700);
    fired.sort_unstable();
    assert_eq!(fired, ids);
}

#[test]
fn chunks_with_no_live_node_are_trimmed_and_come_back_held() {
    let mut wheel = Wheel::new();
    let n = 4 * CHUNK as u32;
    for id in 0..n {
        wheel.link(id, u64::from(id) + 1, u64::from(id));
    }
    assert_eq!(wheel.cells(), 4 * CHUNK);
    assert_eq!(wheel.trim(), 0, "every chunk holds live nodes");
    // The caller takes back all but one node of the second chunk: the ids stay its own.
    let kept = CHUNK as u32 + 3;
    for id in (0..n).filter(|&id| id != kept) {
        assert_eq!(wheel.take(id), u64::from(id));
    }
    wheel.check();
    assert_eq!(
        wheel.trim(),
        2,
        "the first and third chunks; never the last"
    );
    assert_eq!(wheel.cells(), 2 * CHUNK);
    assert_eq!(wheel.trim(), 0);
    wheel.check();
    assert_eq!(wheel.take_free(), None, "trimmed cells stay held, not free");
    assert_eq!(*wheel.get(kept), u64::from(kept));
    // Linking a held id of a trimmed chunk brings it back, every other cell still held.
    wheel.link(2, 7, 20);
    wheel.link(CHUNK as u32 * 2 + 1, 9, 21);
    assert_eq!(wheel.cells(), 4 * CHUNK);
    wheel.check();
    wheel.release(5);
    assert_eq!(
        wheel.trim(),
        0,
        "nothing is trimmed while a cell is on the free list"
    );
    assert_eq!(wheel.take_free(), Some(5));
    let mut fired = drain(&mut wheel, n.into());
    fired.sort_unstable();
    assert_eq!(fired, vec![2, kept, CHUNK as u32 * 2 + 1]);
    for id in fired {
        wheel.take(id);
    }
    assert_eq!(wheel.trim(), 3);
    assert_eq!(wheel.cells(), CHUNK);
    assert!(wheel.is_empty());
    wheel.check();
}

#[test]
fn next_expiration_is_a_lower_bound_after_poll() {
    let mut wheel = Wheel::new();
    for (i, when) in [3, 64, 65, 4_095, 4_096, P[5] + 1, HORIZON * 3]
        .iter()
        .enumerate()
    {
        wheel.insert(*when, i as u64);
    }
    let mut now = 0;
    while let Some(next) = wheel.next_expiration() {
        assert!(next > now || wheel.due_head != NIL);
        now = next;
        for id in drain(&mut wheel, now) {
            wheel.remove(id);
        }
        if let Some(next) = wheel.next_expiration() {
            assert!(next > now);
        }
    }
    assert_eq!(now, HORIZON * 3);
    assert!(wheel.is_empty());
}

#[test]
fn far_future_is_refiled_not_fired() {
    for start in [0, 12_345, HORIZON - 1, u64::MAX / 3] {
        let mut wheel = Wheel::new();
        assert_eq!(wheel.poll(start), None);
        let when = start + HORIZON * 3;
        let a = wheel.insert(when, 1);
        wheel.check();
        // One giant step just short of it.
        assert_eq!(drain(&mut wheel, when - 1), vec![]);
        assert_eq!(wheel.next_expiration(), Some(when));
        assert_eq!(drain(&mut wheel, when), vec![a]);

        // The same by sleeping to next_expiration: a few wake-ups per 2^36 ticks.
        let mut wheel = Wheel::new();
        wheel.poll(start);
        let a = wheel.insert(when, 1);
        let mut wakeups = 0;
        let fired_at = loop {
            let next = wheel.next_expiration().expect("still scheduled");
            assert!(next > wheel.elapsed() && next <= when);
            wakeups += 1;
            let fired = drain(&mut wheel, next);
            if !fired.is_empty() {
                assert_eq!(fired, vec![a]);
                break next;
            }
        };
        assert_eq!(fired_at, when);
        assert!(wakeups <= 3 * 2 + 12, "{wakeups} wake-ups");
    }
}

#[test]
fn deadlines_near_max_tick() {
    const M: u64 = MAX_TICK;
    let mut wheel = Wheel::new();
    let a = wheel.insert(M, 1);
    let b = wheel.insert(M - 1, 2);
    let c = wheel.insert(M - HORIZON, 3);
    wheel.check();
    assert_eq!(drain(&mut wheel, M - HORIZON - 1), vec![]);
    assert_eq!(drain(&mut wheel, M - HORIZON), vec![c]);
    assert_eq!(drain(&mut wheel, M - 2), vec![]);
    assert_eq!(wheel.next_expiration(), Some(M - 1));
    assert_eq!(drain(&mut wheel, M - 1), vec![b]);
    assert_eq!(wheel.next_expiration(), Some(M));
    assert_eq!(drain(&mut wheel, M), vec![a]);
    assert_eq!(wheel.next_expiration(), None);
    // At the end of time everything is due at once.
    let d = wheel.insert(M, 4);
    assert_eq!(wheel.next_expiration(), Some(M));
    assert_eq!(drain(&mut wheel, M), vec![d]);
    assert_eq!(drain(&mut wheel, u64::MAX), vec![]);
    let e = wheel.insert(u64::MAX, 5);
    assert_eq!(wheel.next_expiration(), Some(u64::MAX));
    assert_eq!(drain(&mut wheel, u64::MAX), vec![e]);

    // Stepping towards the last tick from one block before.
    let mut wheel = Wheel::new();
    wheel.poll(M - 2 * HORIZON);
    let a = wheel.insert(M, 1);
    let mut wakeups = 0;
    while let Some(next) = wheel.next_expiration() {
        wakeups += 1;
        for id in drain(&mut wheel, next) {
            assert_eq!(id, a);
            assert_eq!(next, M);
            wheel.remove(id);
        }
    }
    assert!(wakeups <= 20, "{wakeups} wake-ups");
    assert!(wheel.is_empty());
}

#[test]
fn advancing_visits_occupied_slots_not_ticks() {
    let deadlines = [P[5] - 1, P[4] * 7 + 5, P[3] * 9 + 1, 12_345_678, P[5]];
    let bound = 6 * deadlines.len() as u64 + 2;

    // One poll across 64^5 ticks.
    let mut wheel = Wheel::new();
    for (i, &when) in deadlines.iter().enumerate() {
        wheel.insert(when, i as u64);
    }
    let fired = drain(&mut wheel, P[5]);
    assert_eq!(fired.len(), deadlines.len());
    assert!(wheel.slots_visited() <= bound, "{}", wheel.slots_visited());

    // Sleeping to next_expiration each time.
    let mut wheel = Wheel::new();
    for (i, &when) in deadlines.iter().enumerate() {
        wheel.insert(when, i as u64);
    }
    let mut fired = 0;
    let mut wakeups = 0;
    while let Some(next) = wheel.next_expiration() {
        wakeups += 1;
        for id in drain(&mut wheel, next) {
            assert_eq!(wheel.when(id), next, "fired late");
            wheel.remove(id);
            fired += 1;
        }
    }
    assert_eq!(fired, deadlines.len());
    assert_eq!(wheel.elapsed(), P[5]);
    assert!(wheel.slots_visited() <= bound, "{}", wheel.slots_visited());
    assert!(wakeups <= bound, "{wakeups}");

    // An empty stretch costs nothing.
    let before = wheel.slots_visited();
    assert_eq!(wheel.poll(P[5] * 2), None);
    assert_eq!(wheel.slots_visited(), before);
}

#[test]
fn one_hour_at_one_millisecond_ticks() {
    let mut wheel = Wheel::new();
    let a = wheel.insert(3_600_000, ());
    let mut wakeups = 0;
    loop {
        let next = wheel.next_expiration().expect("not fired yet");
        assert!(next <= 3_600_000);
        wakeups += 1;
        if let Some(id) = wheel.poll(next) {
            assert_eq!(id, a);
            assert_eq!(next, 3_600_000);
            break;
        }
    }
    println!("1 h at 1 ms: {wakeups} wake-ups");
    assert!(wakeups <= 50, "{wakeups} wake-ups");
    // One timer: each wake-up empties exactly the one slot holding it.
    assert_eq!(wheel.slots_visited(), wakeups);
}

// ---- model-based property test ----

fn special_offsets(max_k: u32) -> Vec<u64> {
    let mut out = vec![0, 1, 2, 63];
    for k in 1..=max_k {
        let p = 64u64.pow(k);
        out.extend([p - 1, p, p + 1]);
    }
    out.extend([
        HORIZON - 1,
        HORIZON,
        HORIZON + 1,
        HORIZON * 3,
        HORIZON * 64 + 5,
    ]);
    out
}

fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => Just(0u64),
        4 => 1..70u64,
        3 => 0..10_000u64,
        5 => select(special_offsets(6)),
        1 => HORIZON..HORIZON * 300,
        1 => any::<u64>(),
    ]
}

fn jump() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => Just(0u64),
        4 => 1..70u64,
        3 => 0..10_000u64,
        6 => select(special_offsets(5)),
        1 => HORIZON..HORIZON * 300,
        // Rare: towards the end of time (a few of these reach it).
        1 => Just(u64::MAX / 4),
    ]
}

fn absolute() -> impl Strategy<Value = u64> {
    select(vec![
        u64::MAX,
        u64::MAX - 1,
        u64::MAX - 63,
        u64::MAX - 64,
        u64::MAX - HORIZON,
        u64::MAX - HORIZON + 1,
        u64::MAX / 2,
        HORIZON * 5,
        7,
    ])
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u64),
    InsertPast(u64),
    InsertAt(u64),
    Reschedule(Index, u64),
    ReschedulePast(Index, u64),
    Remove(Index),
    /// Take a live node out, its id held by the caller afterwards.
    Take(Index),
    Advance(u64, u64),
    /// Hold an id: off the free list, or one the wheel never saw (`bool`).
    Hold(bool, u8),
    /// Link a held id at an offset from `elapsed`.
    LinkHeld(Index, u64),
    /// Give a held id back.
    ReleaseHeld(Index),
    /// As the expiry task does: hold every id on the free list, then trim.
    Trim,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => offset().prop_map(Op::Insert),
        1 => offset().prop_map(Op::InsertPast),
        1 => absolute().prop_map(Op::InsertAt),
        3 => (any::<Index>(), offset()).prop_map(|(i, o)| Op::Reschedule(i, o)),
        1 => (any::<Index>(), offset()).prop_map(|(i, o)| Op::ReschedulePast(i, o)),
        2 => any::<Index>().prop_map(Op::Remove),
        1 => any::<Index>().prop_map(Op::Take),
        4 => (jump(), any::<u64>()).prop_map(|(j, s)| Op::Advance(j, s)),
        1 => (any::<bool>(), 0..5u8).prop_map(|(f, gap)| Op::Hold(f, gap)),
        2 => (any::<Index>(), offset()).prop_map(|(i, o)| Op::LinkHeld(i, o)),
        1 => any::<Index>().prop_map(Op::ReleaseHeld),
        1 => Just(Op::Trim),
    ]
}

/// xorshift64*: deterministic choices for fired nodes, seeded by the op.
fn rng(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

type Model = BTreeMap<NodeId, (u64, u64)>;

fn pick(model: &Model, index: &Index) -> Option<NodeId> {
    (!model.is_empty()).then(|| *model.keys().nth(index.index(model.len())).unwrap())
}

/// What to do with a fired node: remove it, or move it past `now`.
fn settle(
    wheel: &mut Wheel<u64>,
    model: &mut Model,
    id: NodeId,
    item: u64,
    now: u64,
    seed: &mut u64,
) -> Result<(), TestCaseError> {
    let r = rng(seed);
    if r & 1 == 0 || now >= MAX_TICK {
        prop_assert_eq!(wheel.remove(id), item);
    } else {
        let offsets = special_offsets(6);
        let extra = offsets[(r >> 8) as usize % offsets.len()].max(1);
        let when = now.saturating_add(extra).min(MAX_TICK);
        wheel.reschedule(id, when);
        model.insert(id, (when, item));
    }
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut wheel = Wheel::<u64>::new();
    let mut model = Model::new();
    let mut held: Vec<NodeId> = Vec::new();
    // Ids handed out so far, free or not.
    let mut fresh: NodeId = 0;
    let mut next_item = 0u64;
    for op in ops {
        let elapsed = wheel.elapsed();
        let mut drained_to = None;
        match op {
            Op::Insert(off) | Op::InsertPast(off) | Op::InsertAt(off) => {
                let when = match op {
                    Op::Insert(_) => elapsed.saturating_add(off),
                    Op::InsertPast(_) => elapsed.saturating_sub(off),
                    _ => off,
                }
                .min(MAX_TICK);
                next_item += 1;
                // As the hand-off does: a free id, else one never handed out.
                let id = wheel.take_free().unwrap_or_else(|| {
                    fresh += 1;
                    fresh - 1
                });
                wheel.link(id, when, next_item);
                prop_assert!(id < u32::MAX - 1);
                prop_assert!(
                    model.insert(id, (when, next_item)).is_none(),
                    "id reused while live"
                );
            }
            Op::Reschedule(i, off) | Op::ReschedulePast(i, off) => {
                if let Some(id) = pick(&model, &i) {
                    let when = match op {
                        Op::Reschedule(..) => elapsed.saturating_add(off),
                        _ => elapsed.saturating_sub(off),
                    }
                    .min(MAX_TICK);
                    wheel.reschedule(id, when);
                    model.get_mut(&id).unwrap().0 = when;
                    prop_assert_eq!(wheel.when(id), when);
                }
            }
            Op::Remove(i) => {
                if let Some(id) = pick(&model, &i) {
                    let (_, item) = model.remove(&id).unwrap();
                    prop_assert_eq!(wheel.remove(id), item);
                }
            }
            Op::Take(i) => {
                if let Some(id) = pick(&model, &i) {
                    let (_, item) = model.remove(&id).unwrap();
                    prop_assert_eq!(wheel.take(id), item);
                    held.push(id);
                }
            }
            Op::Hold(never_seen, gap) => {
                let id = match wheel.take_free() {
                    Some(id) if !never_seen => id,
                    taken => {
                        if let Some(id) = taken {
                            wheel.release(id);
                        }
                        // Never seen, maybe past the slab's end.
                        let id = fresh + NodeId::from(gap);
                        fresh = id + 1;
                        id
                    }
                };
                prop_assert!(!model.contains_key(&id) && !held.contains(&id));
                held.push(id);
            }
            Op::LinkHeld(i, off) => {
                if !held.is_empty() {
                    let id = held.swap_remove(i.index(held.len()));
                    let when = elapsed.saturating_add(off).min(MAX_TICK);
                    next_item += 1;
                    wheel.link(id, when, next_item);
                    model.insert(id, (when, next_item));
                }
            }
            Op::ReleaseHeld(i) => {
                if !held.is_empty() {
                    let id = held.swap_remove(i.index(held.len()));
                    wheel.release(id);
                }
            }
            Op::Trim => {
                held.extend(std::iter::from_fn(|| wheel.take_free()));
                let before = wheel.cells();
                let trimmed = wheel.trim();
                prop_assert_eq!(wheel.cells(), before - trimmed * CHUNK);
                if model.len() > before / 4 {
                    prop_assert_eq!(trimmed, 0, "live nodes fill over a quarter of the cells");
                } else {
                    // Every chunk but the last is in memory only if it holds a live node.
                    let chunks = &wheel.entries.chunks;
                    let last = chunks.len().saturating_sub(1);
                    for (c, chunk) in chunks.iter().enumerate().take(last) {
                        let ids = c * CHUNK..(c + 1) * CHUNK;
                        let live = model.keys().any(|&id| ids.contains(&(id as usize)));
                        prop_assert_eq!(!chunk.cells.is_empty(), live, "chunk {} after a trim", c);
                    }
                }
            }
            Op::Advance(jump, mut seed) => {
                seed |= 1;
                let now = elapsed.saturating_add(jump);
                let expected: Model = model
                    .iter()
                    .filter(|(_, &(when, _))| when <= now)
                    .map(|(&id, &v)| (id, v))
                    .collect();
                let settle_at_once = rng(&mut seed) & 1 == 0;
                let mut fired = Model::new();
                let mut held = Vec::new();
                while let Some(id) = wheel.poll(now) {
                    let when = wheel.when(id);
                    let item = *wheel.get(id);
                    prop_assert!(when <= now, "fired early: {} > {}", when, now);
                    prop_assert!(fired.insert(id, (when, item)).is_none(), "fired twice");
                    prop_assert_eq!(model.remove(&id), Some((when, item)));
                    if settle_at_once {
                        settle(&mut wheel, &mut model, id, item, now, &mut seed)?;
                    } else {
                        held.push((id, item));
                    }
                }
                prop_assert_eq!(&fired, &expected);
                prop_assert_eq!(wheel.elapsed(), now);
                for (id, item) in held {
                    settle(&mut wheel, &mut model, id, item, now, &mut seed)?;
                }
                prop_assert_eq!(wheel.poll(now), None);
                drained_to = Some(now);
            }
        }
        wheel.check();
        prop_assert_eq!(wheel.len(), model.len());
        let earliest = model.values().map(|&(when, _)| when).min();
        let next = wheel.next_expiration();
        prop_assert_eq!(next.is_none(), earliest.is_none());
        if let (Some(next), Some(earliest)) = (next, earliest) {
            if earliest <= wheel.elapsed() {
                // Something is due: "now" (elapsed) or earlier.
                prop_assert!(next <= wheel.elapsed(), "due, yet next {} > elapsed", next);
            } else {
                prop_assert!(next <= earliest, "next {} > earliest {}", next, earliest);
                prop_assert!(next > wheel.elapsed(), "next {} <= elapsed", next);
            }
            if let Some(now) = drained_to {
                prop_assert!(next > now, "next {} <= now {}", next, now);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(crate::model_test_config(256))]

    #[test]
    fn matches_model(ops in prop::collection::vec(op(), 1..200)) {
        run(ops)?;
    }
}

impl<T> Wheel<T> {
    /// Checks every structural fact and the documented invariant. Test-only, O(slots + nodes).
    fn check(&self) {
        let mut linked = 0;
        for level in 0..LEVELS {
            for slot in 0..SLOTS {
                let head = self.heads.get(level).map_or(NIL, |heads| heads[slot]);
                let bit = self.occupied[level] >> slot & 1 == 1;
                assert_eq!(bit, head != NIL, "occupancy bit of ({level}, {slot})");
                let start = self.slot_start(level, slot);
                let mut prev = NIL;
                let mut cur = head;
                while cur != NIL {
                    let node = self.node(cur);
                    assert_eq!(node.prev, prev, "prev link of {cur}");
                    let when = node.when();
                    assert_eq!(
                        self.loc_for(when),
                        Loc::Slot {
                            level: level as u8,
                            slot: slot as u8
                        },
                        "node {cur} misfiled"
                    );
                    assert!(self.elapsed < start && start <= when, "start of {cur}");
                    if level < TOP {
                        assert!(when - start < 1u64 << (SLOT_BITS * level as u32));
                    }
                    linked += 1;
                    prev = cur;
                    cur = node.next;
                }
            }
        }
        let mut prev = NIL;
        let mut cur = self.due_head;
        while cur != NIL {
            let node = self.node(cur);
            assert_eq!(node.prev, prev);
            assert_eq!(self.loc_for(node.when()), Loc::Due);
            linked += 1;
            prev = cur;
            cur = node.next;
        }
        let mut live = 0;
        let mut fired = 0;
        let mut reserved = 0;
        self.entries.check();
        for entry in self.entries.iter() {
            match entry {
                None => reserved += 1,
                Some(Cell::Live(node)) => {
                    live += 1;
                    if node.prev == UNLINKED {
                        fired += 1;
                    }
                }
                Some(Cell::Free {
                    next_free: RESERVED,
                }) => reserved += 1,
                Some(Cell::Free { .. }) => {}
            }
        }
        assert_eq!(live, self.len);
        assert_eq!(linked + fired, live);
        let mut free = 0;
        let mut cur = self.free_head;
        while cur != NIL {
            match self.entries.get(cur).expect("free id in range") {
                Cell::Free { next_free } if *next_free != RESERVED => cur = *next_free,
                _ => panic!("cell {cur} on the free list is not free"),
            }
            free += 1;
        }
        assert_eq!(free, self.free);
        assert_eq!(free + live + reserved, self.entries.len());
    }
}
