-- The TimescaleDB history path has no day partitions of its own, so this step changes nothing
-- there; it exists so both paths share one sequence of versions.
SELECT 1;
