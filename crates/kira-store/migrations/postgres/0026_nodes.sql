-- Nodes and their uptime (issue 22's availability KPI): the tables of
-- SQLite's 0026. Deployment-wide rows: no company owns them, so no
-- row-level security.
CREATE TABLE nodes (
    node_id      TEXT COLLATE "C" PRIMARY KEY,
    role         TEXT NOT NULL CHECK (role IN ('serve', 'worker')),
    version      TEXT NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL,
    last_beat_at TIMESTAMPTZ NOT NULL,
    stopped_at   TIMESTAMPTZ
);
CREATE INDEX nodes_last_beat ON nodes (last_beat_at);

CREATE TABLE node_uptime (
    node_id TEXT COLLATE "C" NOT NULL REFERENCES nodes (node_id) ON DELETE CASCADE,
    up_from TIMESTAMPTZ NOT NULL,
    up_to   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (node_id, up_from)
);
CREATE INDEX node_uptime_to ON node_uptime (up_to);

GRANT SELECT, INSERT, UPDATE, DELETE ON nodes, node_uptime TO kira_app;
