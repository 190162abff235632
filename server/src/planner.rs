//! The watcher's decisions as pure functions: given what the release log
//! wants and what a slot holds, which versions to load, and which
//! deployment to install once the loads are done. The watcher only carries
//! the plan out (fetching, loading, storing the pointer), so each rule is
//! unit-tested here without a store, a model or a clock.

use std::collections::BTreeSet;

/// What the release log wants served.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Live version.
    pub live: Option<u64>,
    /// Canary version and percent.
    pub canary: Option<(u64, u8)>,
    /// The last good live version before `live` (kept warm for rollback).
    pub previous: Option<u64>,
    /// Revoked versions: never served.
    pub revoked: BTreeSet<u64>,
    /// Shadow version and percent (of live requests mirrored).
    pub shadow: Option<(u64, u8)>,
}

/// What a slot holds now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    /// Live version.
    pub live: Option<u64>,
    /// Canary version and percent.
    pub canary: Option<(u64, u8)>,
    /// Previous live version.
    pub previous: Option<u64>,
    /// Versions loaded for pinned requests.
    pub pinned: BTreeSet<u64>,
    /// Versions refused for what they are (not for an unreachable store).
    pub refused: BTreeSet<u64>,
    /// The version loaded as the shadow (its own instance, whose workers
    /// run at the lowest priority; never shared with live, canary or pins).
    pub shadow: Option<u64>,
}

impl Held {
    fn has(&self, version: u64) -> bool {
        self.live == Some(version)
            || self.canary.map(|(v, _)| v) == Some(version)
            || self.previous == Some(version)
            || self.pinned.contains(&version)
    }
}

/// The deployment to install, by version number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    /// Live version.
    pub live: Option<u64>,
    /// Canary and percent.
    pub canary: Option<(u64, u8)>,
    /// Previous live version.
    pub previous: Option<u64>,
}

/// The versions to load, in order (live, canary, previous): wanted, not
/// held already (served or pinned: reused), not refused before.
pub fn loads(desired: &Desired, held: &Held) -> Vec<u64> {
    let mut wanted = Vec::new();
    for version in [
        desired.live,
        desired
            .canary
            .map(|(v, _)| v)
            .filter(|v| Some(*v) != desired.live),
        desired.previous.filter(|v| Some(*v) != desired.live),
    ]
    .into_iter()
    .flatten()
    {
        if !held.has(version)
            && !held.refused.contains(&version)
            && !desired.revoked.contains(&version)
            && !wanted.contains(&version)
        {
            wanted.push(version);
        }
    }
    wanted
}

/// The deployment once the loads are done; `available` holds every version
/// that is now loaded (held before or loaded by this pass).
pub fn target(desired: &Desired, held: &Held, available: &BTreeSet<u64>) -> Target {
    let servable = |v: &u64| available.contains(v) && !desired.revoked.contains(v);
    // A failed load keeps the current live version, unless it was revoked.
    let live = desired
        .live
        .filter(servable)
        .or(held.live.filter(|v| !desired.revoked.contains(v)));
    let canary = desired
        .canary
        .filter(|(v, _)| Some(*v) != live && servable(v));
    let previous = desired.previous.filter(|v| Some(*v) != live && servable(v));
    Target {
        live,
        canary,
        previous,
    }
}

/// What to do about the shadow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowPlan {
    /// No shadow (none wanted, or it cannot be served).
    None,
    /// Keep the loaded shadow instance.
    Keep,
    /// Load this version as the shadow.
    Load(u64),
}

/// The shadow: wanted, not live, not revoked and not refused before; the
/// held instance is kept when it is the wanted version.
pub fn shadow(desired: &Desired, held: &Held) -> ShadowPlan {
    let Some((version, _)) = desired.shadow else {
        return ShadowPlan::None;
    };
    if desired.live == Some(version) || desired.revoked.contains(&version) {
        return ShadowPlan::None;
    }
    if held.shadow == Some(version) {
        return ShadowPlan::Keep;
    }
    if held.refused.contains(&version) {
        return ShadowPlan::None;
    }
    ShadowPlan::Load(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(versions: &[u64]) -> BTreeSet<u64> {
        versions.iter().copied().collect()
    }

    fn desired(live: u64) -> Desired {
        Desired {
            live: Some(live),
            ..Desired::default()
        }
    }

    #[test]
    fn a_new_live_version_is_loaded_then_installed() {
        let held = Held {
            live: Some(1),
            ..Held::default()
        };
        let want = Desired {
            previous: Some(1),
            ..desired(2)
        };
        assert_eq!(loads(&want, &held), [2]);
        let done = target(&want, &held, &set(&[1, 2]));
        assert_eq!(
            done,
            Target {
                live: Some(2),
                canary: None,
                previous: Some(1)
            }
        );
    }

    #[test]
    fn a_failed_load_keeps_the_current_live_version() {
        let held = Held {
            live: Some(1),
            ..Held::default()
        };
        let done = target(&desired(2), &held, &set(&[1]));
        assert_eq!(done.live, Some(1));
    }

    #[test]
    fn a_revoked_version_is_never_served_not_even_as_a_fallback() {
        // The log rolled back from 2 (revoked) to 1, whose load fails.
        let held = Held {
            live: Some(2),
            ..Held::default()
        };
        let want = Desired {
            revoked: set(&[2]),
            ..desired(1)
        };
        assert_eq!(target(&want, &held, &set(&[2])).live, None);
        // Nor loaded, nor kept as previous or canary.
        let want = Desired {
            canary: Some((2, 10)),
            previous: Some(2),
            revoked: set(&[2]),
            ..desired(1)
        };
        assert_eq!(loads(&want, &Held::default()), [1]);
        let done = target(&want, &Held::default(), &set(&[1, 2]));
        assert_eq!((done.canary, done.previous), (None, None));
    }

    #[test]
    fn the_previous_live_version_stays_warm() {
        let held = Held {
            live: Some(2),
            previous: Some(1),
            ..Held::default()
        };
        let want = Desired {
            previous: Some(1),
            ..desired(2)
        };
        assert!(loads(&want, &held).is_empty(), "nothing to load");
        assert_eq!(target(&want, &held, &set(&[1, 2])).previous, Some(1));
        // A rollback is a pointer swap: 1 is held, nothing is loaded.
        let back = Desired {
            previous: Some(2),
            ..desired(1)
        };
        assert!(loads(&back, &held).is_empty());
        assert_eq!(target(&back, &held, &set(&[1, 2])).live, Some(1));
    }

    #[test]
    fn versions_loaded_for_pins_are_reused() {
        let held = Held {
            live: Some(1),
            pinned: set(&[3]),
            ..Held::default()
        };
        assert!(loads(&desired(3), &held).is_empty());
        assert_eq!(target(&desired(3), &held, &set(&[1, 3])).live, Some(3));
    }

    #[test]
    fn a_version_refused_for_what_it_is_is_not_loaded_again() {
        let held = Held {
            live: Some(1),
            refused: set(&[2]),
            ..Held::default()
        };
        assert!(loads(&desired(2), &held).is_empty());
        assert_eq!(target(&desired(2), &held, &set(&[1])).live, Some(1));
    }

    #[test]
    fn a_canary_needs_its_own_version_and_a_successful_load() {
        let held = Held {
            live: Some(1),
            ..Held::default()
        };
        let same = Desired {
            canary: Some((1, 20)),
            ..desired(1)
        };
        assert!(loads(&same, &held).is_empty());
        assert_eq!(target(&same, &held, &set(&[1])).canary, None);
        let other = Desired {
            canary: Some((2, 20)),
            ..desired(1)
        };
        assert_eq!(loads(&other, &held), [2]);
        assert_eq!(
            target(&other, &held, &set(&[1])).canary,
            None,
            "load failed"
        );
        assert_eq!(target(&other, &held, &set(&[1, 2])).canary, Some((2, 20)));
    }

    #[test]
    fn a_shadow_is_its_own_instance_and_never_a_revoked_or_live_version() {
        let want = Desired {
            shadow: Some((2, 100)),
            ..desired(1)
        };
        // Held as live elsewhere does not count: the shadow is loaded apart.
        let held = Held {
            live: Some(1),
            pinned: set(&[2]),
            ..Held::default()
        };
        assert_eq!(shadow(&want, &held), ShadowPlan::Load(2));
        let held = Held {
            shadow: Some(2),
            ..held
        };
        assert_eq!(shadow(&want, &held), ShadowPlan::Keep);
        // Another version replaces it.
        let other = Desired {
            shadow: Some((3, 50)),
            ..desired(1)
        };
        assert_eq!(shadow(&other, &held), ShadowPlan::Load(3));
        // Revoked, live, refused or not wanted: none.
        let revoked = Desired {
            revoked: set(&[2]),
            ..want.clone()
        };
        assert_eq!(shadow(&revoked, &held), ShadowPlan::None);
        let live = Desired {
            shadow: Some((2, 100)),
            ..desired(2)
        };
        assert_eq!(shadow(&live, &held), ShadowPlan::None);
        let refused = Held {
            refused: set(&[3]),
            ..held.clone()
        };
        assert_eq!(shadow(&other, &refused), ShadowPlan::None);
        assert_eq!(shadow(&desired(1), &held), ShadowPlan::None);
    }
}
