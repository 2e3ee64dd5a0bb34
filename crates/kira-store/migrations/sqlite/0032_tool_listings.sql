-- Tools (issue 23): each MCP server's tools as kira last listed them
-- (`tools/list` when it connected, and again on list_changed), so
-- `kira tools list` shows them without starting or connecting to every
-- server. One row per registration (slot, name) and whose server listed
-- them: a company's (company_id set: its own registration, or a shared
-- one run with the company's credential) or the shared server's (NULL).
-- `source_digest` names how the server was reached (a digest of the
-- registration's source): a listing from another source is not shown.
-- `tools` is a JSON array of {name, description, input_schema}.
CREATE TABLE tool_listings (
    slot          TEXT NOT NULL,
    name          TEXT NOT NULL,
    company_id    TEXT,
    source_digest TEXT NOT NULL,
    tools         TEXT NOT NULL,
    listed_at     TEXT NOT NULL
) STRICT;
CREATE UNIQUE INDEX tool_listings_key ON tool_listings (slot, name, coalesce(company_id, ''));
CREATE INDEX tool_listings_company ON tool_listings (company_id);
