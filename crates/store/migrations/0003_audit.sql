-- The tamper-evident audit trail (crates/store/src/audit.rs). Append-only: the gateway never updates or deletes
-- a record; retention (`scimgate audit prune`) deletes a prefix of a tenant's chain and records the anchor.
-- Each record's hash is SHA-256 over its fields and the previous record's hash, so an edit, a deletion, a move
-- or an insertion breaks the chain where it happened.

CREATE TABLE audit_log (
    tenant      TEXT   NOT NULL,
    seq         BIGINT NOT NULL,
    at          TEXT   NOT NULL,
    kind        TEXT   NOT NULL,
    actor       TEXT   NOT NULL,
    identity_id TEXT,
    request_id  TEXT,
    data        TEXT   NOT NULL,
    prev_hash   TEXT   NOT NULL,
    hash        TEXT   NOT NULL,
    PRIMARY KEY (tenant, seq)
);
CREATE INDEX audit_log_at ON audit_log (tenant, at);
CREATE INDEX audit_log_identity ON audit_log (tenant, identity_id, seq);

-- The end of each tenant's chain. Appenders take this row's lock first (an UPDATE), so appends to one tenant
-- are serialized and the chain stays linear.
CREATE TABLE audit_head (
    tenant TEXT   PRIMARY KEY,
    seq    BIGINT NOT NULL,
    hash   TEXT   NOT NULL
);

-- Where retention cut the chain: the seq and hash of the last pruned record. Verification starts after it.
CREATE TABLE audit_anchor (
    tenant    TEXT   PRIMARY KEY,
    seq       BIGINT NOT NULL,
    hash      TEXT   NOT NULL,
    pruned_at TEXT   NOT NULL
);
