-- Issue #20: the sources of a compaction summary stay in the database,
-- archived from lists and the hot and warm sections of context packs but
-- still found by search, and are never purged: until a summary is shown
-- to keep what its sources said, they are the only full record.
-- `summary_id` names the summary a source was archived into.
ALTER TABLE memories ADD COLUMN summary_id UUID;

UPDATE memories m SET summary_id = s.id
FROM memories s
WHERE m.archived_at IS NOT NULL
  AND s.company_id = m.company_id
  AND m.id = ANY (s.compacted_from);
