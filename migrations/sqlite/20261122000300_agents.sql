-- MCP front door: agents' signed-request nonces (replay protection).
CREATE TABLE agent_nonces (
    agent_id  TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    nonce     TEXT NOT NULL,
    seen_at   BIGINT NOT NULL,
    PRIMARY KEY (agent_id, nonce)
);
CREATE INDEX agent_nonces_seen ON agent_nonces(seen_at);
CREATE INDEX agents_status ON agents(status);
CREATE INDEX tokens_subject ON tokens(subject_id);
