-- The outbox: downstream work, written in the same transaction as the identity change that caused it
-- (crates/store/src/outbox.rs). One row per (decision, target): the plan items for that target and the desired
-- account state they lead to. Workers claim rows with a lease; rows are never deleted while dead.
CREATE TABLE outbox (
    tenant      TEXT   NOT NULL,
    id          TEXT   NOT NULL,
    identity_id TEXT   NOT NULL,
    target      TEXT   NOT NULL,
    -- Order within an identity: the identity-state version the decision wrote, then the row's number in it.
    seq         BIGINT NOT NULL,
    item_no     BIGINT NOT NULL,
    plan_id     TEXT,
    -- apply or remove
    operation   TEXT   NOT NULL,
    -- 1: a leaver's lock, claimed ahead of everything else
    priority    BIGINT NOT NULL,
    -- JSON: the plan items and the desired account (never a secret)
    payload     TEXT   NOT NULL,
    -- A password for the target, sealed (AEAD) with the outbox key; cleared once delivered
    secret      TEXT,
    -- pending, running, done, dead, superseded
    status      TEXT   NOT NULL,
    attempts    BIGINT NOT NULL,
    next_at     TEXT   NOT NULL,
    lease_owner TEXT,
    lease_until TEXT,
    last_error  TEXT,
    created     TEXT   NOT NULL,
    updated     TEXT   NOT NULL,
    done_at     TEXT,
    PRIMARY KEY (tenant, id)
);
-- The claim: a target's pending rows, leavers' locks first, then oldest first, read in index order.
CREATE INDEX outbox_ready ON outbox (target, status, priority DESC, created, id);
-- Order within an identity and target (the claim's head-of-line check, supersession).
CREATE INDEX outbox_order ON outbox (tenant, identity_id, target, seq, item_no);
-- Listings (dead letters) in id order.
CREATE INDEX outbox_status ON outbox (tenant, status, id);
-- Leases that ran out (their worker died).
CREATE INDEX outbox_lease ON outbox (status, lease_until);

-- The account each identity holds on each target, as the adapter last reported it (a DN plus an entryUUID, say).
CREATE TABLE target_accounts (
    tenant      TEXT NOT NULL,
    identity_id TEXT NOT NULL,
    target      TEXT NOT NULL,
    account     TEXT NOT NULL,
    updated     TEXT NOT NULL,
    PRIMARY KEY (tenant, identity_id, target)
);
