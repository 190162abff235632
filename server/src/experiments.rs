//! This replica's view of the experiments: definitions and outcome tallies
//! folded from the store, refreshed when older than the refresh interval,
//! and updated at once with the outcomes this replica persists.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use nurture_models::experiments::{
    Choice, ExperimentSpec, ExperimentStore, OutcomeBatch, OutcomeRecord, Stats, Tally, choose,
    forget_unlistable, stats, store::ExperimentState,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::sync::Mutex;

use crate::error::ServeError;

/// One experiment as this replica knows it.
#[derive(Debug, Clone)]
pub struct Known {
    /// Definition.
    pub spec: ExperimentSpec,
    /// Stop reason, once stopped.
    pub stopped: Option<String>,
    /// Outcomes folded so far.
    pub tally: Tally,
    newest: Option<i64>,
    applied: HashSet<String>,
    refreshed: Instant,
    refreshing: bool,
}

/// An experiment's refresh in progress; dropping it clears the mark.
struct Refreshing<'a> {
    known: &'a Mutex<HashMap<String, Known>>,
    name: &'a str,
}

impl Drop for Refreshing<'_> {
    fn drop(&mut self) {
        if let Ok(mut known) = self.known.lock()
            && let Some(entry) = known.get_mut(self.name)
        {
            entry.refreshing = false;
        }
    }
}

/// What a request sees of an entry. NOTE: a view, not a clone of the entry:
/// the ids and batch keys grow with every outcome and every request reads
/// this.
fn view(entry: &Known) -> Known {
    Known {
        spec: entry.spec.clone(),
        stopped: entry.stopped.clone(),
        tally: entry.tally.counts(),
        newest: entry.newest,
        applied: HashSet::new(),
        refreshed: entry.refreshed,
        refreshing: false,
    }
}

/// All experiments this replica has touched.
pub struct Experiments {
    store: ExperimentStore,
    known: Mutex<HashMap<String, Known>>,
    rng: std::sync::Mutex<ChaCha8Rng>,
    refresh_every: Duration,
}

impl std::fmt::Debug for Experiments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Experiments")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Experiments {
    /// A view over `store`; `seed` makes the bandit's draws reproducible.
    pub fn new(store: ExperimentStore, seed: u64, refresh_every: Duration) -> Self {
        Experiments {
            store,
            known: Mutex::new(HashMap::new()),
            rng: std::sync::Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            refresh_every,
        }
    }

    /// Creates an experiment.
    pub async fn create(&self, spec: ExperimentSpec) -> Result<ExperimentSpec, ServeError> {
        Ok(self.store.create(spec).await?)
    }

    /// Stops an experiment.
    pub async fn stop(&self, name: &str, reason: &str) -> Result<Known, ServeError> {
        self.store.stop(name, reason).await?;
        self.get(name, true).await
    }

    /// Every experiment, refreshed.
    pub async fn list(&self) -> Result<Vec<Known>, ServeError> {
        let mut out = Vec::new();
        for state in self.store.list().await? {
            out.push(self.get(&state.spec.name, false).await?);
        }
        Ok(out)
    }

    /// An experiment, refreshed from the store when stale (or when `force`).
    ///
    /// NOTE: no lock is held while the store is read. A stale entry is
    /// marked as refreshing; other requests meanwhile get the stale view at
    /// once instead of queueing behind the store (unless they force a
    /// refresh or the experiment is not known yet, when they read too).
    pub async fn get(&self, name: &str, force: bool) -> Result<Known, ServeError> {
        let since = {
            let mut known = self.known.lock().expect("experiments lock");
            match known.get_mut(name) {
                Some(entry) if !force && entry.refreshed.elapsed() < self.refresh_every => {
                    return Ok(view(entry));
                }
                Some(entry) if !force && entry.refreshing => return Ok(view(entry)),
                Some(entry) => {
                    entry.refreshing = true;
                    Some((entry.newest, entry.applied.clone()))
                }
                None => None,
            }
        };
        // Clears the mark however this ends, a dropped request included.
        let mark = Refreshing {
            known: &self.known,
            name,
        };
        let read = self.read(name, since).await;
        drop(mark);
        let (state, batches, newest) = read?;
        let mut known = self.known.lock().expect("experiments lock");
        let entry = known.entry(name.to_owned()).or_insert_with(|| Known {
            tally: Tally::new(state.spec.variants.len()),
            spec: state.spec.clone(),
            stopped: None,
            newest: None,
            applied: HashSet::new(),
            refreshed: Instant::now(),
            refreshing: false,
        });
        entry.stopped = state.stopped;
        for (key, batch) in batches {
            // Another refresh may have folded it meanwhile.
            if entry.applied.insert(key) {
                for outcome in &batch.outcomes {
                    entry.tally.add(&entry.spec, outcome);
                }
            }
        }
        entry.newest = newest.max(entry.newest);
        // Keys the next read can no longer list need not be remembered, so
        // the set stays bounded by the relist window.
        if let Some(since) = entry.newest {
            forget_unlistable(&mut entry.applied, since);
        }
        entry.refreshed = Instant::now();
        Ok(view(entry))
    }

    /// The experiment's log and its outcome batches since `since` (none
    /// known: all of them).
    async fn read(
        &self,
        name: &str,
        since: Option<(Option<i64>, HashSet<String>)>,
    ) -> Result<(ExperimentState, Vec<(String, OutcomeBatch)>, Option<i64>), ServeError> {
        let state = self.store.get(name).await?;
        let (newest, skip) = since.unwrap_or_default();
        let (batches, newest) = self.store.read_outcomes(name, newest, &skip).await?;
        Ok((state, batches, newest))
    }

    /// Persists outcomes of one experiment, then counts them. Returns
    /// (newly counted, already counted).
    pub async fn record(
        &self,
        name: &str,
        outcomes: Vec<OutcomeRecord>,
    ) -> Result<(u64, u64), ServeError> {
        self.get(name, false).await?;
        let key = self.store.append_outcomes(name, outcomes.clone()).await?;
        let mut known = self.known.lock().expect("experiments lock");
        let entry = known.get_mut(name).expect("fetched above");
        entry.applied.insert(key);
        let mut recorded = 0;
        for outcome in &outcomes {
            if entry.tally.add(&entry.spec, outcome) {
                recorded += 1;
            }
        }
        Ok((recorded, outcomes.len() as u64 - recorded))
    }

    /// The bandit's choice given the model's scores.
    pub fn choose(&self, known: &Known, scores: &[f64]) -> Choice {
        let mut rng = self.rng.lock().expect("rng lock");
        choose(&known.spec, &known.tally, scores, &mut *rng)
    }

    /// Statistics of an experiment.
    pub async fn stats(&self, name: &str) -> Result<(Known, Stats), ServeError> {
        let known = self.get(name, false).await?;
        let stats = stats(&known.spec, &known.tally);
        Ok((known, stats))
    }
}
