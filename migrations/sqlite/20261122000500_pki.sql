-- Certificates and probes: X.509 domains per group and issued certificates,
-- SSH host certificates of enrolled targets, liveness probes and results.
-- Times are Unix milliseconds (BIGINT) on every backend.

CREATE TABLE pki_domains (
    id          TEXT PRIMARY KEY,
    group_name  TEXT NOT NULL,
    pattern     TEXT NOT NULL,
    max_ttl_ms  BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    created_by  TEXT NOT NULL DEFAULT '',
    UNIQUE (group_name, pattern)
);

CREATE TABLE pki_certificates (
    serial              TEXT PRIMARY KEY,
    name                TEXT NOT NULL,
    group_name          TEXT NOT NULL,
    dns_names           TEXT NOT NULL,
    subject             TEXT NOT NULL,
    key_type            TEXT NOT NULL DEFAULT '',
    not_before          BIGINT NOT NULL,
    not_after           BIGINT NOT NULL,
    fingerprint_sha256  TEXT NOT NULL,
    leaf_pem            TEXT NOT NULL,
    chain_pem           TEXT NOT NULL,
    requested_by        TEXT NOT NULL,
    issued_at           BIGINT NOT NULL,
    revoked_at          BIGINT,
    revoke_reason       TEXT
);
CREATE INDEX pki_certificates_name ON pki_certificates(name, issued_at);
CREATE INDEX pki_certificates_not_after ON pki_certificates(not_after);
CREATE INDEX pki_certificates_fingerprint ON pki_certificates(fingerprint_sha256);

CREATE TABLE host_certificates (
    serial           TEXT PRIMARY KEY,
    host_id          TEXT NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
    host_name        TEXT NOT NULL,
    key_fingerprint  TEXT NOT NULL,
    principals       TEXT NOT NULL,
    issued_at        BIGINT NOT NULL,
    not_after        BIGINT NOT NULL,
    via              TEXT NOT NULL,
    superseded_at    BIGINT
);
CREATE INDEX host_certificates_host ON host_certificates(host_id);

CREATE TABLE probes (
    id                       TEXT PRIMARY KEY,
    target                   TEXT NOT NULL,
    kind                     TEXT NOT NULL,
    host_id                  TEXT NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
    host_name                TEXT NOT NULL,
    expect_certificate_name  TEXT,
    interval_ms              BIGINT,
    groups_json              TEXT,
    created_by               TEXT NOT NULL,
    created_at               BIGINT NOT NULL,
    next_run_at              BIGINT,
    deleted_at               BIGINT
);
CREATE INDEX probes_due ON probes(next_run_at);

CREATE TABLE probe_results (
    id          TEXT PRIMARY KEY,
    probe_id    TEXT NOT NULL REFERENCES probes(id) ON DELETE CASCADE,
    at          BIGINT NOT NULL,
    status      TEXT NOT NULL,
    latency_ms  BIGINT,
    error       TEXT,
    observed    TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX probe_results_probe ON probe_results(probe_id, at);
