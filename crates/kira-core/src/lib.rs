//! kira's types and pure rules: ids, companies, roles and scopes, audit
//! hashing, tasks and their state machine, priority, budgets and allocation,
//! episodic memory rules, cross-company sharing rules, the anonymiser, and
//! URLs with their passwords hidden. Nothing here does I/O or reads the
//! clock; callers pass `now`.

pub mod alerts;
pub mod anonymise;
pub mod audit;
pub mod auth;
pub mod budget;
pub mod clock;
pub mod company;
pub mod conflict;
pub mod error;
pub mod ids;
pub mod knowledge;
pub mod memory;
pub mod metrics;
pub mod nodes;
pub mod outbound;
pub mod priority;
pub mod seal;
pub mod sharing;
pub mod storable;
pub mod task;
pub mod tools;
pub mod url;

pub use error::ValidationError;
pub use ids::CompanyId;
