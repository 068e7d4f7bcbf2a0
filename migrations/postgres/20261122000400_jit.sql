-- Just-in-time access: policies bound to host groups, access requests and
-- their approvals, temporary agent elevations, and outbound webhooks with a
-- delivery outbox. Times are Unix milliseconds (BIGINT) on every backend.

CREATE TABLE policies (
    group_name  TEXT PRIMARY KEY,
    source      TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    updated_by  TEXT NOT NULL
);

CREATE TABLE access_requests (
    id                  TEXT PRIMARY KEY,
    requester_kind      TEXT NOT NULL,
    requester_id        TEXT NOT NULL,
    requester_name      TEXT NOT NULL,
    host_id             TEXT NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
    host_name           TEXT NOT NULL,
    login               TEXT NOT NULL,
    ttl_ms              BIGINT NOT NULL,
    reason              TEXT NOT NULL DEFAULT '',
    status              TEXT NOT NULL,
    approvals_required  BIGINT NOT NULL DEFAULT 0,
    rule                TEXT NOT NULL DEFAULT '{}',
    elevate_groups      TEXT NOT NULL DEFAULT '[]',
    client_addr         TEXT NOT NULL DEFAULT '',
    filed_by            TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    expires_at          BIGINT NOT NULL,
    decided_at          BIGINT,
    decided_by          TEXT,
    decision_reason     TEXT,
    grant_id            TEXT
);
CREATE INDEX access_requests_status ON access_requests(status, expires_at);
CREATE INDEX access_requests_requester ON access_requests(requester_kind, requester_id, created_at);

CREATE TABLE approvals (
    request_id     TEXT NOT NULL REFERENCES access_requests(id) ON DELETE CASCADE,
    approver_key   TEXT NOT NULL,
    approver_name  TEXT NOT NULL,
    decision       TEXT NOT NULL,
    reason         TEXT NOT NULL DEFAULT '',
    at             BIGINT NOT NULL,
    PRIMARY KEY (request_id, approver_key)
);

CREATE TABLE elevations (
    id           TEXT PRIMARY KEY,
    agent_id     TEXT NOT NULL,
    agent_name   TEXT NOT NULL,
    groups_json  TEXT NOT NULL,
    request_id   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    ended_at     BIGINT
);
CREATE INDEX elevations_agent ON elevations(agent_id, expires_at);

CREATE TABLE webhooks (
    id             TEXT PRIMARY KEY,
    url            TEXT NOT NULL,
    events         TEXT NOT NULL,
    secret_sealed  TEXT,
    created_at     BIGINT NOT NULL,
    created_by     TEXT NOT NULL,
    removed_at     BIGINT
);

CREATE TABLE webhook_deliveries (
    id               TEXT PRIMARY KEY,
    webhook_id       TEXT NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    event_id         TEXT NOT NULL,
    event            TEXT NOT NULL,
    payload          TEXT NOT NULL,
    status           TEXT NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    locked_until     BIGINT,
    created_at       BIGINT NOT NULL,
    delivered_at     BIGINT,
    last_error       TEXT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(status, next_attempt_at);
CREATE INDEX webhook_deliveries_hook ON webhook_deliveries(webhook_id, created_at);

CREATE TABLE webhook_attempts (
    delivery_id  TEXT NOT NULL REFERENCES webhook_deliveries(id) ON DELETE CASCADE,
    attempt      BIGINT NOT NULL,
    at           BIGINT NOT NULL,
    duration_ms  BIGINT NOT NULL,
    http_status  BIGINT,
    error        TEXT,
    PRIMARY KEY (delivery_id, attempt)
);
