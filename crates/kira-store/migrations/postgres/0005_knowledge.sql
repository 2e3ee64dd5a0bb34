-- The shared knowledge base (SEED 2.2): entries every company reads and
-- admins write. Not company data: no company column and no row-level
-- security; kira_app reaches it only through the KnowledgeStore methods,
-- whose writes take an AdminScope and are audited.

-- Title and tags weigh more than the body. A function so the generated
-- column has one IMMUTABLE definition (array_to_string alone is STABLE);
-- its only configuration is the fixed 'english' one.
CREATE FUNCTION knowledge_search_vector(title TEXT, body TEXT, tags TEXT[])
RETURNS TSVECTOR
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT setweight(to_tsvector('english'::regconfig, title), 'A')
        || setweight(to_tsvector('english'::regconfig, array_to_string(tags, ' ')), 'A')
        || setweight(to_tsvector('english'::regconfig, body), 'B')
$$;

CREATE TABLE knowledge (
    id           UUID PRIMARY KEY,  -- v7
    domain       TEXT COLLATE "C" NOT NULL,
    key          TEXT COLLATE "C" NOT NULL,
    title        TEXT NOT NULL,
    body         TEXT NOT NULL,
    tags         TEXT[] NOT NULL,
    jurisdiction TEXT,
    industry     TEXT,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    search       TSVECTOR NOT NULL
        GENERATED ALWAYS AS (knowledge_search_vector(title, body, tags)) STORED,
    UNIQUE (domain, key)
);
CREATE INDEX knowledge_created ON knowledge (created_at, id);
CREATE INDEX knowledge_search ON knowledge USING GIN (search);

-- One embedding per entry and model.
CREATE TABLE knowledge_vectors (
    entry_id UUID NOT NULL REFERENCES knowledge (id) ON DELETE CASCADE,
    model    TEXT NOT NULL,
    vector   BYTEA NOT NULL CHECK (length(vector) % 4 = 0),  -- little-endian f32s
    PRIMARY KEY (entry_id, model)
);
CREATE INDEX knowledge_vectors_model ON knowledge_vectors (model);

GRANT SELECT, INSERT, UPDATE, DELETE ON knowledge TO kira_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON knowledge_vectors TO kira_app;

-- Conflict flags: two companies whose memories name the same counterparty.
-- One open flag per (pair, counterparty); a resolved flag stays as history.
-- Only the admin path reads and writes them (app.admin_read); a company's
-- own transaction may delete the flags naming it (a forced company delete).
CREATE TABLE conflicts (
    id           UUID PRIMARY KEY,  -- v7
    company_a    TEXT COLLATE "C" NOT NULL,
    company_b    TEXT COLLATE "C" NOT NULL,
    counterparty TEXT NOT NULL,
    memory_ids   UUID[] NOT NULL,
    detected_at  TIMESTAMPTZ NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('open', 'resolved')),
    resolved_at  TIMESTAMPTZ,
    resolved_by  TEXT,
    note         TEXT,
    CHECK (company_a < company_b),
    CHECK ((status = 'resolved') = (resolved_at IS NOT NULL))
);
CREATE UNIQUE INDEX conflicts_one_open ON conflicts (company_a, company_b, counterparty)
    WHERE status = 'open';
CREATE INDEX conflicts_b ON conflicts (company_b);

ALTER TABLE conflicts ENABLE ROW LEVEL SECURITY;
ALTER TABLE conflicts FORCE ROW LEVEL SECURITY;
CREATE POLICY admin_all ON conflicts
    USING (current_setting('app.admin_read', true) = 'on')
    WITH CHECK (current_setting('app.admin_read', true) = 'on');
-- A DELETE with a WHERE must see its rows, hence the select policy too.
CREATE POLICY company_read ON conflicts FOR SELECT
    USING (current_setting('app.current_company_id', true) IN (company_a, company_b));
CREATE POLICY company_delete ON conflicts FOR DELETE
    USING (current_setting('app.current_company_id', true) IN (company_a, company_b));
GRANT SELECT, INSERT, UPDATE, DELETE ON conflicts TO kira_app;
