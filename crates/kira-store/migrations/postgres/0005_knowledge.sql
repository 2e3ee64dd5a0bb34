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
