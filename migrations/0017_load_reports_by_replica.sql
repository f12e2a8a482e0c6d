-- Load reports travel from the replica that holds an instance's stream to
-- every replica's routing without being written into the registration row:
-- each replica's load writer publishes what its streams passed on within one
-- interval (--load-flush-interval) as one statement of notifications on
-- `agentry_changes` (see 0008 for the other kinds):
--
--   {"kind": "loads", "reports": [{"id", "tenant", "configuration", "epoch",
--     "in_flight", "queue_depth", "utilization", "metrics",
--     "reported_at", "first_reported_at"}, ...]}
--
-- one report per instance, the fields of 0014's "load" kind without the
-- row's times (a report with all load fields null: the agent stopped
-- reporting); each payload stays under 8,000 bytes. A row write cost a row
-- update, its indexes and a NOTIFY per instance and move; this costs one
-- transaction per replica and interval.
--
-- The columns of 0013 stay (replicas before this migration still write
-- them during an upgrade) but no longer hold what routing ranks by: the
-- reports they hold now are cleared, so that none comes back as current.
UPDATE agent_registrations
   SET load_in_flight = NULL, load_queue_depth = NULL, load_utilization = NULL,
       load_metrics = NULL, load_reported_at = NULL, load_first_reported_at = NULL
 WHERE load_reported_at IS NOT NULL;
