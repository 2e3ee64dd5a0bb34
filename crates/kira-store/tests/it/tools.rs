//! The MCP servers' stored tool listings (migration 0032), on SQLite and
//! PostgreSQL: a company's listing is read in its company's scope only, a
//! shared server's by every company; a company key writes its own
//! company's only; a newer listing replaces the one before; removing a
//! registration or deleting its company takes its listing along.

use chrono::SubsecRound;
use kira_core::CompanyId;
use kira_core::auth::Principal;
use kira_core::tools::{Layer, ToolEntry, ToolSource};
use kira_store::StoreError;
use kira_store::tools::{ToolKey, ToolListing, ToolWriter};
use serde_json::json;

use crate::support::{Fresh, create, record, scope, t0};

conformance!(a_listing_is_read_where_its_registration_is);

fn stdio(name: &str, layer: Layer, company: Option<&str>) -> ToolEntry {
    ToolEntry {
        name: name.into(),
        layer,
        domain: None,
        company_id: company.map(|c| CompanyId::parse(c).expect("id")),
        description: String::new(),
        source: ToolSource::McpStdio {
            command: "/bin/true".into(),
            args: vec![],
            env: Default::default(),
        },
        timeout_ms: None,
        created_by: "system".into(),
        created_at: Some(t0()),
    }
}

fn listing(e: &ToolEntry, company: Option<&str>, tool: &str, minutes: i64) -> ToolListing {
    let key = ToolKey::of(e);
    ToolListing {
        slot: key.slot(),
        name: key.name,
        company_id: company.map(|c| CompanyId::parse(c).expect("id")),
        source_digest: "d1".into(),
        tools: json!([{"name": tool, "description": "x", "input_schema": {"type": "object"}}]),
        listed_at: (t0() + chrono::TimeDelta::minutes(minutes)).trunc_subsecs(6),
    }
}

/// (name, company, first tool) of what `company` reads.
async fn seen(f: &Fresh, company: Option<&str>) -> Vec<(String, Option<String>, String)> {
    let s = company.map(scope);
    f.store
        .tool_listings(s.as_ref())
        .await
        .expect("listings")
        .into_iter()
        .map(|l| {
            (
                l.name,
                l.company_id.map(|c| c.to_string()),
                l.tools[0]["name"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

async fn a_listing_is_read_where_its_registration_is(f: Fresh) {
    let s = &*f.store;
    create(s, "acme").await;
    create(s, "globex").await;
    let admin = Principal::system().admin().expect("admin");
    let (acme, globex) = (scope("acme"), scope("globex"));
    let own = stdio("crm", Layer::Company, Some("acme"));
    let shared = stdio("files", Layer::Infrastructure, None);
    s.add_tool(
        ToolWriter::Company(&acme),
        &own,
        record(Some("acme"), "tool.add"),
    )
    .await
    .expect("own");
    s.add_tool(ToolWriter::Admin(&admin), &shared, record(None, "tool.add"))
        .await
        .expect("shared");

    s.put_tool_listing(
        ToolWriter::Company(&acme),
        &listing(&own, Some("acme"), "lookup", 0),
    )
    .await
    .expect("acme's listing");
    s.put_tool_listing(
        ToolWriter::Admin(&admin),
        &listing(&shared, None, "read", 0),
    )
    .await
    .expect("the shared listing");
    // A shared registration run with globex's credential: globex's own.
    s.put_tool_listing(
        ToolWriter::Admin(&admin),
        &listing(&shared, Some("globex"), "read_private", 0),
    )
    .await
    .expect("globex's listing of the shared server");
    // A company key writes its own company's listings only.
    let refused = s
        .put_tool_listing(
            ToolWriter::Company(&globex),
            &listing(&own, Some("acme"), "spy", 0),
        )
        .await;
    assert!(matches!(refused, Err(StoreError::NotFound)), "{refused:?}");
    let refused = s
        .put_tool_listing(
            ToolWriter::Company(&globex),
            &listing(&shared, None, "spy", 0),
        )
        .await;
    assert!(matches!(refused, Err(StoreError::NotFound)), "{refused:?}");

    let shared_row = ("files".to_owned(), None, "read".to_owned());
    assert_eq!(
        seen(&f, Some("acme")).await,
        [
            (
                "crm".to_owned(),
                Some("acme".to_owned()),
                "lookup".to_owned()
            ),
            shared_row.clone()
        ]
    );
    assert_eq!(
        seen(&f, Some("globex")).await,
        [
            shared_row.clone(),
            (
                "files".to_owned(),
                Some("globex".to_owned()),
                "read_private".to_owned()
            )
        ]
    );
    assert_eq!(seen(&f, None).await, std::slice::from_ref(&shared_row));

    // A newer listing replaces the one before, in its place only.
    let newer = listing(&own, Some("acme"), "lookup_v2", 5);
    s.put_tool_listing(ToolWriter::Company(&acme), &newer)
        .await
        .expect("relisted");
    let acme_rows = s.tool_listings(Some(&acme)).await.expect("listings");
    assert_eq!(acme_rows.len(), 2, "{acme_rows:?}");
    assert_eq!(acme_rows[0], newer);

    // Removing the registration takes its listing along.
    s.remove_tool(
        ToolWriter::Company(&acme),
        &ToolKey::of(&own),
        record(Some("acme"), "tool.remove"),
    )
    .await
    .expect("removed");
    assert_eq!(
        seen(&f, Some("acme")).await,
        std::slice::from_ref(&shared_row)
    );

    // Globex's own listing goes with globex.
    s.delete_company(&globex, record(Some("globex"), "company.delete"))
        .await
        .expect("deleted");
    assert_eq!(seen(&f, None).await, [shared_row]);
    let left = s.tool_listings(Some(&acme)).await.expect("listings");
    assert!(left.iter().all(|l| l.company_id.is_none()), "{left:?}");
}
