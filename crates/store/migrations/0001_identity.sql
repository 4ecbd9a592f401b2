-- Identity state. One set of migrations for SQLite and PostgreSQL: portable types only.
-- Timestamps are fixed-width UTC text (2026-01-31T09:00:00.000Z), so text order is time order.
-- Columns ending in _lower hold the value lower-cased by the gateway (caseExact=false attributes).

CREATE TABLE scim_users (
    tenant           TEXT   NOT NULL,
    id               TEXT   NOT NULL,
    user_name        TEXT   NOT NULL,
    user_name_lower  TEXT   NOT NULL,
    external_id      TEXT,
    display_name_lower TEXT,
    version          BIGINT NOT NULL,
    created          TEXT   NOT NULL,
    last_modified    TEXT   NOT NULL,
    password_hash    TEXT,
    doc              TEXT   NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE UNIQUE INDEX scim_users_user_name ON scim_users (tenant, user_name_lower);
CREATE INDEX scim_users_external_id ON scim_users (tenant, external_id);
CREATE INDEX scim_users_display_name ON scim_users (tenant, display_name_lower);
CREATE INDEX scim_users_last_modified ON scim_users (tenant, last_modified);

CREATE TABLE scim_user_emails (
    tenant      TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    value_lower TEXT NOT NULL,
    PRIMARY KEY (tenant, user_id, value_lower)
);
CREATE INDEX scim_user_emails_value ON scim_user_emails (tenant, value_lower);

CREATE TABLE scim_groups (
    tenant             TEXT   NOT NULL,
    id                 TEXT   NOT NULL,
    display_name_lower TEXT   NOT NULL,
    external_id        TEXT,
    version            BIGINT NOT NULL,
    created            TEXT   NOT NULL,
    last_modified      TEXT   NOT NULL,
    doc                TEXT   NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE UNIQUE INDEX scim_groups_display_name ON scim_groups (tenant, display_name_lower);
CREATE INDEX scim_groups_external_id ON scim_groups (tenant, external_id);
CREATE INDEX scim_groups_last_modified ON scim_groups (tenant, last_modified);

-- Memberships are rows: adding one member to a group of 100k members is one insert.
CREATE TABLE scim_group_members (
    tenant      TEXT NOT NULL,
    group_id    TEXT NOT NULL,
    member_id   TEXT NOT NULL,
    member_type TEXT NOT NULL,
    PRIMARY KEY (tenant, group_id, member_id)
);
CREATE INDEX scim_group_members_member ON scim_group_members (tenant, member_id);
