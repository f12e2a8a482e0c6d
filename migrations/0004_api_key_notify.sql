-- Replicas cache authenticated keys; a revoked or deleted key must stop
-- working everywhere, so changes of api_keys go on the change feed too.
CREATE FUNCTION agentry_notify_api_key() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('agentry_changes', json_build_object('k', 'k', 'id', OLD.id)::text);
    RETURN NULL;
END $$;
CREATE TRIGGER api_keys_notify AFTER UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION agentry_notify_api_key();
