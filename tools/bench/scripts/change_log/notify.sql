\set id random(1, 10000)
BEGIN;
UPDATE rows SET v = v + 1 WHERE id = :id;
SELECT pg_notify('agentry_changes', json_build_object('kind', 'registration', 'id', :id)::text);
COMMIT;
