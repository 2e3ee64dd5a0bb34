//! The tool registry's database layers and the companies' tool
//! configurations (issue 23, migration 0021). Infrastructure and domain
//! registrations belong to no company: every company's transaction reads
//! them, and only the admin's writes change them. A company's
//! registrations and configurations are company data (row-level security
//! on PostgreSQL, its id bound in every statement on both backends).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kira_core::audit::AuditRecord;
use kira_core::auth::{AdminScope, CompanyScope};
use kira_core::tools::{Layer, ToolEntry};
use serde::Serialize;
use utoipa::ToSchema;

use crate::Result;

/// Who writes a registration: the admin (infrastructure and domain
/// entries, and any company's), or a company's key (its own entries).
#[derive(Debug, Clone, Copy)]
pub enum ToolWriter<'a> {
    Admin(&'a AdminScope),
    Company(&'a CompanyScope),
}

/// Which registration: its layer, its domain (a domain entry's) and its
/// company (a company entry's), and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolKey {
    pub layer: Layer,
    pub domain: Option<String>,
    pub company: Option<kira_core::CompanyId>,
    pub name: String,
}

impl ToolKey {
    pub fn of(e: &ToolEntry) -> ToolKey {
        ToolKey {
            layer: e.layer,
            domain: e.domain.clone(),
            company: e.company_id.clone(),
            name: e.name.clone(),
        }
    }

    /// What a name is unique within (the table's `slot`).
    pub fn slot(&self) -> String {
        match self.layer {
            Layer::Infrastructure => "infrastructure".to_owned(),
            Layer::Domain => format!("domain:{}", self.domain.as_deref().unwrap_or_default()),
            Layer::Company => format!(
                "company:{}",
                self.company
                    .as_ref()
                    .map(kira_core::CompanyId::as_str)
                    .unwrap_or_default()
            ),
        }
    }
}

/// A company's configuration of one tool.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ToolConfig {
    pub tool: String,
    /// `defaults`: arguments merged under every call's.
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
    pub updated_by: String,
    pub updated_at: DateTime<Utc>,
}

/// A company's credential for a tool, as listed: never its value.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct CredentialInfo {
    pub tool: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub rotated_at: Option<DateTime<Utc>>,
}

/// An MCP server's tools as kira last listed them (`tools/list`, when it
/// connected or heard `list_changed`): what `kira tools list` shows
/// without connecting (migration 0032).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolListing {
    /// The registration's slot ([`ToolKey::slot`]) and name.
    pub slot: String,
    pub name: String,
    /// Whose server listed them: a company's (its own registration, or a
    /// shared one run with the company's credential), or None: the
    /// shared server every company uses.
    pub company_id: Option<kira_core::CompanyId>,
    /// How the server was reached (a digest of the registration's
    /// source): a listing from another source is not the registration's.
    pub source_digest: String,
    /// The tools: a JSON array of `{name, description, input_schema}`.
    pub tools: serde_json::Value,
    pub listed_at: DateTime<Utc>,
}

/// How a credential is written: a new one (Conflict when the tool has
/// one), or a rotation of the one there (NotFound when none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialWrite {
    Set,
    Rotate,
}

#[async_trait]
pub trait ToolStore: Send + Sync {
    /// The infrastructure and domain registrations, and with a scope its
    /// company's too; by name.
    async fn list_tools(&self, company: Option<&CompanyScope>) -> Result<Vec<ToolEntry>>;

    /// Registers `entry` and appends `audit`; Conflict when its slot holds
    /// the name already. A company key may write its own company's entries
    /// only (the store refuses another's with NotFound).
    async fn add_tool(
        &self,
        who: ToolWriter<'_>,
        entry: &ToolEntry,
        audit: AuditRecord,
    ) -> Result<ToolEntry>;

    /// Removes the registration and appends `audit`; NotFound when absent.
    async fn remove_tool(
        &self,
        who: ToolWriter<'_>,
        key: &ToolKey,
        audit: AuditRecord,
    ) -> Result<()>;

    /// Keeps `listing` in place of the one its server left before. A
    /// company's listing is written in its company's transaction (a
    /// company key: its own only), a shared server's by the admin.
    async fn put_tool_listing(&self, who: ToolWriter<'_>, listing: &ToolListing) -> Result<()>;

    /// The shared servers' listings, and with a scope its company's too.
    async fn tool_listings(&self, company: Option<&CompanyScope>) -> Result<Vec<ToolListing>>;

    /// The company's tool configurations, by tool.
    async fn tool_configs(&self, scope: &CompanyScope) -> Result<Vec<ToolConfig>>;

    /// Stores the company's sealed credential for `tool` and appends
    /// `audit` (which never holds the value).
    #[allow(clippy::too_many_arguments)]
    async fn put_credential(
        &self,
        scope: &CompanyScope,
        tool: &str,
        sealed: &str,
        how: CredentialWrite,
        by: &str,
        at: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<()>;

    /// The company's credentials' names and ages.
    async fn list_credentials(&self, scope: &CompanyScope) -> Result<Vec<CredentialInfo>>;

    /// The company's sealed credentials by tool (the wrapper opens them).
    async fn sealed_credentials(&self, scope: &CompanyScope) -> Result<Vec<(String, String)>>;

    /// Removes the company's credential for `tool` and appends `audit`;
    /// NotFound when none.
    async fn delete_credential(
        &self,
        scope: &CompanyScope,
        tool: &str,
        audit: AuditRecord,
    ) -> Result<()>;

    /// Sets (or, with None, removes) the company's configuration of `tool`
    /// and appends `audit`.
    async fn put_tool_config(
        &self,
        scope: &CompanyScope,
        tool: &str,
        config: Option<&serde_json::Value>,
        by: &str,
        at: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<()>;
}
