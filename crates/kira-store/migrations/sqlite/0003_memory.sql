-- Episodic memory (issue #4): a company's events, their full-text index,
-- their embeddings and the queue of those still to embed. Isolation is the
-- typed scope, as in 0001: every statement binds the scope's company.
--
-- Event types and workstreams are not CHECKed: the core parses them on
-- every read, and a new kind should not need a table rebuild.

CREATE TABLE memories (
    -- The full-text index's rowid. An INTEGER PRIMARY KEY is stable; an
    -- implicit rowid may be renumbered by VACUUM, which would leave the
    -- index pointing at the wrong events.
    seq            INTEGER PRIMARY KEY,
    id             TEXT NOT NULL UNIQUE,  -- uuid v7, hyphenated lower case
    company_id     TEXT NOT NULL REFERENCES companies (company_id),
    occurred_at    TEXT NOT NULL,
    event_type     TEXT NOT NULL,
    workstream     TEXT NOT NULL,
    category       TEXT NOT NULL,
    content        TEXT NOT NULL CHECK (json_type(content) = 'object'),
    importance     INTEGER NOT NULL CHECK (importance BETWEEN 1 AND 10),
    indexed_terms  TEXT NOT NULL CHECK (json_type(indexed_terms) = 'array'),
    source         TEXT,
    created_at     TEXT NOT NULL,
    archived_at    TEXT,
    compacted_from TEXT NOT NULL DEFAULT '[]' CHECK (json_type(compacted_from) = 'array'),
    supersedes     TEXT
) STRICT;
-- Lists and cursors (newest first), and the walk behind every filter.
CREATE INDEX memories_company_occurred ON memories (company_id, occurred_at DESC, id DESC);
CREATE INDEX memories_company_event ON memories (company_id, event_type, occurred_at DESC);
-- Compaction groups by (workstream, category).
CREATE INDEX memories_company_category ON memories (company_id, workstream, category, occurred_at DESC);
-- Purges and archived-only lists; most memories are live.
CREATE INDEX memories_company_archived ON memories (company_id, archived_at)
    WHERE archived_at IS NOT NULL;

-- The full-text index: contentless (the text lives in `memories`), with
-- deletes allowed, kept in step by the triggers below. `company` is indexed
-- so a search starts from the company's own documents
-- (`company : "acme" AND (...)`) instead of every company's matches; the
-- join back to `memories` on the exact company_id is what decides.
CREATE VIRTUAL TABLE memories_fts USING fts5 (
    company, text, category, terms,
    content = '',
    contentless_delete = 1,
    tokenize = 'porter unicode61 remove_diacritics 2'
);

CREATE TRIGGER memories_fts_insert AFTER INSERT ON memories
BEGIN
    INSERT INTO memories_fts (rowid, company, text, category, terms)
    VALUES (new.seq, new.company_id, new.content ->> '$.text', new.category,
            (SELECT group_concat(value, ' ') FROM json_each(new.indexed_terms)));
END;

CREATE TRIGGER memories_fts_delete AFTER DELETE ON memories
BEGIN
    DELETE FROM memories_fts WHERE rowid = old.seq;
END;

-- The store never rewrites an event's searchable fields, but if anything
-- does, the index follows.
CREATE TRIGGER memories_fts_update AFTER UPDATE OF company_id, content, category, indexed_terms ON memories
BEGIN
    DELETE FROM memories_fts WHERE rowid = old.seq;
    INSERT INTO memories_fts (rowid, company, text, category, terms)
    VALUES (new.seq, new.company_id, new.content ->> '$.text', new.category,
            (SELECT group_concat(value, ' ') FROM json_each(new.indexed_terms)));
END;

-- One embedding per memory, for the model that made it.
CREATE TABLE memory_vectors (
    memory_id  TEXT PRIMARY KEY REFERENCES memories (id) ON DELETE CASCADE,
    company_id TEXT NOT NULL,
    model      TEXT NOT NULL,
    vector     BLOB NOT NULL CHECK (length(vector) % 4 = 0)  -- little-endian f32s
) STRICT;
CREATE INDEX memory_vectors_company ON memory_vectors (company_id, model);

-- Memories waiting for their embedding: ids only, no content, so the
-- embedder may read it for every company at once.
CREATE TABLE memory_embed_queue (
    memory_id     TEXT PRIMARY KEY REFERENCES memories (id) ON DELETE CASCADE,
    company_id    TEXT NOT NULL,
    queued_at     TEXT NOT NULL,
    claimed_until TEXT
) STRICT;
CREATE INDEX memory_embed_queue_order ON memory_embed_queue (queued_at, memory_id);
CREATE INDEX memory_embed_queue_company ON memory_embed_queue (company_id);
