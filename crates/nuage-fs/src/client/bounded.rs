//! The one eviction rule of the mount's small time-limited caches (directory attributes,
//! a replicated directory's state after an entry change, inodes without capabilities):
//! a cache holds at most a fixed number of entries; when it is full, the stale ones go,
//! and if none was stale, all go (each is only a shortcut: a miss asks the bricks).

use std::collections::HashMap;

/// Makes room for one more entry in `map`, which must hold fewer than `max` entries
/// afterwards: drops the entries that are not `fresh`, or every entry if that is not
/// enough.
pub fn make_room<K, V>(map: &mut HashMap<K, V>, max: usize, fresh: impl Fn(&V) -> bool) {
    assert!(max > 0, "a cache bound of zero");
    if map.len() >= max {
        map.retain(|_, v| fresh(v));
        if map.len() >= max {
            map.clear();
        }
    }
    debug_assert!(map.len() < max);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_entries_go_first_then_everything() {
        let mut m: HashMap<u32, bool> = (0..4).map(|k| (k, k % 2 == 0)).collect();
        make_room(&mut m, 5, |&fresh| fresh);
        assert_eq!(m.len(), 4, "room already");
        make_room(&mut m, 4, |&fresh| fresh);
        assert_eq!(m.len(), 2, "the stale ones went");
        assert!(m.values().all(|&fresh| fresh));
        make_room(&mut m, 2, |&fresh| fresh);
        assert!(m.is_empty(), "nothing stale: all went");
    }
}
