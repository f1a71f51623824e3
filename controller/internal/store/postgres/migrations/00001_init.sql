-- +goose Up
-- Every resource table: id, tenant, version and times as columns, the entity as JSON in data,
-- plus the columns its filters and unique keys need. Times are Unix microseconds. Names and ids
-- use the "C" collation so that ordering and prefix ranges match SQLite's byte order.
CREATE TABLE tenants (
    id          text COLLATE "C" PRIMARY KEY,
    version     bigint NOT NULL,
    create_time bigint NOT NULL,
    update_time bigint NOT NULL,
    data        jsonb NOT NULL,
    name        text COLLATE "C" NOT NULL UNIQUE,
    status      text NOT NULL
);

CREATE TABLE cvlans (
    id          text COLLATE "C" PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    version     bigint NOT NULL,
    create_time bigint NOT NULL,
    update_time bigint NOT NULL,
    data        jsonb NOT NULL,
    name        text COLLATE "C" NOT NULL,
    ipv4_cidr   text NOT NULL,
    ipv6_cidr   text NOT NULL,
    -- Allocator hint: the IPv4 index to try first (next after the last allocation).
    ipv4_next   bigint NOT NULL DEFAULT 0,
    UNIQUE (tenant_id, name)
);

CREATE TABLE nodes (
    id             text COLLATE "C" PRIMARY KEY,
    tenant_id      text REFERENCES tenants (id) ON DELETE CASCADE,
    version        bigint NOT NULL,
    create_time    bigint NOT NULL,
    update_time    bigint NOT NULL,
    data           jsonb NOT NULL,
    name           text COLLATE "C" NOT NULL,
    cvlan_id       text REFERENCES cvlans (id),
    kind           text NOT NULL,
    status         text NOT NULL,
    sync_state     text NOT NULL,
    user_id        text NOT NULL,
    wg_key         text NOT NULL,
    -- The IPv4 overlay address as an integer: one address, one node, per cvlan.
    ipv4           bigint,
    pending_routes boolean NOT NULL,
    ephemeral      boolean NOT NULL,
    last_seen      bigint NOT NULL,
    UNIQUE (cvlan_id, name),
    UNIQUE (cvlan_id, ipv4)
);
CREATE INDEX nodes_tenant_name ON nodes (tenant_id, name, id);
CREATE UNIQUE INDEX nodes_wg_key ON nodes (tenant_id, wg_key) WHERE wg_key <> '';

CREATE TABLE users (
    id           text COLLATE "C" PRIMARY KEY,
    tenant_id    text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    version      bigint NOT NULL,
    create_time  bigint NOT NULL,
    update_time  bigint NOT NULL,
    data         jsonb NOT NULL,
    name         text COLLATE "C" NOT NULL,
    email        text COLLATE "C" NOT NULL,
    role         text NOT NULL,
    status       text NOT NULL,
    oidc_issuer  text NOT NULL,
    oidc_subject text NOT NULL,
    UNIQUE (tenant_id, name)
);
CREATE UNIQUE INDEX users_email ON users (tenant_id, email) WHERE email <> '';
CREATE UNIQUE INDEX users_oidc ON users (oidc_issuer, oidc_subject) WHERE oidc_subject <> '';

CREATE TABLE groups_ (
    id          text COLLATE "C" PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    version     bigint NOT NULL,
    create_time bigint NOT NULL,
    update_time bigint NOT NULL,
    data        jsonb NOT NULL,
    name        text COLLATE "C" NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE tags (
    id          text COLLATE "C" PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    version     bigint NOT NULL,
    create_time bigint NOT NULL,
    update_time bigint NOT NULL,
    data        jsonb NOT NULL,
    name        text COLLATE "C" NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE policies (
    id          text COLLATE "C" PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    version     bigint NOT NULL,
    create_time bigint NOT NULL,
    update_time bigint NOT NULL,
    data        jsonb NOT NULL,
    name        text COLLATE "C" NOT NULL,
    cvlan_id    text NOT NULL,
    enabled     boolean NOT NULL,
    UNIQUE (tenant_id, name)
);

-- Regions are global (no tenant).
CREATE TABLE regions (
    id          text COLLATE "C" PRIMARY KEY,
    version     bigint NOT NULL,
    create_time bigint NOT NULL,
    update_time bigint NOT NULL,
    data        jsonb NOT NULL,
    name        text COLLATE "C" NOT NULL,
    code        text COLLATE "C" NOT NULL UNIQUE,
    UNIQUE (name)
);

-- Relays without a tenant are shared by every tenant.
CREATE TABLE relays (
    id          text COLLATE "C" PRIMARY KEY,
    tenant_id   text REFERENCES tenants (id) ON DELETE CASCADE,
    version     bigint NOT NULL,
    create_time bigint NOT NULL,
    update_time bigint NOT NULL,
    data        jsonb NOT NULL,
    name        text COLLATE "C" NOT NULL,
    region_id   text NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE UNIQUE INDEX relays_shared_name ON relays (name) WHERE tenant_id IS NULL;

CREATE TABLE vrouters (
    id          text COLLATE "C" PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    version     bigint NOT NULL,
    create_time bigint NOT NULL,
    update_time bigint NOT NULL,
    data        jsonb NOT NULL,
    name        text COLLATE "C" NOT NULL,
    cvlan_id    text NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE discovery_servers (
    id          text COLLATE "C" PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    version     bigint NOT NULL,
    create_time bigint NOT NULL,
    update_time bigint NOT NULL,
    data        jsonb NOT NULL,
    name        text COLLATE "C" NOT NULL,
    region_id   text NOT NULL,
    type        text NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE api_keys (
    id          text COLLATE "C" PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    version     bigint NOT NULL,
    create_time bigint NOT NULL,
    update_time bigint NOT NULL,
    data        jsonb NOT NULL,
    name        text COLLATE "C" NOT NULL,
    hash        bytea NOT NULL UNIQUE,
    revoked     boolean NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE join_tokens (
    id          text COLLATE "C" PRIMARY KEY,
    tenant_id   text REFERENCES tenants (id) ON DELETE CASCADE,
    version     bigint NOT NULL,
    create_time bigint NOT NULL,
    update_time bigint NOT NULL,
    data        jsonb NOT NULL,
    hash        bytea NOT NULL UNIQUE,
    kind        text NOT NULL,
    cvlan_id    text NOT NULL,
    revoked     boolean NOT NULL
);
CREATE INDEX join_tokens_tenant ON join_tokens (tenant_id, id);

CREATE TABLE sessions (
    id          text COLLATE "C" PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    version     bigint NOT NULL,
    create_time bigint NOT NULL,
    update_time bigint NOT NULL,
    data        jsonb NOT NULL,
    user_id     text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    hash        bytea NOT NULL UNIQUE,
    expire_time bigint NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expire ON sessions (expire_time);

-- Audit entries outlive their tenant: no foreign key.
CREATE TABLE audit_log (
    id            text COLLATE "C" PRIMARY KEY,
    tenant_id     text,
    time          bigint NOT NULL,
    actor_type    text NOT NULL,
    actor_id      text NOT NULL,
    action        text NOT NULL,
    resource_type text NOT NULL,
    resource_id   text NOT NULL,
    data          jsonb NOT NULL
);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, id);
CREATE INDEX audit_log_resource ON audit_log (tenant_id, resource_type, resource_id);
CREATE INDEX audit_log_actor ON audit_log (tenant_id, actor_id);
CREATE INDEX audit_log_time ON audit_log (time);

-- The network-map change feed. Ids become visible in id order: writers take an advisory
-- transaction lock before inserting, just before commit.
CREATE TABLE change_events (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id     text,
    resource_type text NOT NULL,
    resource_id   text NOT NULL,
    op            text NOT NULL,
    version       bigint NOT NULL,
    time          bigint NOT NULL
);

-- Tenant isolation: every tenant table is visible only for the tenant the transaction set in
-- cloudvlan.tenant_id, or for every tenant when cloudvlan.all_tenants is 'on' (both set with
-- set_config(..., true), so they end with the transaction). FORCE applies the policies to the
-- table owner too; only superusers and BYPASSRLS roles escape them, and the application
-- connects as neither. The settings are read in scalar sub-selects so that PostgreSQL evaluates
-- them once per query (an InitPlan), not once per row.
CREATE FUNCTION cloudvlan_all_tenants() RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(current_setting('cloudvlan.all_tenants', true), '') = 'on'
$$;

CREATE FUNCTION cloudvlan_tenant() RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT nullif(current_setting('cloudvlan.tenant_id', true), '')
$$;

ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants USING (((SELECT cloudvlan_all_tenants()) OR id = (SELECT cloudvlan_tenant()))) WITH CHECK (((SELECT cloudvlan_all_tenants()) OR id = (SELECT cloudvlan_tenant())));

ALTER TABLE cvlans ENABLE ROW LEVEL SECURITY;
ALTER TABLE cvlans FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON cvlans USING (((SELECT cloudvlan_all_tenants()) OR tenant_id = (SELECT cloudvlan_tenant()))) WITH CHECK (((SELECT cloudvlan_all_tenants()) OR tenant_id = (SELECT cloudvlan_tenant())));

ALTER TABLE nodes ENABLE ROW LEVEL SECURITY;
ALTER TABLE nodes FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON nodes USING (((SELECT cloudvlan_all_tenants()) OR tenant_id = (SELECT cloudvlan_tenant()))) WITH CHECK (((SELECT cloudvlan_all_tenants()) OR tenant_id = (SELECT cloudvlan_tenant())));

ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON users USING (((SELECT cloudvlan_all_tenants()) OR tenant_id = (SELECT cloudvlan_tenant()))) WITH CHECK (((SELECT cloudvlan_all_tenants()) OR tenant_id = (SELECT cloudvlan_tenant())));

ALTER TABLE groups_ ENABLE ROW LEVEL SECURITY;
ALTER TABLE groups_ FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON groups_ USING (((SELECT cloudvlan_all_tenants()) OR tenant_id = (SELECT cloudvlan_tenant()))) WITH CHECK (((SELECT cloudvlan_all_tenants()) OR tenant_id = (SELECT cloudvlan_tenant())));

ALTER TABLE tags ENABLE ROW LEVEL SECURITY;
ALTER TABLE tags FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tags USING (((SELECT cloudvlan_all_tenants()) OR tenant_id = (SELECT cloudvlan_tenant()))) WITH CHECK (((SELECT cloudvlan_all_tenants()) OR tenant_id = (SELECT cloudvlan_tenant())));

ALTER TABLE policies ENABLE ROW LEVEL SECURITY;
ALTER TABLE policies FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON policies USING (((SELECT cloudvlan_all_tenants()) OR tenant_id = (SELECT cloudvlan_tenant()))) WITH CHECK (((SELECT cloudvlan_all_tenants()) OR tenant_id = (SELECT cloudvlan_tenant())));

-- Regions: every scope reads; only the all-tenants scope writes ((SELECT cloudvlan_all_tenants())).
ALTER TABLE regions ENABLE ROW LEVEL SECURITY;
ALTER TABLE regions FORCE ROW LEVEL SECURITY;
CREATE POLICY global_read ON regions FOR SELECT USING (true);
CREATE POLICY global_write ON regions USING ((SELECT cloudvlan_all_tenants())) WITH CHECK ((SELECT cloudvlan_all_tenants()));

ALTER TABLE relays ENABLE ROW LEVEL SECURITY;
ALTER TABLE relays FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON relays USING (((SELECT cloudvlan_all_tenants()) OR tenant_id = (SELECT cloudvlan_tenant()))) WITH CHECK (((SELECT cloudvlan_all_tenants()) OR tenant_id = (SELECT cloudvlan_tenant())));
-- Shared relays (no tenant) are readable by every tenant.
CREATE POLICY shared_read ON relays FOR SELECT USING (tenant_id IS NULL);

ALTER TABLE vrouters ENABLE ROW LEVEL SECURITY;
ALTER TABLE vrouters FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON vrouters USING (((SELECT cloudvlan_all_tenants()) OR tenant_id = (SELECT cloudvlan_tenant()))) WITH CHECK (((SELECT cloudvlan_all_tenants()) OR tenant_id = (SELECT cloudvlan_tenant())));

ALTER TABLE discovery_servers ENABLE ROW LEVEL SECURITY;
ALTER TABLE discovery_servers FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON discovery_servers USING (((SELECT cloudvlan_all_tenants()) OR tenant_id = (SELECT cloudvlan_tenant()))) WITH CHECK (((SELECT cloudvlan_all_tenants()) OR tenant_id = (SELECT cloudvlan_tenant())));

ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON api_keys USING (((SELECT cloudvlan_all_tenants()) OR tenant_id = (SELECT cloudvlan_tenant()))) WITH CHECK (((SELECT cloudvlan_all_tenants()) OR tenant_id = (SELECT cloudvlan_tenant())));

ALTER TABLE join_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE join_tokens FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON join_tokens USING (((SELECT cloudvlan_all_tenants()) OR tenant_id = (SELECT cloudvlan_tenant()))) WITH CHECK (((SELECT cloudvlan_all_tenants()) OR tenant_id = (SELECT cloudvlan_tenant())));

ALTER TABLE sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE sessions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sessions USING (((SELECT cloudvlan_all_tenants()) OR tenant_id = (SELECT cloudvlan_tenant()))) WITH CHECK (((SELECT cloudvlan_all_tenants()) OR tenant_id = (SELECT cloudvlan_tenant())));

ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_log FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_log USING (((SELECT cloudvlan_all_tenants()) OR tenant_id = (SELECT cloudvlan_tenant()))) WITH CHECK (((SELECT cloudvlan_all_tenants()) OR tenant_id = (SELECT cloudvlan_tenant())));

ALTER TABLE change_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE change_events FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON change_events USING (((SELECT cloudvlan_all_tenants()) OR tenant_id = (SELECT cloudvlan_tenant()))) WITH CHECK (((SELECT cloudvlan_all_tenants()) OR tenant_id = (SELECT cloudvlan_tenant())));

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
DROP FUNCTION ((SELECT cloudvlan_all_tenants()) OR text = (SELECT cloudvlan_tenant()));
