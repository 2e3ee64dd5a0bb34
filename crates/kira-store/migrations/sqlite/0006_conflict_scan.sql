-- The names a memory's content lists (content.people and
-- content.counterparties), one row per memory, kind and normalised key.
-- Company data, written with the memory and gone with it. Two readers: a
-- company's own scope (the anonymiser's list of its people and
-- counterparties), and the conflict scan, which asks on the admin path
-- which other companies name any of a list of counterparties, without
-- touching another company's memories.
CREATE TABLE memory_names (
    kind       TEXT NOT NULL CHECK (kind IN ('person', 'counterparty')),
    key        TEXT NOT NULL,  -- normalise_counterparty(name)
    company_id TEXT NOT NULL,
    memory_id  TEXT NOT NULL REFERENCES memories (id) ON DELETE CASCADE,
    name       TEXT NOT NULL,  -- as written
    PRIMARY KEY (kind, key, company_id, memory_id)
) WITHOUT ROWID;
CREATE INDEX memory_names_company ON memory_names (company_id, kind);
CREATE INDEX memory_names_memory ON memory_names (memory_id);
