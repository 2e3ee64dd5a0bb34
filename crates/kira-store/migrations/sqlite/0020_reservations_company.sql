-- The budget view sums each company's settled reservations of the period
-- (`budget_lines`): without this index that was a scan of every
-- reservation per company, 0.6 s for 1,000 companies of 6 runs each
-- (`kira bench metrics`, whose scrape reads the budget). Only inserted to:
-- a settlement changes state and spent, which are not in it. PostgreSQL
-- has had one since 0002 (company_id, state).
CREATE INDEX reservations_company ON reservations (company_id, period_id);
