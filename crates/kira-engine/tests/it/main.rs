//! kira-engine's integration tests: the scheduler, workers and budgets
//! against real stores, with the clock in the test's hands.

mod agents;
mod alert_peers;
mod alerts;
mod common;
mod memory;
mod nodes;
mod review;
mod scheduler;
mod sharing;
mod tools;
mod tools_audit;
mod tools_remote;
