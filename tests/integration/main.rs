//! Nurture's end-to-end tests: the registry suite on every backend (file,
//! memory, a real S3-compatible server) and `nurturectl` run as a process.

mod cli;
mod convergence;
mod deploy;
mod drift;
mod feedback;
mod inference;
mod optimization;
mod registry;
mod retrain;
mod rollout;
mod run;
mod security;
mod server;
mod trainer;
