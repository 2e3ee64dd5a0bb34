-- The full-text index's `company` column was tokenised like text, so the
-- id `delta-bank` was the words `delta` and `bank`: a search of `delta`'s
-- memories (`company : "delta"`) also matched `delta-bank`'s, whose
-- matches then counted in `delta`'s word frequencies and changed its
-- ranking. The column now holds the id in hex, one token that matches
-- exactly one company, so a search still starts from the company's own
-- documents (a seek, not every company's matches) and counts nothing of
-- another's. Rebuilt from `memories`.
DROP TRIGGER memories_fts_insert;
DROP TRIGGER memories_fts_delete;
DROP TRIGGER memories_fts_update;
DROP TABLE memories_fts;

CREATE VIRTUAL TABLE memories_fts USING fts5 (
    company, text, category, terms,
    content = '',
    contentless_delete = 1,
    tokenize = 'porter unicode61 remove_diacritics 2'
);

INSERT INTO memories_fts (rowid, company, text, category, terms)
SELECT seq, hex(company_id), content ->> '$.text', category,
       (SELECT group_concat(value, ' ') FROM json_each(indexed_terms))
FROM memories;

CREATE TRIGGER memories_fts_insert AFTER INSERT ON memories
BEGIN
    INSERT INTO memories_fts (rowid, company, text, category, terms)
    VALUES (new.seq, hex(new.company_id), new.content ->> '$.text', new.category,
            (SELECT group_concat(value, ' ') FROM json_each(new.indexed_terms)));
END;

CREATE TRIGGER memories_fts_delete AFTER DELETE ON memories
BEGIN
    DELETE FROM memories_fts WHERE rowid = old.seq;
END;

CREATE TRIGGER memories_fts_update AFTER UPDATE OF company_id, content, category, indexed_terms ON memories
BEGIN
    DELETE FROM memories_fts WHERE rowid = old.seq;
    INSERT INTO memories_fts (rowid, company, text, category, terms)
    VALUES (new.seq, hex(new.company_id), new.content ->> '$.text', new.category,
            (SELECT group_concat(value, ' ') FROM json_each(new.indexed_terms)));
END;
