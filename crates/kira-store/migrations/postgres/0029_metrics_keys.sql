-- Issue 22: a `metrics` key reads the system-wide Prometheus exposition
-- (`GET /metrics`) and nothing else. Like an admin key it belongs to no
-- company.
ALTER TABLE api_keys DROP CONSTRAINT api_keys_role_check;
ALTER TABLE api_keys DROP CONSTRAINT api_keys_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_role_check
    CHECK (role IN ('admin', 'operator', 'viewer', 'metrics'));
ALTER TABLE api_keys ADD CONSTRAINT api_keys_check
    CHECK ((role IN ('admin', 'metrics')) = (company_id IS NULL));
