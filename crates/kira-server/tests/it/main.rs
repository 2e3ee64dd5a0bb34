//! kira-server's integration tests: the real HTTP API over a real socket,
//! against real SQLite and PostgreSQL.

mod alerts;
mod attacker;
mod audit;
mod auth_matrix;
mod bad_input;
mod browser;
mod budget;
mod dashboard;
mod isolation;
mod knowledge;
mod memory_input;
mod metrics;
mod openapi;
mod reviews;
mod sharing;
mod support;
mod tasks;
mod tools;
