-- Tools (issue 23): the registry's database layers and each company's
-- tool configuration.
--
-- A registration is infrastructure (every company's), domain (the agents
-- of one domain) or company (one company's; company_id set). `slot` is
-- what a name is unique within: 'infrastructure', 'domain:DOMAIN' or
-- 'company:ID', so one company's entry never collides with another's and
-- overrides a lower layer's entry of the same name when tools are offered.
-- `source` is the JSON of kira_core::tools::ToolSource.
CREATE TABLE tool_registrations (
    tool_id     TEXT PRIMARY KEY,
    slot        TEXT NOT NULL,
    name        TEXT NOT NULL,
    layer       TEXT NOT NULL CHECK (layer IN ('infrastructure', 'domain', 'company')),
    domain      TEXT,
    company_id  TEXT,
    description TEXT NOT NULL,
    source      TEXT NOT NULL,
    timeout_ms  INTEGER,
    created_by  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    CHECK ((layer = 'company') = (company_id IS NOT NULL))
) STRICT;
CREATE UNIQUE INDEX tool_registrations_slot_name ON tool_registrations (slot, name);
CREATE INDEX tool_registrations_company ON tool_registrations (company_id);

-- A company's configuration of one tool (SEED 5.2's tool_configs):
-- `config` is a JSON object whose `defaults` are merged under the
-- arguments of every call the company's agents make to it.
CREATE TABLE tool_configs (
    company_id TEXT NOT NULL,
    tool       TEXT NOT NULL,
    config     TEXT NOT NULL,
    updated_by TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (company_id, tool)
) STRICT;
