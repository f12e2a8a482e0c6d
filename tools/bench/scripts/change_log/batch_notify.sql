\set id random(1, 9900)
BEGIN;
UPDATE rows SET v = v + 1 WHERE id BETWEEN :id AND :id + 99;
SELECT pg_notify('agentry_changes', json_build_object('kind', 'registration', 'id', g)::text) FROM generate_series(:id, :id + 99) g;
COMMIT;
