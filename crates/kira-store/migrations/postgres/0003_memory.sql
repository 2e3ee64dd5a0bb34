-- Episodic memory (issue #4): the tables of SQLite's 0003, with row-level
-- security on the two that hold company data.
--
-- Event types and workstreams are not CHECKed: the core parses them on
-- every read, and a new kind should not need a migration.

-- The searchable text of an event: its text, category and indexed terms
-- (people and counterparties are among the terms). A function so the
-- generated column below and anything that ever needs to match it share
-- one definition; IMMUTABLE because its only configuration is the fixed
-- 'english' text search configuration.
CREATE FUNCTION memory_search_vector(content JSONB, category TEXT, terms TEXT[])
RETURNS TSVECTOR
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT to_tsvector('english'::regconfig,
        coalesce(content ->> 'text', '') || ' ' || category || ' ' || array_to_string(terms, ' '))
$$;

CREATE TABLE memories (
    id             UUID PRIMARY KEY,  -- v7
    company_id     TEXT COLLATE "C" NOT NULL REFERENCES companies (company_id),
    occurred_at    TIMESTAMPTZ NOT NULL,
    event_type     TEXT NOT NULL,
    workstream     TEXT NOT NULL,
    category       TEXT NOT NULL,
    content        JSONB NOT NULL CHECK (jsonb_typeof(content) = 'object'),
    importance     SMALLINT NOT NULL CHECK (importance BETWEEN 1 AND 10),
    indexed_terms  TEXT[] NOT NULL,
    source         TEXT,
    created_at     TIMESTAMPTZ NOT NULL,
    archived_at    TIMESTAMPTZ,
    compacted_from UUID[] NOT NULL DEFAULT '{}',
    supersedes     UUID,
    search         TSVECTOR NOT NULL
        GENERATED ALWAYS AS (memory_search_vector(content, category, indexed_terms)) STORED
);
-- Lists and cursors (newest first), and the walk behind every filter and
-- every search of one company.
CREATE INDEX memories_company_occurred ON memories (company_id, occurred_at DESC, id DESC);
CREATE INDEX memories_company_event ON memories (company_id, event_type, occurred_at DESC);
-- Compaction groups by (workstream, category).
CREATE INDEX memories_company_category ON memories (company_id, workstream, category, occurred_at DESC);
-- Purges and archived-only lists; most memories are live.
CREATE INDEX memories_company_archived ON memories (company_id, archived_at)
    WHERE archived_at IS NOT NULL;
CREATE INDEX memories_search ON memories USING GIN (search);

-- One embedding per memory, for the model that made it. Company data.
CREATE TABLE memory_vectors (
    memory_id  UUID PRIMARY KEY REFERENCES memories (id) ON DELETE CASCADE,
    company_id TEXT COLLATE "C" NOT NULL,
    model      TEXT NOT NULL,
    vector     BYTEA NOT NULL CHECK (length(vector) % 4 = 0)  -- little-endian f32s
);
CREATE INDEX memory_vectors_company ON memory_vectors (company_id, model);

-- Memories waiting for their embedding: ids and timing only, no content.
-- No row-level security, for that reason: like task_queue it is
-- infrastructure, so the embedder can take the oldest jobs of every company
-- in one claim; the text is read afterwards through the company's scope,
-- under the policies of `memories`. The MemoryStore methods bind the
-- company wherever one is known.
CREATE TABLE memory_embed_queue (
    memory_id     UUID PRIMARY KEY REFERENCES memories (id) ON DELETE CASCADE,
    company_id    TEXT COLLATE "C" NOT NULL,
    queued_at     TIMESTAMPTZ NOT NULL,
    claimed_until TIMESTAMPTZ
);
CREATE INDEX memory_embed_queue_order ON memory_embed_queue (queued_at, memory_id);
CREATE INDEX memory_embed_queue_company ON memory_embed_queue (company_id);

-- Row-level security, as in 0001. No admin_read policy: no admin path
-- reads memories (a cross-company read is an anonymised copy made through
-- each company's own scope), so none is opened.
ALTER TABLE memories ENABLE ROW LEVEL SECURITY;
ALTER TABLE memories FORCE ROW LEVEL SECURITY;
CREATE POLICY company_isolation ON memories
    USING (company_id = current_setting('app.current_company_id', true))
    WITH CHECK (company_id = current_setting('app.current_company_id', true));

ALTER TABLE memory_vectors ENABLE ROW LEVEL SECURITY;
ALTER TABLE memory_vectors FORCE ROW LEVEL SECURITY;
CREATE POLICY company_isolation ON memory_vectors
    USING (company_id = current_setting('app.current_company_id', true))
    WITH CHECK (company_id = current_setting('app.current_company_id', true));

GRANT SELECT, INSERT, UPDATE, DELETE ON memories TO kira_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON memory_vectors TO kira_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON memory_embed_queue TO kira_app;
