-- Tools (issue 23): the table of SQLite's 0032, under the same policies
-- as tool_registrations: a company's listings are company data under
-- row-level security; the shared servers' (company_id NULL) are read by
-- every company's transaction and written only where app.tools_registry
-- is set.
CREATE TABLE tool_listings (
    slot          TEXT COLLATE "C" NOT NULL,
    name          TEXT COLLATE "C" NOT NULL,
    company_id    TEXT COLLATE "C" REFERENCES companies (company_id),
    source_digest TEXT NOT NULL,
    tools         JSONB NOT NULL,
    listed_at     TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX tool_listings_key ON tool_listings (slot, name, coalesce(company_id, ''));
CREATE INDEX tool_listings_company ON tool_listings (company_id);

ALTER TABLE tool_listings ENABLE ROW LEVEL SECURITY;
ALTER TABLE tool_listings FORCE ROW LEVEL SECURITY;
CREATE POLICY company_isolation ON tool_listings
    USING (company_id = current_setting('app.current_company_id', true))
    WITH CHECK (company_id = current_setting('app.current_company_id', true));
CREATE POLICY shared_listings_read ON tool_listings FOR SELECT
    USING (company_id IS NULL);
CREATE POLICY shared_listings_write ON tool_listings
    USING (company_id IS NULL AND current_setting('app.tools_registry', true) = 'on')
    WITH CHECK (company_id IS NULL AND current_setting('app.tools_registry', true) = 'on');

GRANT SELECT, INSERT, UPDATE, DELETE ON tool_listings TO kira_app;
