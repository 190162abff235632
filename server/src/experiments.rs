//! This replica's view of the experiments: definitions and outcome tallies
//! folded from the store, refreshed when older than the refresh interval,
//! and updated at once with the outcomes this replica persists.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use nurture_models::experiments::{
    Choice, ExperimentSpec, ExperimentStore, OutcomeRecord, Stats, Tally, choose,
    forget_unlistable, stats,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::sync::Mutex;

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
    pub async fn get(&self, name: &str, force: bool) -> Result<Known, ServeError> {
        let mut known = self.known.lock().await;
        let stale = known
            .get(name)
            .is_none_or(|k| force || k.refreshed.elapsed() >= self.refresh_every);
        if stale {
            let state = self.store.get(name).await?;
            let entry = known.entry(name.to_owned()).or_insert_with(|| Known {
                tally: Tally::new(state.spec.variants.len()),
                spec: state.spec.clone(),
                stopped: None,
                newest: None,
                applied: HashSet::new(),
                refreshed: Instant::now(),
            });
            entry.stopped = state.stopped;
            let (batches, newest) = self
                .store
                .read_outcomes(name, entry.newest, &entry.applied)
                .await?;
            for (key, batch) in batches {
                for outcome in &batch.outcomes {
                    entry.tally.add(&entry.spec, outcome);
                }
                entry.applied.insert(key);
            }
            entry.newest = newest.or(entry.newest);
            // Keys the next read can no longer list need not be remembered,
            // so the set stays bounded by the relist window.
            if let Some(since) = entry.newest {
                forget_unlistable(&mut entry.applied, since);
            }
            entry.refreshed = Instant::now();
        }
        // NOTE: a view, not a clone of the entry: the ids and batch keys grow
        // with every outcome and every request reads this.
        let entry = known.get(name).expect("inserted above");
        Ok(Known {
            spec: entry.spec.clone(),
            stopped: entry.stopped.clone(),
            tally: entry.tally.counts(),
            newest: entry.newest,
            applied: HashSet::new(),
            refreshed: entry.refreshed,
        })
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
        let mut known = self.known.lock().await;
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
