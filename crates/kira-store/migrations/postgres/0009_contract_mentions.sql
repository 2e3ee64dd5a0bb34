-- The conflict scan's other direction: a counterparty a company lists is
-- looked for in other companies' contract and deal texts (which may name it
-- without listing it). An admin_read transaction (the audited admin path,
-- SELECT only) may read those memories, and no others.
CREATE POLICY contract_mention_scan ON memories FOR SELECT
    USING (current_setting('app.admin_read', true) = 'on'
           AND (event_type = 'contract'
                OR lower(category) LIKE '%contract%'
                OR lower(category) LIKE '%deal%'));
