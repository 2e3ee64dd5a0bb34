-- Nodes and their uptime (issue 22's availability KPI): every kira process
-- beats while it is up and ready; a beat within the grace of its node's
-- last one extends that node's open span, a later one starts a new span.
-- Deployment-wide rows: no company owns them.
CREATE TABLE nodes (
    node_id      TEXT PRIMARY KEY,
    role         TEXT NOT NULL CHECK (role IN ('serve', 'worker')),
    version      TEXT NOT NULL,
    started_at   TEXT NOT NULL,
    last_beat_at TEXT NOT NULL,
    stopped_at   TEXT
) STRICT;
CREATE INDEX nodes_last_beat ON nodes (last_beat_at);

CREATE TABLE node_uptime (
    node_id TEXT NOT NULL REFERENCES nodes (node_id) ON DELETE CASCADE,
    up_from TEXT NOT NULL,
    up_to   TEXT NOT NULL,
    PRIMARY KEY (node_id, up_from)
) STRICT;
CREATE INDEX node_uptime_to ON node_uptime (up_to);
