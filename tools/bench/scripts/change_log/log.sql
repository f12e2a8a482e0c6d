\set id random(1, 10000)
BEGIN;
UPDATE rows SET v = v + 1 WHERE id = :id;
INSERT INTO change_log (payload) VALUES (jsonb_build_object('kind', 'registration', 'id', :id));
COMMIT;
