-- A counter every change to `companies` bumps, so the engine can keep the
-- directory of companies (for sharing decisions) and know, with one tiny
-- read, when it must read it again.
CREATE TABLE directory_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
) STRICT;
INSERT INTO directory_version (id, version) VALUES (1, 0);

CREATE TRIGGER companies_directory_insert AFTER INSERT ON companies
BEGIN
    UPDATE directory_version SET version = version + 1 WHERE id = 1;
END;
CREATE TRIGGER companies_directory_update AFTER UPDATE ON companies
BEGIN
    UPDATE directory_version SET version = version + 1 WHERE id = 1;
END;
CREATE TRIGGER companies_directory_delete AFTER DELETE ON companies
BEGIN
    UPDATE directory_version SET version = version + 1 WHERE id = 1;
END;
