-- Issue 19: the ledger is the provider's truth. Usage above a reservation is
-- always charged; when the allocation or pool has no room left, the balance
-- goes below zero and an `overdraft` row says by how much. Holds stay
-- conditional (`reserved + spent + n <= limit`), so an overdrawn company's
-- claims are refused until the next period or an approved emergency grant.
-- SQLite cannot drop a CHECK: the three tables are rebuilt (nothing refers
-- to them; DROP TABLE fires no trigger, so the ledger's rows move intact).
CREATE TABLE budget_pools_new (
    period_id TEXT NOT NULL REFERENCES budget_periods (period_id),
    pool      TEXT NOT NULL CHECK (pool IN ('base', 'burst', 'emergency')),
    capacity  INTEGER NOT NULL CHECK (capacity >= 0),
    reserved  INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    spent     INTEGER NOT NULL DEFAULT 0 CHECK (spent >= 0),
    PRIMARY KEY (period_id, pool)
) STRICT;
INSERT INTO budget_pools_new (period_id, pool, capacity, reserved, spent)
    SELECT period_id, pool, capacity, reserved, spent FROM budget_pools;
DROP TABLE budget_pools;
ALTER TABLE budget_pools_new RENAME TO budget_pools;

CREATE TABLE budget_allocations_new (
    period_id  TEXT NOT NULL REFERENCES budget_periods (period_id),
    company_id TEXT NOT NULL REFERENCES companies (company_id),
    factor     REAL NOT NULL,
    share      REAL NOT NULL,
    tokens     INTEGER NOT NULL CHECK (tokens >= 0),
    reserved   INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    spent      INTEGER NOT NULL DEFAULT 0 CHECK (spent >= 0),
    PRIMARY KEY (period_id, company_id)
) STRICT;
INSERT INTO budget_allocations_new (period_id, company_id, factor, share, tokens, reserved, spent)
    SELECT period_id, company_id, factor, share, tokens, reserved, spent FROM budget_allocations;
DROP TABLE budget_allocations;
ALTER TABLE budget_allocations_new RENAME TO budget_allocations;

CREATE TABLE budget_ledger_new (
    entry_id       INTEGER PRIMARY KEY,
    at             TEXT NOT NULL,
    period_id      TEXT NOT NULL,
    company_id     TEXT,
    task_id        TEXT,
    reservation_id TEXT,
    pool           TEXT,
    kind           TEXT NOT NULL CHECK (kind IN ('rollover', 'allocate', 'reserve', 'settle', 'release', 'grant', 'overdraft', 'shrink')),
    amount         INTEGER NOT NULL,
    detail         TEXT NOT NULL DEFAULT ''
) STRICT;
INSERT INTO budget_ledger_new (entry_id, at, period_id, company_id, task_id, reservation_id, pool, kind, amount, detail)
    SELECT entry_id, at, period_id, company_id, task_id, reservation_id, pool, kind, amount, detail FROM budget_ledger;
DROP TABLE budget_ledger;
ALTER TABLE budget_ledger_new RENAME TO budget_ledger;
CREATE INDEX budget_ledger_period ON budget_ledger (period_id, entry_id);
CREATE TRIGGER budget_ledger_no_update BEFORE UPDATE ON budget_ledger
BEGIN SELECT RAISE(ABORT, 'budget_ledger is append-only'); END;
CREATE TRIGGER budget_ledger_no_delete BEFORE DELETE ON budget_ledger
BEGIN SELECT RAISE(ABORT, 'budget_ledger is append-only'); END;
