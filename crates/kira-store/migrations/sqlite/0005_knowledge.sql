-- The shared knowledge base (SEED 2.2): entries every company reads and
-- admins write. Not company data, so no company column.

CREATE TABLE knowledge (
    seq          INTEGER PRIMARY KEY,   -- the FTS rowid
    id           TEXT NOT NULL UNIQUE,  -- uuid v7
    domain       TEXT NOT NULL,
    key          TEXT NOT NULL,
    title        TEXT NOT NULL,
    body         TEXT NOT NULL,
    tags         TEXT NOT NULL,         -- JSON array of lower-case strings
    tags_text    TEXT NOT NULL,         -- the tags joined by spaces, for FTS
    jurisdiction TEXT,
    industry     TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    UNIQUE (domain, key)
) STRICT;
CREATE INDEX knowledge_created ON knowledge (created_at, id);

CREATE VIRTUAL TABLE knowledge_fts USING fts5 (
    title, body, tags_text,
    content = 'knowledge',
    content_rowid = 'seq',
    tokenize = 'porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER knowledge_fts_insert AFTER INSERT ON knowledge BEGIN
    INSERT INTO knowledge_fts (rowid, title, body, tags_text)
    VALUES (new.seq, new.title, new.body, new.tags_text);
END;
CREATE TRIGGER knowledge_fts_delete AFTER DELETE ON knowledge BEGIN
    INSERT INTO knowledge_fts (knowledge_fts, rowid, title, body, tags_text)
    VALUES ('delete', old.seq, old.title, old.body, old.tags_text);
END;
CREATE TRIGGER knowledge_fts_update AFTER UPDATE ON knowledge BEGIN
    INSERT INTO knowledge_fts (knowledge_fts, rowid, title, body, tags_text)
    VALUES ('delete', old.seq, old.title, old.body, old.tags_text);
    INSERT INTO knowledge_fts (rowid, title, body, tags_text)
    VALUES (new.seq, new.title, new.body, new.tags_text);
END;

-- One embedding per entry and model.
CREATE TABLE knowledge_vectors (
    entry_id TEXT NOT NULL REFERENCES knowledge (id) ON DELETE CASCADE,
    model    TEXT NOT NULL,
    vector   BLOB NOT NULL CHECK (length(vector) % 4 = 0),  -- little-endian f32s
    PRIMARY KEY (entry_id, model)
) STRICT;
CREATE INDEX knowledge_vectors_model ON knowledge_vectors (model);

-- Conflict flags: two companies whose memories name the same counterparty.
-- One open flag per (pair, counterparty); a resolved flag stays as history.
CREATE TABLE conflicts (
    id           TEXT PRIMARY KEY,  -- uuid v7
    company_a    TEXT NOT NULL,     -- company_a < company_b
    company_b    TEXT NOT NULL,
    counterparty TEXT NOT NULL,
    memory_ids   TEXT NOT NULL,     -- JSON array of uuids
    detected_at  TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('open', 'resolved')),
    resolved_at  TEXT,
    resolved_by  TEXT,
    note         TEXT,
    CHECK (company_a < company_b),
    CHECK ((status = 'resolved') = (resolved_at IS NOT NULL))
) STRICT;
CREATE UNIQUE INDEX conflicts_one_open ON conflicts (company_a, company_b, counterparty)
    WHERE status = 'open';
CREATE INDEX conflicts_b ON conflicts (company_b);
