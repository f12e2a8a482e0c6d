\set id random(1, 10000)
UPDATE rows SET v = v + 1 WHERE id = :id;
