-- Discovery: a manifest's skills in the A2A AgentSkill shape, and the rest of
-- an A2A AgentCard that describes the agent kind (provider, documentation,
-- interfaces, capability flags, default media types, security schemes).
-- Both are JSON in the card's own field names (camelCase), so an exported
-- card writes them back as they came. Existing manifests get no skills and no
-- card; they keep working by their capability names.
ALTER TABLE agent_manifests
    ADD COLUMN skills jsonb NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(skills) = 'array'),
    ADD COLUMN card jsonb CHECK (card IS NULL OR jsonb_typeof(card) = 'object');

-- The trigger of migration 0003 notifies every update of a row, so a change
-- of skills reaches every replica's search index like any other change.
