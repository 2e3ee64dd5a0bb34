//! End-to-end tests: the real `kira` binary, started as the server and run
//! as the client, the way an operator uses it. One test binary, so the
//! crate links once.

mod agents;
mod config_errors;
mod crash;
mod demo;
mod knowledge;
mod memory;
mod metrics;
mod postgres;
mod reviews;
mod secret;
mod story;
mod stress;
mod support;
mod tamper;
mod tasks;
mod tools;
