//! Message-variant experiments: definitions and stopping rules, outcome
//! records, the contextual Thompson-sampling bandit, statistics, and their
//! append-only storage beside the models.

pub mod spec;
pub mod stats;
pub mod store;

pub use spec::{ExperimentEvent, ExperimentSpec, OutcomeRecord, VariantSpec};
pub use stats::{Choice, Stats, Tally, choose, stats};
pub use store::{ExperimentStore, OutcomeBatch, forget_unlistable};
