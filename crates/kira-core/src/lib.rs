//! kira's types and pure rules: ids, companies, roles and scopes, audit
//! hashing, tasks and their state machine, priority, budgets and allocation. Nothing here does I/O or reads the clock; callers pass `now`.

pub mod audit;
pub mod auth;
pub mod budget;
pub mod clock;
pub mod company;
pub mod error;
pub mod ids;
pub mod priority;
pub mod task;

pub use error::ValidationError;
pub use ids::CompanyId;
