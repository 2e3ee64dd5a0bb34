-- A counter every change to `companies` bumps, so the engine can keep the
-- directory of companies (for sharing decisions) and know, with one tiny
-- read, when it must read it again. Bumping it can only cause a re-read.
CREATE TABLE directory_version (
    id      integer PRIMARY KEY CHECK (id = 1),
    version bigint NOT NULL
);
INSERT INTO directory_version (id, version) VALUES (1, 0);

CREATE FUNCTION kira_bump_directory_version() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER AS $$
BEGIN
    UPDATE directory_version SET version = version + 1 WHERE id = 1;
    RETURN NULL;
END
$$;

CREATE TRIGGER companies_directory_version
    AFTER INSERT OR UPDATE OR DELETE ON companies
    FOR EACH STATEMENT EXECUTE FUNCTION kira_bump_directory_version();

GRANT SELECT, UPDATE ON directory_version TO kira_app;
