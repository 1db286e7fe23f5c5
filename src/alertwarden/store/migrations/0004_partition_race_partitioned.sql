-- Creating a day partition from several sessions at once could fail with "relation already
-- exists": after waiting for the advisory lock, the second check could still read a catalog
-- cache from before the other session's commit, since an advisory lock does not refresh it.
-- The duplicate is now caught instead.
CREATE OR REPLACE FUNCTION alertwarden_ensure_history_partition(day date) RETURNS boolean
LANGUAGE plpgsql AS $fn$
DECLARE
    partition_name text := 'evaluation_history_' || to_char(day, 'YYYYMMDD');
BEGIN
    IF to_regclass(quote_ident(partition_name)) IS NOT NULL THEN
        RETURN false;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('alertwarden_history_partition'));
    BEGIN
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF evaluation_history FOR VALUES FROM (%L) TO (%L)',
            partition_name,
            (day::timestamp AT TIME ZONE 'UTC'),
            ((day + 1)::timestamp AT TIME ZONE 'UTC')
        );
    EXCEPTION WHEN duplicate_table THEN
        RETURN false;
    END;
    RETURN true;
END
$fn$;
