-- Issue #20: the sources of a compaction summary stay in the database,
-- archived from lists and the hot and warm sections of context packs but
-- still found by search, and are never purged: until a summary is shown
-- to keep what its sources said, they are the only full record.
-- `summary_id` names the summary a source was archived into.
ALTER TABLE memories ADD COLUMN summary_id TEXT;

UPDATE memories SET summary_id = (
    SELECT s.id FROM memories s, json_each(s.compacted_from) j
    WHERE s.company_id = memories.company_id AND j.value = memories.id
    LIMIT 1
)
WHERE archived_at IS NOT NULL;
