-- +goose Up
-- The stream registry (ADR 009); see the PostgreSQL migration. SQLite serves one replica, so the
-- tables only ever hold this replica's rows, but the code path is the same.
CREATE TABLE controller_replicas (
    id        TEXT PRIMARY KEY,
    seen_time INTEGER NOT NULL
);

CREATE TABLE map_streams (
    id         TEXT PRIMARY KEY,
    replica_id TEXT NOT NULL,
    node_id    TEXT NOT NULL,
    session_id TEXT NOT NULL,
    addr       TEXT NOT NULL,
    open_time  INTEGER NOT NULL
);
CREATE INDEX map_streams_node ON map_streams (node_id);
CREATE INDEX map_streams_replica ON map_streams (replica_id);

CREATE TABLE hole_punches (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    replica_id   TEXT NOT NULL,
    node_id      TEXT NOT NULL,
    from_node_id TEXT NOT NULL,
    wg_key       BLOB NOT NULL,
    create_time  INTEGER NOT NULL
);
CREATE INDEX hole_punches_replica ON hole_punches (replica_id, id);

-- +goose Down
DROP TABLE hole_punches;
DROP TABLE map_streams;
DROP TABLE controller_replicas;
