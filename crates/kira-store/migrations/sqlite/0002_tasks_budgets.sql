-- Tasks, the queue, token budgets and their ledger.

-- A task: SEED 1's message and its response. Company data.
CREATE TABLE tasks (
    task_id               TEXT PRIMARY KEY,
    company_id            TEXT NOT NULL REFERENCES companies (company_id),
    seq                   INTEGER NOT NULL,
    task_type             TEXT NOT NULL,
    specialist            TEXT,
    agent                 TEXT NOT NULL,
    priority              TEXT NOT NULL CHECK (priority IN ('emergency', 'urgent', 'high', 'medium', 'low')),
    task                  TEXT NOT NULL,
    parameters            TEXT NOT NULL,             -- JSON object
    company_context       TEXT NOT NULL,             -- JSON object: the profile at submission
    deadline              TEXT,
    idempotency_key       TEXT,
    request_hash          TEXT,
    status                TEXT NOT NULL,
    status_reason         TEXT NOT NULL DEFAULT '',
    attempts              INTEGER NOT NULL DEFAULT 0,
    max_attempts          INTEGER NOT NULL,
    estimated_tokens      INTEGER NOT NULL CHECK (estimated_tokens > 0),
    result                TEXT,                      -- JSON
    confidence            REAL,
    requires_human_review INTEGER NOT NULL DEFAULT 0,
    last_error            TEXT,
    prompt_tokens         INTEGER NOT NULL DEFAULT 0,
    completion_tokens     INTEGER NOT NULL DEFAULT 0,
    cost_usd              REAL NOT NULL DEFAULT 0,
    created_at            TEXT NOT NULL,
    updated_at            TEXT NOT NULL,
    started_at            TEXT,
    finished_at           TEXT,
    UNIQUE (company_id, seq),
    UNIQUE (company_id, idempotency_key)
) STRICT;
CREATE INDEX tasks_company_created ON tasks (company_id, created_at, task_id);

-- Every state change of a task, for history and `task watch`.
CREATE TABLE task_events (
    event_id    INTEGER PRIMARY KEY,
    company_id  TEXT NOT NULL,
    task_id     TEXT NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    at          TEXT NOT NULL,
    from_status TEXT,
    to_status   TEXT NOT NULL,
    reason      TEXT NOT NULL
) STRICT;
CREATE INDEX task_events_task ON task_events (task_id, event_id);

-- The queue: scheduling facts of every unfinished task, and nothing of its
-- content, so the scheduler can rank all companies' work in one read.
CREATE TABLE task_queue (
    task_id          TEXT PRIMARY KEY REFERENCES tasks (task_id) ON DELETE CASCADE,
    company_id       TEXT NOT NULL,
    agent            TEXT NOT NULL,
    status           TEXT NOT NULL,
    priority         TEXT NOT NULL,
    multiplier       REAL NOT NULL,
    deadline         TEXT,
    waiting_since    TEXT NOT NULL,
    not_before       TEXT NOT NULL,
    estimated_tokens INTEGER NOT NULL,
    attempts         INTEGER NOT NULL,
    lease_owner      TEXT,
    lease_expires_at TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX task_queue_ready ON task_queue (status, not_before);
CREATE INDEX task_queue_lease ON task_queue (lease_expires_at) WHERE lease_owner IS NOT NULL;

-- One row per budget period (a calendar month by default).
CREATE TABLE budget_periods (
    period_id    TEXT PRIMARY KEY,
    starts_at    TEXT NOT NULL,
    ends_at      TEXT NOT NULL,
    total_tokens INTEGER NOT NULL CHECK (total_tokens > 0),
    created_at   TEXT NOT NULL
) STRICT;

-- The pools of a period. The CHECK is the last line of defence; reservations
-- are conditional updates that never ask it to fire.
CREATE TABLE budget_pools (
    period_id TEXT NOT NULL REFERENCES budget_periods (period_id),
    pool      TEXT NOT NULL CHECK (pool IN ('base', 'burst', 'emergency')),
    capacity  INTEGER NOT NULL CHECK (capacity >= 0),
    reserved  INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    spent     INTEGER NOT NULL DEFAULT 0 CHECK (spent >= 0),
    PRIMARY KEY (period_id, pool),
    CHECK (reserved + spent <= capacity)
) STRICT;

-- Each company's share of the base pool in a period. Company data.
CREATE TABLE budget_allocations (
    period_id  TEXT NOT NULL REFERENCES budget_periods (period_id),
    company_id TEXT NOT NULL REFERENCES companies (company_id),
    factor     REAL NOT NULL,
    share      REAL NOT NULL,
    tokens     INTEGER NOT NULL CHECK (tokens >= 0),
    reserved   INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    spent      INTEGER NOT NULL DEFAULT 0 CHECK (spent >= 0),
    PRIMARY KEY (period_id, company_id),
    CHECK (reserved + spent <= tokens)
) STRICT;

-- Tokens held for one LLM call (or one run) of a task. Company data.
CREATE TABLE reservations (
    reservation_id TEXT PRIMARY KEY,
    company_id     TEXT NOT NULL REFERENCES companies (company_id),
    task_id        TEXT NOT NULL REFERENCES tasks (task_id),
    period_id      TEXT NOT NULL REFERENCES budget_periods (period_id),
    pool           TEXT NOT NULL,
    amount         INTEGER NOT NULL CHECK (amount > 0),
    state          TEXT NOT NULL CHECK (state IN ('held', 'settled', 'released')),
    spent          INTEGER NOT NULL DEFAULT 0,
    created_at     TEXT NOT NULL,
    closed_at      TEXT
) STRICT;
CREATE INDEX reservations_task ON reservations (task_id, state);

-- Every token movement, append-only. Company data where it names a company.
CREATE TABLE budget_ledger (
    entry_id       INTEGER PRIMARY KEY,
    at             TEXT NOT NULL,
    period_id      TEXT NOT NULL,
    company_id     TEXT,
    task_id        TEXT,
    reservation_id TEXT,
    pool           TEXT,
    kind           TEXT NOT NULL CHECK (kind IN ('rollover', 'allocate', 'reserve', 'settle', 'release', 'grant')),
    amount         INTEGER NOT NULL,
    detail         TEXT NOT NULL DEFAULT ''
) STRICT;
CREATE INDEX budget_ledger_period ON budget_ledger (period_id, entry_id);
CREATE TRIGGER budget_ledger_no_update BEFORE UPDATE ON budget_ledger
BEGIN SELECT RAISE(ABORT, 'budget_ledger is append-only'); END;
CREATE TRIGGER budget_ledger_no_delete BEFORE DELETE ON budget_ledger
BEGIN SELECT RAISE(ABORT, 'budget_ledger is append-only'); END;

-- Requests for emergency tokens, decided by a human. Company data.
CREATE TABLE emergency_requests (
    request_id   TEXT PRIMARY KEY,
    company_id   TEXT NOT NULL REFERENCES companies (company_id),
    task_id      TEXT NOT NULL REFERENCES tasks (task_id),
    period_id    TEXT NOT NULL,
    amount       INTEGER NOT NULL CHECK (amount > 0),
    status       TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'rejected')),
    reason       TEXT NOT NULL,
    requested_at TEXT NOT NULL,
    decided_at   TEXT,
    decided_by   TEXT,
    decision     TEXT
) STRICT;
CREATE UNIQUE INDEX emergency_requests_one_pending ON emergency_requests (task_id) WHERE status = 'pending';
