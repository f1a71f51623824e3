-- +goose Up
-- The stream registry (ADR 009): which controller replica holds which node's network-map streams,
-- so that a session conflict spanning replicas is detected and a hole punch reaches a peer streaming
-- from another replica. Replicas mark themselves alive in controller_replicas (one row each, rewritten
-- every heartbeat); the rows of a replica not seen for a while are deleted by the others.
CREATE TABLE controller_replicas (
    id        text COLLATE "C" PRIMARY KEY,
    seen_time bigint NOT NULL
);

CREATE TABLE map_streams (
    id         text COLLATE "C" PRIMARY KEY,
    replica_id text COLLATE "C" NOT NULL,
    node_id    text COLLATE "C" NOT NULL,
    session_id text NOT NULL,
    addr       text NOT NULL,
    open_time  bigint NOT NULL
);
CREATE INDEX map_streams_node ON map_streams (node_id);
CREATE INDEX map_streams_replica ON map_streams (replica_id);

-- Hole punches addressed to the replica holding the peer's stream; taken (deleted) on delivery.
CREATE TABLE hole_punches (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    replica_id   text COLLATE "C" NOT NULL,
    node_id      text COLLATE "C" NOT NULL,
    from_node_id text COLLATE "C" NOT NULL,
    wg_key       bytea NOT NULL,
    create_time  bigint NOT NULL
);
CREATE INDEX hole_punches_replica ON hole_punches (replica_id, id);

-- System tables: only the all-tenants scope sees them.
ALTER TABLE controller_replicas ENABLE ROW LEVEL SECURITY;
ALTER TABLE controller_replicas FORCE ROW LEVEL SECURITY;
CREATE POLICY system_only ON controller_replicas USING ((SELECT cloudvlan_all_tenants())) WITH CHECK ((SELECT cloudvlan_all_tenants()));
ALTER TABLE map_streams ENABLE ROW LEVEL SECURITY;
ALTER TABLE map_streams FORCE ROW LEVEL SECURITY;
CREATE POLICY system_only ON map_streams USING ((SELECT cloudvlan_all_tenants())) WITH CHECK ((SELECT cloudvlan_all_tenants()));
ALTER TABLE hole_punches ENABLE ROW LEVEL SECURITY;
ALTER TABLE hole_punches FORCE ROW LEVEL SECURITY;
CREATE POLICY system_only ON hole_punches USING ((SELECT cloudvlan_all_tenants())) WITH CHECK ((SELECT cloudvlan_all_tenants()));

-- +goose Down
DROP TABLE hole_punches;
DROP TABLE map_streams;
DROP TABLE controller_replicas;
