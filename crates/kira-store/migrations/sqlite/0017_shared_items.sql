-- Sharing by publication (issue 17): another company receives only what
-- the owner published for a scope, and only between companies that both
-- consented to exchange that scope with each other. Company data: every
-- statement binds the scope's company.

-- A published item: the anonymised text of one memory, made when it was
-- published, never the memory itself. Withdrawn items stay for the record
-- and are never shared again; a memory deleted for good (by an admin, a
-- purge or compaction) takes its items with it.
CREATE TABLE shared_items (
    item_id      TEXT PRIMARY KEY,
    company_id   TEXT NOT NULL REFERENCES companies (company_id),
    scope        TEXT NOT NULL,
    memory_id    TEXT NOT NULL REFERENCES memories (id) ON DELETE CASCADE,
    text         TEXT NOT NULL,
    published_by TEXT NOT NULL,
    published_at TEXT NOT NULL,
    withdrawn_by TEXT,
    withdrawn_at TEXT
) STRICT;
CREATE INDEX shared_items_company ON shared_items (company_id, published_at);
CREATE INDEX shared_items_memory ON shared_items (memory_id);
-- One live item per memory and scope.
CREATE UNIQUE INDEX shared_items_live ON shared_items (company_id, scope, memory_id)
    WHERE withdrawn_at IS NULL;

-- A company's consent to exchange a scope's published items with a partner
-- (a company id, or '*' for every company the rules allow). Set by an admin.
CREATE TABLE sharing_consents (
    company_id TEXT NOT NULL REFERENCES companies (company_id),
    scope      TEXT NOT NULL,
    partner    TEXT NOT NULL,
    granted_by TEXT NOT NULL,
    granted_at TEXT NOT NULL,
    PRIMARY KEY (company_id, scope, partner)
) STRICT, WITHOUT ROWID;

-- The scopes of the old profile field become consents with every partner
-- the rules allow: what they meant, now that a consent is needed on both
-- sides for any scope. The field stays readable and grants nothing.
INSERT INTO sharing_consents (company_id, scope, partner, granted_by, granted_at)
SELECT c.company_id, j.value, '*', 'migration 0017', c.updated_at
FROM companies c, json_each(c.sharing_consent) j
WHERE c.archived_at IS NULL;

-- The engine keeps every company's consents with the directory (0008):
-- a change must move its version.
CREATE TRIGGER sharing_consents_directory_insert AFTER INSERT ON sharing_consents
BEGIN
    UPDATE directory_version SET version = version + 1 WHERE id = 1;
END;
CREATE TRIGGER sharing_consents_directory_update AFTER UPDATE ON sharing_consents
BEGIN
    UPDATE directory_version SET version = version + 1 WHERE id = 1;
END;
CREATE TRIGGER sharing_consents_directory_delete AFTER DELETE ON sharing_consents
BEGIN
    UPDATE directory_version SET version = version + 1 WHERE id = 1;
END;
