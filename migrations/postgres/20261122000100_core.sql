-- Core path: identities, hosts, grants, sessions, recordings, tokens, audit.
-- Times are Unix milliseconds (BIGINT) on every backend.

CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    role        TEXT NOT NULL DEFAULT 'user',
    created_at  BIGINT NOT NULL
);

CREATE TABLE user_keys (
    fingerprint TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    public_key  TEXT NOT NULL,
    comment     TEXT NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL
);
CREATE INDEX user_keys_user ON user_keys(user_id);

CREATE TABLE agents (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    owner_id      TEXT NOT NULL REFERENCES users(id),
    scopes        TEXT NOT NULL DEFAULT '[]',
    groups_json   TEXT NOT NULL DEFAULT '[]',
    risk          TEXT NOT NULL DEFAULT 'medium',
    status        TEXT NOT NULL DEFAULT 'active',
    public_key    TEXT,
    created_at    BIGINT NOT NULL,
    created_by    TEXT NOT NULL DEFAULT '',
    updated_at    BIGINT
);

CREATE TABLE hosts (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    address     TEXT NOT NULL,
    host_key    TEXT,
    created_at  BIGINT NOT NULL
);

CREATE TABLE host_groups (
    host_id     TEXT NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
    group_name  TEXT NOT NULL,
    PRIMARY KEY (host_id, group_name)
);
CREATE INDEX host_groups_group ON host_groups(group_name);

CREATE TABLE grants (
    id            TEXT PRIMARY KEY,
    subject_kind  TEXT NOT NULL,
    subject_id    TEXT NOT NULL,
    host_id       TEXT NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
    login         TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    reason        TEXT NOT NULL DEFAULT '',
    created_by    TEXT NOT NULL,
    revoked_at    BIGINT,
    revoked_by    TEXT
);
CREATE INDEX grants_subject ON grants(subject_kind, subject_id, host_id);

CREATE TABLE sessions (
    id                TEXT PRIMARY KEY,
    kind              TEXT NOT NULL,
    subject_kind      TEXT NOT NULL,
    subject_id        TEXT NOT NULL,
    subject_name      TEXT NOT NULL,
    host_id           TEXT NOT NULL,
    host_name         TEXT NOT NULL,
    login             TEXT NOT NULL,
    grant_id          TEXT,
    client_addr       TEXT NOT NULL DEFAULT '',
    mcp_session_id    TEXT,
    node_id           TEXT NOT NULL DEFAULT '',
    cert_serial       TEXT NOT NULL DEFAULT '',
    started_at        BIGINT NOT NULL,
    expires_at        BIGINT,
    ended_at          BIGINT,
    end_reason        TEXT,
    exit_status       BIGINT,
    exit_signal       TEXT,
    bytes_in          BIGINT NOT NULL DEFAULT 0,
    bytes_out         BIGINT NOT NULL DEFAULT 0,
    recording_path    TEXT,
    recording_sha256  TEXT,
    kill_requested_at BIGINT,
    kill_reason       TEXT
);
CREATE INDEX sessions_active ON sessions(ended_at);
CREATE INDEX sessions_grant ON sessions(grant_id);

CREATE TABLE recordings (
    id             TEXT PRIMARY KEY,
    session_id     TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    channel        BIGINT NOT NULL,
    kind           TEXT NOT NULL,
    command        TEXT NOT NULL DEFAULT '',
    path           TEXT NOT NULL,
    started_at     BIGINT NOT NULL,
    ended_at       BIGINT,
    bytes_in       BIGINT NOT NULL DEFAULT 0,
    bytes_out      BIGINT NOT NULL DEFAULT 0,
    sha256_in      TEXT,
    sha256_out     TEXT,
    truncated      BIGINT NOT NULL DEFAULT 0,
    exit_status    BIGINT,
    exit_signal    TEXT,
    file_sha256    TEXT
);
CREATE INDEX recordings_session ON recordings(session_id);

CREATE TABLE tokens (
    id              TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    subject_id      TEXT NOT NULL DEFAULT '',
    hash            TEXT NOT NULL UNIQUE,
    created_at      BIGINT NOT NULL,
    created_by      TEXT NOT NULL DEFAULT '',
    expires_at      BIGINT,
    revoked_at      BIGINT,
    single_use      BIGINT NOT NULL DEFAULT 0,
    used_at         BIGINT,
    last_used_at    BIGINT,
    last_used_addr  TEXT,
    cidrs           TEXT NOT NULL DEFAULT '[]'
);

CREATE TABLE audit_events (
    seq            BIGSERIAL PRIMARY KEY,
    id             TEXT NOT NULL UNIQUE,
    at             BIGINT NOT NULL,
    actor          TEXT NOT NULL,
    actor_kind     TEXT NOT NULL,
    action         TEXT NOT NULL,
    resource       TEXT NOT NULL DEFAULT '',
    outcome        TEXT NOT NULL,
    severity       TEXT NOT NULL DEFAULT 'info',
    reason         TEXT NOT NULL DEFAULT '',
    session_id     TEXT,
    client_addr    TEXT NOT NULL DEFAULT '',
    mcp_session_id TEXT,
    details        TEXT NOT NULL DEFAULT '{}',
    prev_hash      TEXT NOT NULL,
    hash           TEXT NOT NULL
);
CREATE INDEX audit_at ON audit_events(at);
CREATE INDEX audit_actor ON audit_events(actor);
CREATE INDEX audit_session ON audit_events(session_id);
