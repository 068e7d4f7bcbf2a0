-- Agents asking humans before a privileged action ("reload nginx on prod").
-- Humans decide; an agent can never approve anything.
CREATE TABLE action_approvals (
    id               TEXT PRIMARY KEY,
    agent_id         TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    agent_name       TEXT NOT NULL,
    action           TEXT NOT NULL,
    resource         TEXT NOT NULL,
    reason           TEXT NOT NULL,
    status           TEXT NOT NULL,
    client_addr      TEXT NOT NULL DEFAULT '',
    mcp_session_id   TEXT,
    created_at       BIGINT NOT NULL,
    expires_at       BIGINT NOT NULL,
    decided_at       BIGINT,
    decided_by       TEXT,
    decision_reason  TEXT
);
CREATE INDEX action_approvals_status ON action_approvals(status, created_at);
