//! kira's types and pure rules: ids, companies, roles and scopes, audit
//! hashing. Nothing here does I/O or reads the clock; callers pass `now`.

pub mod audit;
pub mod auth;
pub mod clock;
pub mod company;
pub mod error;
pub mod ids;

pub use error::ValidationError;
pub use ids::CompanyId;
