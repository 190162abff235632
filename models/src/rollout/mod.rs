//! Guarded rollouts: the decision rule a guard applies to a canary on the
//! outcomes of both arms ([`sequential`]).

pub mod sequential;
