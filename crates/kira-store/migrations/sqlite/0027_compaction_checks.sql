-- Context retention (issue 22's KPI): each compaction summary's check of
-- what it kept of its sources' facts (kira_core::memory::retention),
-- written in the transaction that writes the summary. Company data.
CREATE TABLE compaction_checks (
    company_id TEXT NOT NULL REFERENCES companies (company_id),
    summary_id TEXT NOT NULL,
    at         TEXT NOT NULL,
    sources    INTEGER NOT NULL CHECK (sources >= 2),
    facts      INTEGER NOT NULL CHECK (facts >= 0),
    kept       INTEGER NOT NULL CHECK (kept >= 0 AND kept <= facts),
    PRIMARY KEY (company_id, summary_id)
) STRICT;
CREATE INDEX compaction_checks_at ON compaction_checks (company_id, at);
