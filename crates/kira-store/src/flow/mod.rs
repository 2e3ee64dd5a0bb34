//! Transaction flows that are the same on both backends, written once
//! against [`crate::sql::Conn`]. What differs for real stays per backend:
//! opening the transaction (SQLite's writer turn, PostgreSQL's company
//! scope and row-level security), full-text search, PostgreSQL's batch
//! functions and SQLite's one-command scripts.

pub(crate) mod agents;
pub(crate) mod alerts;
pub(crate) mod batch;
pub(crate) mod budget;
pub(crate) mod companies;
pub(crate) mod company;
pub(crate) mod company_store;
pub(crate) mod counts;
pub(crate) mod dashboard;
pub(crate) mod keys;
pub(crate) mod knowledge;
pub(crate) mod memory;
pub(crate) mod metrics;
pub(crate) mod nodes;
pub(crate) mod sessions;
pub(crate) mod sharing;
pub(crate) mod store;
pub(crate) mod tasks;
pub(crate) mod tools;
