-- +goose Up
-- Every resource table: id, tenant, version and times as columns, the entity as JSON in data,
-- plus the columns its filters and unique keys need. Times are Unix microseconds.
CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    version     INTEGER NOT NULL,
    create_time INTEGER NOT NULL,
    update_time INTEGER NOT NULL,
    data        TEXT NOT NULL,
    name        TEXT NOT NULL UNIQUE,
    status      TEXT NOT NULL
);

CREATE TABLE cvlans (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    create_time INTEGER NOT NULL,
    update_time INTEGER NOT NULL,
    data        TEXT NOT NULL,
    name        TEXT NOT NULL,
    ipv4_cidr   TEXT NOT NULL,
    ipv6_cidr   TEXT NOT NULL,
    -- Allocator hint: the IPv4 index to try first (next after the last allocation).
    ipv4_next   INTEGER NOT NULL DEFAULT 0,
    UNIQUE (tenant_id, name)
);

CREATE TABLE nodes (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT REFERENCES tenants (id) ON DELETE CASCADE,
    version        INTEGER NOT NULL,
    create_time    INTEGER NOT NULL,
    update_time    INTEGER NOT NULL,
    data           TEXT NOT NULL,
    name           TEXT NOT NULL,
    cvlan_id       TEXT REFERENCES cvlans (id),
    kind           TEXT NOT NULL,
    status         TEXT NOT NULL,
    sync_state     TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    wg_key         TEXT NOT NULL,
    -- The IPv4 overlay address as an integer: one address, one node, per cvlan.
    ipv4           INTEGER,
    pending_routes INTEGER NOT NULL,
    ephemeral      INTEGER NOT NULL,
    last_seen      INTEGER NOT NULL,
    UNIQUE (cvlan_id, name),
    UNIQUE (cvlan_id, ipv4)
);
CREATE INDEX nodes_tenant_name ON nodes (tenant_id, name, id);
CREATE UNIQUE INDEX nodes_wg_key ON nodes (tenant_id, wg_key) WHERE wg_key <> '';

CREATE TABLE users (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    version      INTEGER NOT NULL,
    create_time  INTEGER NOT NULL,
    update_time  INTEGER NOT NULL,
    data         TEXT NOT NULL,
    name         TEXT NOT NULL,
    email        TEXT NOT NULL,
    role         TEXT NOT NULL,
    status       TEXT NOT NULL,
    oidc_issuer  TEXT NOT NULL,
    oidc_subject TEXT NOT NULL,
    UNIQUE (tenant_id, name)
);
CREATE UNIQUE INDEX users_email ON users (tenant_id, email) WHERE email <> '';
CREATE UNIQUE INDEX users_oidc ON users (oidc_issuer, oidc_subject) WHERE oidc_subject <> '';

CREATE TABLE groups_ (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    create_time INTEGER NOT NULL,
    update_time INTEGER NOT NULL,
    data        TEXT NOT NULL,
    name        TEXT NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE tags (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    create_time INTEGER NOT NULL,
    update_time INTEGER NOT NULL,
    data        TEXT NOT NULL,
    name        TEXT NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE policies (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    create_time INTEGER NOT NULL,
    update_time INTEGER NOT NULL,
    data        TEXT NOT NULL,
    name        TEXT NOT NULL,
    cvlan_id    TEXT NOT NULL,
    enabled     INTEGER NOT NULL,
    UNIQUE (tenant_id, name)
);

-- Regions are global (no tenant).
CREATE TABLE regions (
    id          TEXT PRIMARY KEY,
    version     INTEGER NOT NULL,
    create_time INTEGER NOT NULL,
    update_time INTEGER NOT NULL,
    data        TEXT NOT NULL,
    name        TEXT NOT NULL,
    code        TEXT NOT NULL UNIQUE,
    UNIQUE (name)
);

-- Relays without a tenant are shared by every tenant.
CREATE TABLE relays (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT REFERENCES tenants (id) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    create_time INTEGER NOT NULL,
    update_time INTEGER NOT NULL,
    data        TEXT NOT NULL,
    name        TEXT NOT NULL,
    region_id   TEXT NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE UNIQUE INDEX relays_shared_name ON relays (name) WHERE tenant_id IS NULL;

CREATE TABLE vrouters (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    create_time INTEGER NOT NULL,
    update_time INTEGER NOT NULL,
    data        TEXT NOT NULL,
    name        TEXT NOT NULL,
    cvlan_id    TEXT NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE discovery_servers (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    create_time INTEGER NOT NULL,
    update_time INTEGER NOT NULL,
    data        TEXT NOT NULL,
    name        TEXT NOT NULL,
    region_id   TEXT NOT NULL,
    type        TEXT NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    create_time INTEGER NOT NULL,
    update_time INTEGER NOT NULL,
    data        TEXT NOT NULL,
    name        TEXT NOT NULL,
    hash        BLOB NOT NULL UNIQUE,
    revoked     INTEGER NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE join_tokens (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT REFERENCES tenants (id) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    create_time INTEGER NOT NULL,
    update_time INTEGER NOT NULL,
    data        TEXT NOT NULL,
    hash        BLOB NOT NULL UNIQUE,
    kind        TEXT NOT NULL,
    cvlan_id    TEXT NOT NULL,
    revoked     INTEGER NOT NULL
);
CREATE INDEX join_tokens_tenant ON join_tokens (tenant_id, id);

CREATE TABLE sessions (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    create_time INTEGER NOT NULL,
    update_time INTEGER NOT NULL,
    data        TEXT NOT NULL,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    hash        BLOB NOT NULL UNIQUE,
    expire_time INTEGER NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expire ON sessions (expire_time);

-- Audit entries outlive their tenant: no foreign key.
CREATE TABLE audit_log (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT,
    time          INTEGER NOT NULL,
    actor_type    TEXT NOT NULL,
    actor_id      TEXT NOT NULL,
    action        TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    data          TEXT NOT NULL
);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, id);
CREATE INDEX audit_log_resource ON audit_log (tenant_id, resource_type, resource_id);
CREATE INDEX audit_log_actor ON audit_log (tenant_id, actor_id);
CREATE INDEX audit_log_time ON audit_log (time);

-- The network-map change feed; AUTOINCREMENT so ids are never reused.
CREATE TABLE change_events (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id     TEXT,
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    op            TEXT NOT NULL,
    version       INTEGER NOT NULL,
    time          INTEGER NOT NULL
);

-- +goose Down
DROP TABLE change_events;
DROP TABLE audit_log;
DROP TABLE sessions;
DROP TABLE join_tokens;
DROP TABLE api_keys;
DROP TABLE discovery_servers;
DROP TABLE vrouters;
DROP TABLE relays;
DROP TABLE regions;
DROP TABLE policies;
DROP TABLE tags;
DROP TABLE groups_;
DROP TABLE users;
DROP TABLE nodes;
DROP TABLE cvlans;
DROP TABLE tenants;
