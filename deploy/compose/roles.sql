-- Runs once, when the compose PostgreSQL initialises its data directory, as
-- the owner `agentry` (POSTGRES_USER). The replicas log in as `agentry_app`,
-- which may read and write rows but not change the schema nor create
-- databases: only the one-shot `migrate` service, as `agentry`, does that.
CREATE ROLE agentry_app LOGIN PASSWORD 'agentry_app' NOCREATEDB NOCREATEROLE;
-- Tables, sequences and functions the owner's migrations create later.
ALTER DEFAULT PRIVILEGES FOR ROLE agentry IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO agentry_app;
ALTER DEFAULT PRIVILEGES FOR ROLE agentry IN SCHEMA public
    GRANT USAGE ON SEQUENCES TO agentry_app;
ALTER DEFAULT PRIVILEGES FOR ROLE agentry IN SCHEMA public
    GRANT EXECUTE ON FUNCTIONS TO agentry_app;
