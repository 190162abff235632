//! The watcher: polls each model's release log, loads the versions it names
//! completely before swapping them in, and keeps health and metrics honest.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::Utc;
use nurture_models::registry::{REPORT_EVERY, REPORT_FRESH, ReplicaReport};
use nurture_models::{LogFollower, ModelName, ModelState, Registry};
use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::cache::DiskCache;
use crate::deployment::{Deployment, Slot};
use crate::model::{LoadedVersion, VersionSource};
use crate::planner;

/// How long the first pass waits for the store before serving the cached
/// release state.
const CACHE_GRACE: Duration = Duration::from_millis(300);

/// A slot and the gRPC service whose health follows it.
#[derive(Debug, Clone)]
pub struct Watched {
    /// The slot.
    pub slot: Arc<Slot>,
    /// Fully qualified gRPC service name (e.g. `nurture.v1.ChurnService`).
    pub service: Option<&'static str>,
}

/// Follows the release logs.
pub struct Watcher {
    /// The registry.
    pub registry: Registry,
    /// Models served.
    pub watched: Vec<Watched>,
    /// Where loaded versions come from (cache, registry, loader).
    pub source: Arc<VersionSource>,
    /// Local cache of release states.
    pub cache: DiskCache,
    /// Most versions each model keeps loaded for pinned requests.
    pub max_pinned: usize,
    /// Poll period.
    pub poll_interval: Duration,
    /// Health to update.
    pub health: HealthReporter,
    /// Generic models found in the registry (shared with the inference service).
    pub generic: crate::services::inference::GenericSlots,
    /// Registry models that are neither served typed models nor generic.
    pub ignored: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Each served model's release log as read so far, so a poll fetches
    /// only the events written since the last one.
    pub followers: tokio::sync::Mutex<HashMap<String, LogFollower>>,
    /// Starts a pass at once (e.g. this replica's guard just wrote a
    /// decision: its traffic follows without waiting for the next poll).
    pub wake: Arc<tokio::sync::Notify>,
    /// This replica's name in its reports.
    pub replica: String,
    /// The last report written per model, and when.
    pub reported: std::sync::Mutex<HashMap<String, (ReplicaReport, std::time::Instant)>>,
    /// Every replica's fresh reports per model, as last read (for the
    /// status RPC, which never waits on the store).
    pub replica_view: ReplicaView,
}

/// Every replica's fresh reports per model, as this replica last read them.
pub type ReplicaView = Arc<std::sync::RwLock<HashMap<String, Vec<ReplicaReport>>>>;

impl Watcher {
    /// Polls until `shutdown` turns true.
    ///
    /// Passes start on a fixed cadence (a pass that overruns the interval is
    /// followed at once by the next), so a change to a release log is read
    /// by a pass that starts at most one interval after it was written.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut ticks = tokio::time::interval(self.poll_interval.max(Duration::from_millis(1)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        // The first pass reads the store; if a model is not live shortly
        // after, the cached release state serves meanwhile (the store may be
        // unreachable, and its client retries for a long time). The store's
        // answer, when it comes, replaces it.
        let first = async {
            tokio::join!(self.poll_once(), async {
                tokio::time::sleep(CACHE_GRACE).await;
                self.serve_cached().await;
            })
        };
        tokio::select! {
            _ = first => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = self.wake.notified() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            // NOTE: a pass can be stuck on an unreachable store for minutes
            // (its client retries); shutdown does not wait for it.
            tokio::select! {
                _ = self.poll_once() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// Finds generic models published since the last pass.
    async fn discover_generic(&self) {
        let names = match self.registry.list_models().await {
            Ok(names) => names,
            Err(error) => {
                tracing::warn!(%error, "cannot list the registry's models");
                return;
            }
        };
        for name in names {
            let known = self.watched.iter().any(|w| w.slot.name == name.as_str())
                || self
                    .generic
                    .read()
                    .expect("generic slots lock")
                    .contains_key(name.as_str())
                || self
                    .ignored
                    .lock()
                    .expect("ignored lock")
                    .contains(name.as_str());
            if known {
                continue;
            }
            match self.registry.state(&name).await {
                Ok(state) if state.kind == Some(nurture_models::ModelKind::Generic) => {
                    tracing::info!(model = %name, "serving a new generic model");
                    let slot = Arc::new(Slot::with_pins(
                        name.as_str(),
                        nurture_models::ModelKind::Generic,
                        self.source.clone(),
                        self.max_pinned,
                    ));
                    self.generic
                        .write()
                        .expect("generic slots lock")
                        .insert(name.to_string(), slot);
                }
                Ok(state) if state.kind.is_some() => {
                    self.ignored
                        .lock()
                        .expect("ignored lock")
                        .insert(name.to_string());
                }
                _ => {}
            }
        }
    }

    /// Serves the cached release state of every model that is not live yet,
    /// with versions from the disk cache only.
    async fn serve_cached(&self) {
        let mut served = false;
        for watched in &self.watched {
            let slot = &watched.slot;
            if slot.deployment.load().live.is_some() {
                continue;
            }
            let Some(state) = self.cache.load_state(&slot.name).await else {
                continue;
            };
            tracing::info!(model = %slot.name, "the store has not answered yet: serving the cached release state");
            self.apply(slot, state, SystemTime::now(), true).await;
            served = true;
        }
        if served {
            self.update_health().await;
        }
    }

    /// One pass over every model.
    pub async fn poll_once(&self) {
        let pass_started = SystemTime::now();
        self.discover_generic().await;
        let generic: Vec<Arc<Slot>> = self
            .generic
            .read()
            .expect("generic slots lock")
            .values()
            .cloned()
            .collect();
        for slot in &generic {
            self.sync(slot, pass_started).await;
        }
        for watched in &self.watched {
            self.sync(&watched.slot, pass_started).await;
            self.report(&watched.slot).await;
        }
        self.update_health().await;
    }

    /// Writes what this replica serves of `slot`'s model, when it changed
    /// or every [`REPORT_EVERY`].
    async fn report(&self, slot: &Slot) {
        let deployment = slot.deployment.load();
        let report = {
            let status = slot.status.lock().expect("status lock");
            let desired_canary = status.desired_canary.map(|(version, _)| version);
            ReplicaReport {
                replica: self.replica.clone(),
                at: Utc::now(),
                live: deployment.live.as_ref().map(|v| v.version),
                canary: deployment.canary.as_ref().map(|(v, _)| v.version),
                desired_canary,
                canary_error: desired_canary
                    .and_then(|version| status.refused(version))
                    .map(|error| format!("{}: {}", error.error_type, error.message)),
                operations: Vec::new(),
            }
        };
        let due = match self.reported.lock().expect("reports lock").get(&slot.name) {
            Some((last, written)) => {
                ReplicaReport {
                    at: report.at,
                    operations: Vec::new(),
                    ..last.clone()
                } != report
                    || written.elapsed() >= REPORT_EVERY
            }
            None => true,
        };
        if !due {
            return;
        }
        // The calls of live and canary go with every report written (they
        // change with every request, so they do not make one due).
        let mut report = report;
        report.operations = [
            deployment.live.as_ref(),
            deployment.canary.as_ref().map(|(v, _)| v),
        ]
        .into_iter()
        .flatten()
        .flat_map(|v| v.operations.snapshot(v.version))
        .collect();
        let name = ModelName::new(&slot.name).expect("slot names are validated at start");
        match self.registry.write_replica_report(&name, &report).await {
            Ok(()) => {
                self.reported
                    .lock()
                    .expect("reports lock")
                    .insert(slot.name.clone(), (report, std::time::Instant::now()));
            }
            Err(error) => {
                tracing::warn!(model = %slot.name, %error, "cannot write this replica's report");
                return;
            }
        }
        // The others' reports, read as often as this one is written.
        match self.registry.replica_reports(&name, REPORT_FRESH).await {
            Ok(reports) => {
                self.replica_view
                    .write()
                    .expect("replica view lock")
                    .insert(slot.name.clone(), reports);
            }
            Err(error) => {
                tracing::warn!(model = %slot.name, %error, "cannot read the replicas' reports");
            }
        }
    }

    /// Health follows what each slot serves now.
    async fn update_health(&self) {
        for watched in &self.watched {
            let live = watched.slot.deployment.load().live.is_some();
            if let Some(service) = watched.service {
                let status = if live {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                self.health.set_service_status(service, status).await;
            }
        }
        let all_live = self
            .watched
            .iter()
            .all(|w| w.slot.deployment.load().live.is_some());
        let overall = if all_live {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.health.set_service_status("", overall).await;
    }

    async fn read_state(&self, slot: &Slot) -> Option<ModelState> {
        let name = ModelName::new(&slot.name).expect("slot names are validated at start");
        let read = {
            let mut followers = self.followers.lock().await;
            let follower = followers
                .entry(slot.name.clone())
                .or_insert_with(|| LogFollower::new(name));
            follower.state(&self.registry).await
        };
        match read {
            Ok(state) => {
                self.cache.save_state(&state).await;
                let mut status = slot.status.lock().expect("status lock");
                status.last_poll_at = Some(Utc::now());
                status.last_poll_error = None;
                Some(state)
            }
            Err(error) => {
                metrics::counter!("nurture_registry_poll_errors_total", "model" => slot.name.clone()).increment(1);
                tracing::warn!(model = %slot.name, %error, "cannot read the release log");
                slot.status.lock().expect("status lock").last_poll_error = Some(error.to_string());
                // Until this replica has read the store once, fall back on
                // the last state it cached.
                if slot.deployment.load().live.is_none() {
                    let cached = self.cache.load_state(&slot.name).await;
                    if cached.is_some() {
                        tracing::info!(model = %slot.name, "serving from the cached release state");
                    }
                    cached
                } else {
                    None
                }
            }
        }
    }

    /// Brings `slot` in line with its release log; `pass_started` is when
    /// the poll pass began, logged with each swap.
    async fn sync(&self, slot: &Slot, pass_started: SystemTime) {
        let Some(state) = self.read_state(slot).await else {
            return;
        };
        self.apply(slot, state, pass_started, false).await;
    }

    /// Brings `slot` in line with `state`. With `cached_only`, versions come
    /// from the disk cache alone, failures are not recorded, and nothing is
    /// installed once another pass has made a version live.
    async fn apply(
        &self,
        slot: &Slot,
        state: ModelState,
        pass_started: SystemTime,
        cached_only: bool,
    ) {
        if state.versions.is_empty() {
            return;
        }
        let revoked: std::collections::BTreeSet<u64> = state
            .versions
            .values()
            .filter(|r| r.revoked.is_some())
            .map(|r| r.version)
            .collect();
        {
            let mut status = slot.status.lock().expect("status lock");
            status.known = state.versions.keys().copied().collect();
            status.desired_live = state.live;
            status.desired_canary = state.canary.map(|c| (c.version, c.percent));
            status.desired_shadow = state.shadow.map(|c| (c.version, c.percent));
            status.revoked = revoked.clone();
        }
        let current = slot.deployment.load_full();
        let previous_good = state.live.and_then(|live| {
            state
                .live_history
                .iter()
                .rev()
                .copied()
                .find(|v| *v != live && state.is_servable(*v))
        });
        // The decisions are the planner's (pure, unit-tested); this only
        // carries them out.
        let desired = planner::Desired {
            live: state.live,
            canary: state.canary.map(|c| (c.version, c.percent)),
            previous: previous_good,
            revoked,
            shadow: state.shadow.map(|c| (c.version, c.percent)),
        };
        let held = {
            let status = slot.status.lock().expect("status lock");
            planner::Held {
                live: current.live.as_ref().map(|v| v.version),
                canary: current.canary.as_ref().map(|(v, p)| (v.version, *p)),
                previous: current.previous.as_ref().map(|v| v.version),
                pinned: slot.pinned_versions().into_iter().collect(),
                refused: status
                    .load_errors
                    .iter()
                    .filter(|e| !e.is_transient())
                    .map(|e| e.version)
                    .collect(),
                shadow: current.shadow.as_ref().map(|(v, _)| v.version),
            }
        };
        let mut loaded: Vec<Arc<LoadedVersion>> = Vec::new();
        for version in planner::loads(&desired, &held) {
            if cached_only {
                if let Some(version) = self
                    .source
                    .load_cached(&slot.name, slot.kind, version)
                    .await
                {
                    loaded.push(Arc::new(version));
                }
                continue;
            }
            match self.source.load(&slot.name, slot.kind, version).await {
                Ok(version) => loaded.push(Arc::new(version)),
                Err(error) => slot.record_load_error(error),
            }
        }
        let find = |version: u64| {
            loaded
                .iter()
                .find(|v| v.version == version)
                .cloned()
                .or_else(|| slot.loaded_version(&current, version))
        };
        let available: std::collections::BTreeSet<u64> = [held.live, held.previous]
            .into_iter()
            .flatten()
            .chain(held.canary.map(|(v, _)| v))
            .chain(held.pinned.iter().copied())
            .chain(loaded.iter().map(|v| v.version))
            .collect();
        let target = planner::target(&desired, &held, &available);
        let live = target.live.and_then(find);
        let canary = target
            .canary
            .and_then(|(version, percent)| find(version).map(|v| (v, percent)));
        let previous = target.previous.and_then(find);
        let shadow = match planner::shadow(&desired, &held) {
            planner::ShadowPlan::None => None,
            planner::ShadowPlan::Keep => current.shadow.clone(),
            planner::ShadowPlan::Load(_) if cached_only => None,
            planner::ShadowPlan::Load(version) => {
                match self
                    .source
                    .load_background(&slot.name, slot.kind, version)
                    .await
                {
                    Ok(loaded) => Some((Arc::new(loaded), 0)),
                    Err(error) => {
                        slot.record_load_error(error);
                        None
                    }
                }
            }
        }
        .zip(desired.shadow)
        .map(|((loaded, _), (_, percent))| (loaded, percent));

        let same = |a: &Option<Arc<LoadedVersion>>, b: &Option<Arc<LoadedVersion>>| {
            a.as_ref().map(|v| v.version) == b.as_ref().map(|v| v.version)
        };
        let live_changed = !same(&current.live, &live);
        let canary_changed = current.canary.as_ref().map(|(v, p)| (v.version, *p))
            != canary.as_ref().map(|(v, p)| (v.version, *p));
        let shadow_changed = current.shadow.as_ref().map(|(v, p)| (v.version, *p))
            != shadow.as_ref().map(|(v, p)| (v.version, *p));
        // NOTE: no `.await` between this check and the store below, so the
        // store's answer cannot be overwritten by the cached state.
        if cached_only && slot.deployment.load().live.is_some() {
            return;
        }
        if live_changed || canary_changed || shadow_changed || !same(&current.previous, &previous) {
            let version_of = |v: &Option<Arc<LoadedVersion>>| v.as_ref().map_or(0, |v| v.version);
            let (from_version, to_version) = (version_of(&current.live), version_of(&live));
            metrics::gauge!("nurture_live_version", "model" => slot.name.clone())
                .set(to_version as f64);
            let swap_began = SystemTime::now();
            slot.deployment.store(Arc::new(Deployment {
                live,
                canary,
                previous,
                shadow,
            }));
            let swap_done = SystemTime::now();
            if live_changed {
                metrics::counter!("nurture_model_swaps_total", "model" => slot.name.clone(), "change" => "live").increment(1);
                // The timestamps bracket the pointer swap: requests that read
                // the slot before `swap_began_us` got `from_version`, after
                // `swap_done_us` they get `to_version`.
                tracing::info!(
                    model = %slot.name,
                    from_version,
                    to_version,
                    pass_started_us = unix_micros(pass_started),
                    swap_began_us = unix_micros(swap_began),
                    swap_done_us = unix_micros(swap_done),
                    "live version swapped"
                );
            }
            if canary_changed {
                metrics::counter!("nurture_model_swaps_total", "model" => slot.name.clone(), "change" => "canary").increment(1);
            }
        }
    }
}

/// Microseconds since the Unix epoch (0 for a clock set before it).
fn unix_micros(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
