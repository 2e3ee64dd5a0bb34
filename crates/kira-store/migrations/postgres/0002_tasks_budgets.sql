-- Tasks, the queue, token budgets and their ledger: the tables of SQLite's
-- 0002, with row-level security on every table holding company data.
--
-- The balances are kept right by conditional updates
-- (`reserved + spent + n <= capacity` in the WHERE), which PostgreSQL
-- re-checks against the latest row version after waiting for a lock; the
-- CHECK constraints below are the last line of defence and never fire.

-- A task: SEED 1's message and its response. Company data.
CREATE TABLE tasks (
    task_id               TEXT COLLATE "C" PRIMARY KEY,
    company_id            TEXT COLLATE "C" NOT NULL REFERENCES companies (company_id),
    seq                   BIGINT NOT NULL,
    task_type             TEXT NOT NULL,
    specialist            TEXT,
    agent                 TEXT NOT NULL,
    priority              TEXT NOT NULL CHECK (priority IN ('emergency', 'urgent', 'high', 'medium', 'low')),
    task                  TEXT NOT NULL,
    parameters            JSONB NOT NULL,
    -- The profile at submission.
    company_context       JSONB NOT NULL,
    deadline              TIMESTAMPTZ,
    idempotency_key       TEXT,
    request_hash          TEXT,
    status                TEXT NOT NULL CHECK (status IN ('queued', 'waiting_budget', 'awaiting_approval',
                              'running', 'needs_review', 'completed', 'failed', 'cancelled')),
    status_reason         TEXT NOT NULL DEFAULT '',
    attempts              INTEGER NOT NULL DEFAULT 0,
    max_attempts          INTEGER NOT NULL,
    estimated_tokens      BIGINT NOT NULL CHECK (estimated_tokens > 0),
    result                JSONB,
    confidence            DOUBLE PRECISION,
    requires_human_review BOOLEAN NOT NULL DEFAULT false,
    last_error            TEXT,
    prompt_tokens         BIGINT NOT NULL DEFAULT 0,
    completion_tokens     BIGINT NOT NULL DEFAULT 0,
    cost_usd              DOUBLE PRECISION NOT NULL DEFAULT 0,
    created_at            TIMESTAMPTZ NOT NULL,
    updated_at            TIMESTAMPTZ NOT NULL,
    started_at            TIMESTAMPTZ,
    finished_at           TIMESTAMPTZ,
    CONSTRAINT tasks_company_seq UNIQUE (company_id, seq),
    -- The store maps a violation of this one (two submits with one key
    -- racing) to the idempotent answer, by name.
    CONSTRAINT tasks_company_idempotency_key UNIQUE (company_id, idempotency_key)
);
CREATE INDEX tasks_company_created ON tasks (company_id, created_at, task_id);

-- Every state change of a task, for history and `task watch`. A task's
-- events are written under its queue row's lock, so per task the ids grow
-- in commit order and `event_id > n` polling misses none.
CREATE TABLE task_events (
    event_id    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id  TEXT COLLATE "C" NOT NULL,
    task_id     TEXT COLLATE "C" NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    at          TIMESTAMPTZ NOT NULL,
    from_status TEXT,
    to_status   TEXT NOT NULL,
    reason      TEXT NOT NULL
);
CREATE INDEX task_events_task ON task_events (task_id, event_id);

-- The queue: scheduling facts of every unfinished task, and nothing of its
-- content, so the scheduler can rank all companies' work in one read. No
-- row-level security, for that reason: like api_keys it is infrastructure,
-- reached only through the TaskStore methods, which bind the company where
-- one is known.
CREATE TABLE task_queue (
    task_id          TEXT COLLATE "C" PRIMARY KEY REFERENCES tasks (task_id) ON DELETE CASCADE,
    company_id       TEXT COLLATE "C" NOT NULL,
    agent            TEXT NOT NULL,
    status           TEXT NOT NULL,
    priority         TEXT NOT NULL,
    multiplier       DOUBLE PRECISION NOT NULL,
    deadline         TIMESTAMPTZ,
    waiting_since    TIMESTAMPTZ NOT NULL,
    not_before       TIMESTAMPTZ NOT NULL,
    estimated_tokens BIGINT NOT NULL,
    attempts         INTEGER NOT NULL,
    lease_owner      TEXT,
    lease_expires_at TIMESTAMPTZ,
    cancel_requested BOOLEAN NOT NULL DEFAULT false
);
CREATE INDEX task_queue_ready ON task_queue (status, not_before);
CREATE INDEX task_queue_lease ON task_queue (lease_expires_at) WHERE lease_owner IS NOT NULL;
CREATE INDEX task_queue_company ON task_queue (company_id);

-- One row per budget period (a calendar month by default). Operator
-- configuration, no company's data: no row-level security.
CREATE TABLE budget_periods (
    period_id    TEXT COLLATE "C" PRIMARY KEY,
    starts_at    TIMESTAMPTZ NOT NULL,
    ends_at      TIMESTAMPTZ NOT NULL,
    total_tokens BIGINT NOT NULL CHECK (total_tokens > 0),
    created_at   TIMESTAMPTZ NOT NULL
);

-- The pools of a period: totals over every company, no company's data, so
-- no row-level security (every reservation updates a row here, whichever
-- company it is for).
CREATE TABLE budget_pools (
    period_id TEXT COLLATE "C" NOT NULL REFERENCES budget_periods (period_id),
    pool      TEXT NOT NULL CHECK (pool IN ('base', 'burst', 'emergency')),
    capacity  BIGINT NOT NULL CHECK (capacity >= 0),
    reserved  BIGINT NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    spent     BIGINT NOT NULL DEFAULT 0 CHECK (spent >= 0),
    PRIMARY KEY (period_id, pool),
    CHECK (reserved + spent <= capacity)
);

-- Each company's share of the base pool in a period. Company data.
CREATE TABLE budget_allocations (
    period_id  TEXT COLLATE "C" NOT NULL REFERENCES budget_periods (period_id),
    company_id TEXT COLLATE "C" NOT NULL REFERENCES companies (company_id),
    factor     DOUBLE PRECISION NOT NULL,
    share      DOUBLE PRECISION NOT NULL,
    tokens     BIGINT NOT NULL CHECK (tokens >= 0),
    reserved   BIGINT NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    spent      BIGINT NOT NULL DEFAULT 0 CHECK (spent >= 0),
    PRIMARY KEY (period_id, company_id),
    CHECK (reserved + spent <= tokens)
);
CREATE INDEX budget_allocations_company ON budget_allocations (company_id);

-- Tokens held for one LLM call (or one run) of a task. Company data.
CREATE TABLE reservations (
    reservation_id TEXT COLLATE "C" PRIMARY KEY,
    company_id     TEXT COLLATE "C" NOT NULL REFERENCES companies (company_id),
    task_id        TEXT COLLATE "C" NOT NULL REFERENCES tasks (task_id),
    period_id      TEXT COLLATE "C" NOT NULL REFERENCES budget_periods (period_id),
    pool           TEXT NOT NULL CHECK (pool IN ('base', 'burst', 'emergency')),
    amount         BIGINT NOT NULL CHECK (amount > 0),
    state          TEXT NOT NULL CHECK (state IN ('held', 'settled', 'released')),
    spent          BIGINT NOT NULL DEFAULT 0,
    created_at     TIMESTAMPTZ NOT NULL,
    closed_at      TIMESTAMPTZ
);
CREATE INDEX reservations_task ON reservations (task_id, state);
CREATE INDEX reservations_company ON reservations (company_id, state);

-- Every token movement, append-only by privilege (kira_app may only SELECT
-- and INSERT). No foreign keys: the lines outlive a deleted company.
-- Company data where it names a company; pool-level lines (rollover) name
-- none.
CREATE TABLE budget_ledger (
    entry_id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at             TIMESTAMPTZ NOT NULL,
    period_id      TEXT COLLATE "C" NOT NULL,
    company_id     TEXT COLLATE "C",
    task_id        TEXT COLLATE "C",
    reservation_id TEXT COLLATE "C",
    pool           TEXT CHECK (pool IN ('base', 'burst', 'emergency')),
    kind           TEXT NOT NULL CHECK (kind IN ('rollover', 'allocate', 'reserve', 'settle', 'release', 'grant')),
    amount         BIGINT NOT NULL,
    detail         TEXT NOT NULL DEFAULT ''
);
CREATE INDEX budget_ledger_period ON budget_ledger (period_id, entry_id);

-- Requests for emergency tokens, decided by a human. Company data.
CREATE TABLE emergency_requests (
    request_id   TEXT COLLATE "C" PRIMARY KEY,
    company_id   TEXT COLLATE "C" NOT NULL REFERENCES companies (company_id),
    task_id      TEXT COLLATE "C" NOT NULL REFERENCES tasks (task_id),
    period_id    TEXT COLLATE "C" NOT NULL,
    amount       BIGINT NOT NULL CHECK (amount > 0),
    status       TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'rejected')),
    reason       TEXT NOT NULL,
    requested_at TIMESTAMPTZ NOT NULL,
    decided_at   TIMESTAMPTZ,
    decided_by   TEXT,
    decision     TEXT
);
CREATE UNIQUE INDEX emergency_requests_one_pending ON emergency_requests (task_id) WHERE status = 'pending';

-- Row-level security, as in 0001: each company-scoped transaction names its
-- company; the AdminScope paths (budget state, the ledger check, emergency
-- requests) and the system paths' cross-company reads set app.admin_read,
-- and every write names the company of the row it writes.
ALTER TABLE tasks ENABLE ROW LEVEL SECURITY;
ALTER TABLE tasks FORCE ROW LEVEL SECURITY;
CREATE POLICY company_isolation ON tasks
    USING (company_id = current_setting('app.current_company_id', true))
    WITH CHECK (company_id = current_setting('app.current_company_id', true));
CREATE POLICY admin_read ON tasks FOR SELECT
    USING (current_setting('app.admin_read', true) = 'on');

ALTER TABLE task_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE task_events FORCE ROW LEVEL SECURITY;
CREATE POLICY company_isolation ON task_events
    USING (company_id = current_setting('app.current_company_id', true))
    WITH CHECK (company_id = current_setting('app.current_company_id', true));
CREATE POLICY admin_read ON task_events FOR SELECT
    USING (current_setting('app.admin_read', true) = 'on');

ALTER TABLE budget_allocations ENABLE ROW LEVEL SECURITY;
ALTER TABLE budget_allocations FORCE ROW LEVEL SECURITY;
CREATE POLICY company_isolation ON budget_allocations
    USING (company_id = current_setting('app.current_company_id', true))
    WITH CHECK (company_id = current_setting('app.current_company_id', true));
CREATE POLICY admin_read ON budget_allocations FOR SELECT
    USING (current_setting('app.admin_read', true) = 'on');

ALTER TABLE reservations ENABLE ROW LEVEL SECURITY;
ALTER TABLE reservations FORCE ROW LEVEL SECURITY;
CREATE POLICY company_isolation ON reservations
    USING (company_id = current_setting('app.current_company_id', true))
    WITH CHECK (company_id = current_setting('app.current_company_id', true));
CREATE POLICY admin_read ON reservations FOR SELECT
    USING (current_setting('app.admin_read', true) = 'on');

ALTER TABLE emergency_requests ENABLE ROW LEVEL SECURITY;
ALTER TABLE emergency_requests FORCE ROW LEVEL SECURITY;
CREATE POLICY company_isolation ON emergency_requests
    USING (company_id = current_setting('app.current_company_id', true))
    WITH CHECK (company_id = current_setting('app.current_company_id', true));
CREATE POLICY admin_read ON emergency_requests FOR SELECT
    USING (current_setting('app.admin_read', true) = 'on');

ALTER TABLE budget_ledger ENABLE ROW LEVEL SECURITY;
ALTER TABLE budget_ledger FORCE ROW LEVEL SECURITY;
CREATE POLICY company_isolation ON budget_ledger
    USING (company_id = current_setting('app.current_company_id', true))
    WITH CHECK (company_id = current_setting('app.current_company_id', true));
-- The ledger is read whole only by the ledger check, an admin path.
CREATE POLICY admin_read ON budget_ledger FOR SELECT
    USING (current_setting('app.admin_read', true) = 'on');
-- Pool-level lines (a new period's rollover) concern no company.
CREATE POLICY system_insert ON budget_ledger FOR INSERT
    WITH CHECK (company_id IS NULL);

-- kira_app's privileges. The ledger is append-only by privilege: no UPDATE,
-- no DELETE. Identity columns draw their values without a privilege on the
-- sequence; USAGE is granted so that stays true if one becomes a serial.
GRANT SELECT, INSERT, UPDATE, DELETE ON tasks TO kira_app;
GRANT SELECT, INSERT, DELETE ON task_events TO kira_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON task_queue TO kira_app;
GRANT SELECT, INSERT ON budget_periods TO kira_app;
GRANT SELECT, INSERT, UPDATE ON budget_pools TO kira_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON budget_allocations TO kira_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON reservations TO kira_app;
GRANT SELECT, INSERT ON budget_ledger TO kira_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON emergency_requests TO kira_app;
GRANT USAGE ON SEQUENCE task_events_event_id_seq, budget_ledger_entry_id_seq TO kira_app;
