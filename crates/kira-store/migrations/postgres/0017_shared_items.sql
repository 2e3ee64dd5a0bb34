-- Sharing by publication (issue 17): the tables of SQLite's 0017, company
-- data under row-level security as in 0003. Published items have no admin
-- read: a partner's items are read through the partner's own scope.
-- Consents have one, SELECT only, for the engine's directory of who
-- consented to what (a scope and a partner id, no content). A memory
-- deleted for good takes its published items with it.

CREATE TABLE shared_items (
    item_id      UUID PRIMARY KEY,
    company_id   TEXT COLLATE "C" NOT NULL REFERENCES companies (company_id),
    scope        TEXT NOT NULL,
    memory_id    UUID NOT NULL REFERENCES memories (id) ON DELETE CASCADE,
    text         TEXT NOT NULL,
    published_by TEXT NOT NULL,
    published_at TIMESTAMPTZ NOT NULL,
    withdrawn_by TEXT,
    withdrawn_at TIMESTAMPTZ
);
CREATE INDEX shared_items_company ON shared_items (company_id, published_at);
CREATE INDEX shared_items_memory ON shared_items (memory_id);
CREATE UNIQUE INDEX shared_items_live ON shared_items (company_id, scope, memory_id)
    WHERE withdrawn_at IS NULL;

CREATE TABLE sharing_consents (
    company_id TEXT COLLATE "C" NOT NULL REFERENCES companies (company_id),
    scope      TEXT NOT NULL,
    partner    TEXT COLLATE "C" NOT NULL,
    granted_by TEXT NOT NULL,
    granted_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (company_id, scope, partner)
);

-- The old profile field's scopes become consents with every partner (see
-- SQLite's 0017).
INSERT INTO sharing_consents (company_id, scope, partner, granted_by, granted_at)
SELECT c.company_id, j.value, '*', 'migration 0017', c.updated_at
FROM companies c, jsonb_array_elements_text(c.sharing_consent) AS j(value)
WHERE c.archived_at IS NULL;

CREATE TRIGGER sharing_consents_directory_version
    AFTER INSERT OR UPDATE OR DELETE ON sharing_consents
    FOR EACH STATEMENT EXECUTE FUNCTION kira_bump_directory_version();

ALTER TABLE shared_items ENABLE ROW LEVEL SECURITY;
ALTER TABLE shared_items FORCE ROW LEVEL SECURITY;
CREATE POLICY company_isolation ON shared_items
    USING (company_id = current_setting('app.current_company_id', true))
    WITH CHECK (company_id = current_setting('app.current_company_id', true));

ALTER TABLE sharing_consents ENABLE ROW LEVEL SECURITY;
ALTER TABLE sharing_consents FORCE ROW LEVEL SECURITY;
CREATE POLICY company_isolation ON sharing_consents
    USING (company_id = current_setting('app.current_company_id', true))
    WITH CHECK (company_id = current_setting('app.current_company_id', true));
CREATE POLICY admin_read ON sharing_consents FOR SELECT
    USING (current_setting('app.admin_read', true) = 'on');
-- A company's forced delete also removes other companies' consents naming
-- it, so a company made later under the same id does not inherit them:
-- only in a transaction that set app.company_delete (the store's forced
-- delete does, for the company it deletes), and only rows naming that
-- company. DELETE needs the rows visible, hence the SELECT policy too.
CREATE POLICY partner_cleanup_read ON sharing_consents FOR SELECT
    USING (partner = current_setting('app.current_company_id', true)
           AND current_setting('app.company_delete', true) = 'on');
CREATE POLICY partner_cleanup ON sharing_consents FOR DELETE
    USING (partner = current_setting('app.current_company_id', true)
           AND current_setting('app.company_delete', true) = 'on');

GRANT SELECT, INSERT, UPDATE, DELETE ON shared_items TO kira_app;
GRANT SELECT, INSERT, DELETE ON sharing_consents TO kira_app;
