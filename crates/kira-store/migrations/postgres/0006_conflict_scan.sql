-- The names a memory's content lists (content.people and
-- content.counterparties), one row per memory, kind and normalised key.
-- Company data, written with the memory and gone with it. Two readers: a
-- company's own scope (the anonymiser's list of its people and
-- counterparties), and the conflict scan, which asks on the admin path
-- which other companies name any of a list of counterparties.
--
-- `memories` keeps its no-admin-read rule: the scan reads this table only,
-- and only its counterparty rows (a name and a memory id, no text), for
-- SELECT, in a transaction that set app.admin_read; the store audits each
-- scan in that transaction.
CREATE TABLE memory_names (
    kind       TEXT NOT NULL CHECK (kind IN ('person', 'counterparty')),
    key        TEXT NOT NULL,  -- normalise_counterparty(name)
    company_id TEXT COLLATE "C" NOT NULL,
    memory_id  UUID NOT NULL REFERENCES memories (id) ON DELETE CASCADE,
    name       TEXT NOT NULL,  -- as written
    PRIMARY KEY (kind, key, company_id, memory_id)
);
CREATE INDEX memory_names_company ON memory_names (company_id, kind);
CREATE INDEX memory_names_memory ON memory_names (memory_id);

ALTER TABLE memory_names ENABLE ROW LEVEL SECURITY;
ALTER TABLE memory_names FORCE ROW LEVEL SECURITY;
CREATE POLICY company_isolation ON memory_names
    USING (company_id = current_setting('app.current_company_id', true))
    WITH CHECK (company_id = current_setting('app.current_company_id', true));
CREATE POLICY conflict_scan ON memory_names FOR SELECT
    USING (kind = 'counterparty' AND current_setting('app.admin_read', true) = 'on');

GRANT SELECT, INSERT, DELETE ON memory_names TO kira_app;
