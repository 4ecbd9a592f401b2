-- Lifecycle state for the policy engine. The store keeps the engine's JSON opaque: it never interprets policy.

-- Leavers are archived, not erased: a SCIM DELETE sets archived_at; a rehire revives the same row.
ALTER TABLE scim_users ADD COLUMN archived_at TEXT;
ALTER TABLE scim_users ADD COLUMN employee_number TEXT;
ALTER TABLE scim_groups ADD COLUMN archived_at TEXT;
DROP INDEX scim_users_user_name;
CREATE UNIQUE INDEX scim_users_user_name ON scim_users (tenant, user_name_lower) WHERE archived_at IS NULL;
CREATE INDEX scim_users_employee_number ON scim_users (tenant, employee_number);

-- Per identity: what it currently holds on each target (as the engine last accepted it), when it became a
-- leaver, and when it must be evaluated again (the durable timer).
CREATE TABLE identity_state (
    tenant       TEXT   NOT NULL,
    identity_id  TEXT   NOT NULL,
    version      BIGINT NOT NULL,
    leaver_since TEXT,
    current      TEXT   NOT NULL,
    evaluation   TEXT   NOT NULL,
    policy_hash  TEXT   NOT NULL,
    wakeup_at    TEXT,
    updated      TEXT   NOT NULL,
    PRIMARY KEY (tenant, identity_id)
);
CREATE INDEX identity_state_wakeup ON identity_state (wakeup_at);

-- Every plan the engine made, with its cause and rationale: the handover to provisioning.
CREATE TABLE plans (
    tenant      TEXT NOT NULL,
    id          TEXT NOT NULL,
    identity_id TEXT NOT NULL,
    created     TEXT NOT NULL,
    cause       TEXT NOT NULL,
    mode        TEXT NOT NULL,
    policy_hash TEXT NOT NULL,
    items       TEXT NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX plans_identity ON plans (tenant, identity_id, created);

-- Approval requests: one per held plan item, with its resolved stages and decision history in `request`.
CREATE TABLE approvals (
    tenant       TEXT   NOT NULL,
    id           TEXT   NOT NULL,
    identity_id  TEXT   NOT NULL,
    status       TEXT   NOT NULL,
    created      TEXT   NOT NULL,
    escalate_at  TEXT,
    expires_at   TEXT   NOT NULL,
    decided_at   TEXT,
    version      BIGINT NOT NULL,
    request      TEXT   NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX approvals_status ON approvals (tenant, status);
CREATE INDEX approvals_identity ON approvals (tenant, identity_id);
CREATE INDEX approvals_due ON approvals (status, expires_at);

-- Approved Separation-of-Duties exceptions, reported until they expire.
CREATE TABLE sod_exceptions (
    tenant      TEXT NOT NULL,
    identity_id TEXT NOT NULL,
    rule        TEXT NOT NULL,
    approver    TEXT NOT NULL,
    approval_id TEXT NOT NULL,
    created     TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    PRIMARY KEY (tenant, identity_id, rule)
);
