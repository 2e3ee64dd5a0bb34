-- Issue 19: the ledger is the provider's truth. Usage above a reservation is
-- always charged; when the allocation or pool has no room left, the balance
-- goes below zero and an `overdraft` row says by how much. Holds stay
-- conditional (`reserved + spent + n <= limit`), so an overdrawn company's
-- claims are refused until the next period or an approved emergency grant.
ALTER TABLE budget_pools DROP CONSTRAINT budget_pools_check;
ALTER TABLE budget_allocations DROP CONSTRAINT budget_allocations_check;
ALTER TABLE budget_ledger DROP CONSTRAINT budget_ledger_kind_check;
ALTER TABLE budget_ledger ADD CONSTRAINT budget_ledger_kind_check
    CHECK (kind IN ('rollover', 'allocate', 'reserve', 'settle', 'release', 'grant', 'overdraft', 'shrink'));
