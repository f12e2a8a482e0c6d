\set id random(1, 9900)
BEGIN;
UPDATE rows SET v = v + 1 WHERE id BETWEEN :id AND :id + 99;
INSERT INTO change_log (payload) SELECT jsonb_build_object('kind', 'registration', 'id', g) FROM generate_series(:id, :id + 99) g;
SELECT pg_notify('agentry_wake', '');
COMMIT;
