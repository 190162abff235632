//! Guarded rollouts: the decision rule a guard applies to a canary on the
//! outcomes of both arms ([`sequential`]), and the rollout as the release
//! log records it ([`policy`]).

pub mod operations;
pub mod policy;
pub mod sequential;
