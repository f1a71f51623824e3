package main

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/cloudvlan/cloudvlan/controller/internal/store/pgtest"
)

// pgMaxConnections is pgtest's max_connections: replicas' pools, their change-feed listeners and
// the bench's own connections must fit.
const pgMaxConnections = 300

// startPostgres starts a throw-away PostgreSQL cluster on loopback (the pgtest helper the store
// tests use: initdb in a temporary directory, fsync off) and creates one database owned by
// pgtest.OwnerRole. It returns the application and owner DSNs and a stop function.
func startPostgres(ctx context.Context) (app, owner string, stop func(), err error) {
	cl, err := pgtest.Start(ctx)
	if err != nil {
		return "", "", nil, err
	}
	dsn := func(role, db string) string {
		return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", role, cl.Port(), db)
	}
	conn, err := pgx.Connect(ctx, dsn("postgres", "postgres"))
	if err != nil {
		_ = cl.Stop()
		return "", "", nil, fmt.Errorf("postgres: connect: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE netmapbench OWNER "+pgtest.OwnerRole); err != nil {
		_ = cl.Stop()
		return "", "", nil, fmt.Errorf("postgres: create database: %w", err)
	}
	return dsn(pgtest.AppRole, "netmapbench"), dsn(pgtest.OwnerRole, "netmapbench"), func() { _ = cl.Stop() }, nil
}
