package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/cloudvlan/cloudvlan/controller/internal/api"
	"github.com/cloudvlan/cloudvlan/controller/internal/apidesc"
	"github.com/cloudvlan/cloudvlan/controller/internal/auth"
	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/nodeplane"
	"github.com/cloudvlan/cloudvlan/controller/internal/pki"
	"github.com/cloudvlan/cloudvlan/controller/internal/server"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
	"github.com/cloudvlan/cloudvlan/controller/internal/store/postgres"
	"github.com/cloudvlan/cloudvlan/controller/internal/store/sqlite"
	"github.com/cloudvlan/cloudvlan/controller/internal/webui"
)

// controller is the wired control plane.
type controller struct {
	cfg   config
	log   *slog.Logger
	store store.Store
	ca    pki.Authority
	plane *nodeplane.Plane
	api   *api.API

	listeners []server.Listener
}

// newController opens the store and the CA, prints the bootstrap credential on first start and mounts
// every handler. On error everything opened so far is closed.
func newController(ctx context.Context, cfg config, log *slog.Logger, out io.Writer) (_ *controller, err error) {
	c := &controller{cfg: cfg, log: log}
	defer func() {
		if err != nil {
			c.close()
		}
	}()
	if err := os.MkdirAll(cfg.dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	if c.store, err = openStore(ctx, cfg, log); err != nil {
		return nil, err
	}
	if c.ca, err = openAuthority(ctx, cfg, log); err != nil {
		return nil, err
	}

	secret, created, err := auth.Bootstrap(ctx, c.store)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	if created {
		// Shown once: only its hash is stored.
		fmt.Fprintf(out, "bootstrap admin API key: %s\n", secret)
		log.Info("created the system tenant and a super_admin API key (printed once on standard output)")
	}

	serverCert, err := pki.NewServerCert(ctx, c.ca, cfg.serverNames, 0, log)
	if err != nil {
		return nil, fmt.Errorf("server certificate: %w", err)
	}
	c.plane, err = nodeplane.New(ctx, nodeplane.Deps{
		Store:            c.store,
		Authority:        c.ca,
		Log:              log.With("component", "nodeplane"),
		ServerCert:       serverCert,
		ServerNames:      cfg.serverNames,
		ControlEndpoints: controlEndpoints(cfg),
		CertTTL:          cfg.certTTL,
	})
	if err != nil {
		return nil, fmt.Errorf("node plane: %w", err)
	}

	oidc, err := oidcConfig(ctx, cfg, c.store)
	if err != nil {
		return nil, err
	}
	apiMux := http.NewServeMux()
	c.api, err = api.Mount(apiMux, api.Deps{
		Store:   c.store,
		Logger:  log.With("component", "api"),
		Revoker: revoker{c.plane},
		OIDC:    oidc,
	})
	if err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}
	server.MountIntrospection(apiMux, apidesc.Services(apidesc.UserAPI))
	// The root CA is public: nodes need it to verify the node port before they send a join token, and
	// the console links to it beside the enrollment command.
	rootPEM := c.ca.RootPEM()
	apiMux.HandleFunc("GET /ca/root.pem", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/x-pem-file")
		w.Header().Set("Content-Disposition", `attachment; filename="cloudvlan-root.pem"`)
		_, _ = w.Write(rootPEM)
	})
	// The console: every path no RPC claims (RPC paths are more specific patterns).
	apiMux.Handle("/", webui.Handler())

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metricsMux := http.NewServeMux()
	metricsMux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	metricsMux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })

	c.listeners = []server.Listener{
		{Name: "api", Addr: cfg.apiAddr, TLS: &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: serverCert.GetCertificate}, Handler: apiMux},
		{Name: "node", Addr: cfg.nodeAddr, TLS: c.plane.TLSConfig(), Handler: c.plane.Handler(), HTTP2: server.NodeHTTP2()},
		{Name: "metrics", Addr: cfg.metricsAddr, Handler: metricsMux},
	}
	return c, nil
}

// serve runs the listeners and the node plane's background loops until ctx is done.
func (c *controller) serve(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := c.plane.Run(ctx); err != nil && ctx.Err() == nil {
			return fmt.Errorf("node plane: %w", err)
		}
		return nil
	})
	g.Go(func() error { return server.Serve(ctx, c.log, c.listeners, nil) })
	c.log.Info("cvlan-controller started", "data_dir", c.cfg.dataDir, "database", storeKind(c.cfg))
	err := g.Wait()
	c.log.Info("stopped")
	return err
}

func (c *controller) close() {
	if c.api != nil {
		c.api.Close()
	}
	if c.plane != nil {
		_ = c.plane.Close()
	}
	if c.ca != nil {
		_ = c.ca.Close()
	}
	if c.store != nil {
		_ = c.store.Close()
	}
}

// revoker adapts the node plane to the API's NodeRevoker.
type revoker struct{ p *nodeplane.Plane }

func (r revoker) RevokeNode(ctx context.Context, tenantID, nodeID string) error {
	r.p.RevokeNode(ctx, tenantID, nodeID)
	return nil
}

func storeKind(cfg config) string {
	if cfg.database == "" {
		return "sqlite"
	}
	return "postgres"
}

func openStore(ctx context.Context, cfg config, log *slog.Logger) (store.Store, error) {
	if cfg.database == "" {
		st, err := sqlite.Open(ctx, sqlite.Config{Path: filepath.Join(cfg.dataDir, "cloudvlan.db"), Logger: log})
		if err != nil {
			return nil, fmt.Errorf("open sqlite store: %w", err)
		}
		return st, nil
	}
	if !strings.HasPrefix(cfg.database, "postgres://") && !strings.HasPrefix(cfg.database, "postgresql://") {
		return nil, fmt.Errorf("--database must be a postgres:// URL (or empty for SQLite)")
	}
	st, err := postgres.Open(ctx, postgres.Config{DSN: cfg.database, MigrationDSN: cfg.databaseMigrate, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("open postgres store: %w", err)
	}
	return st, nil
}

func openAuthority(ctx context.Context, cfg config, log *slog.Logger) (pki.Authority, error) {
	opts := []pki.Option{pki.WithTrustDomain(cfg.trustDomain), pki.WithDefaultTTL(cfg.certTTL), pki.WithLogger(log)}
	if cfg.stepCAURL == "" {
		a, err := pki.NewEmbedded(ctx, cfg.dataDir, opts...)
		if err != nil {
			return nil, fmt.Errorf("embedded CA: %w", err)
		}
		return a, nil
	}
	root, err := os.ReadFile(cfg.stepCARoot)
	if err != nil {
		return nil, fmt.Errorf("step-ca root: %w", err)
	}
	var password []byte
	if cfg.stepCAPasswordFile != "" {
		if password, err = os.ReadFile(cfg.stepCAPasswordFile); err != nil {
			return nil, fmt.Errorf("step-ca password: %w", err)
		}
		password = []byte(strings.TrimSpace(string(password)))
	}
	a, err := pki.NewExternal(ctx, pki.ExternalConfig{
		URL: cfg.stepCAURL, RootPEM: root, Provisioner: cfg.stepCAProvisioner,
		Password: password, KeyFile: cfg.stepCAKeyFile,
	}, opts...)
	if err != nil {
		return nil, fmt.Errorf("external step-ca: %w", err)
	}
	return a, nil
}

// controlEndpoints are the node-port endpoints handed to enrolling nodes.
func controlEndpoints(cfg config) []string {
	if len(cfg.controlEndpoints) > 0 {
		return cfg.controlEndpoints
	}
	host := "localhost"
	if len(cfg.serverNames) > 0 {
		host = cfg.serverNames[0]
	}
	_, port, err := net.SplitHostPort(cfg.nodeAddr)
	if err != nil || port == "" || port == "0" {
		port = "8444"
	}
	return []string{net.JoinHostPort(host, port)}
}

func oidcConfig(ctx context.Context, cfg config, st store.Store) (*auth.OIDCConfig, error) {
	if cfg.oidcIssuer == "" {
		return nil, nil
	}
	var secret string
	if cfg.oidcClientSecretFile != "" {
		b, err := os.ReadFile(cfg.oidcClientSecretFile)
		if err != nil {
			return nil, fmt.Errorf("oidc client secret: %w", err)
		}
		secret = strings.TrimSpace(string(b))
	}
	tenantID, err := auth.SystemTenantID(ctx, st)
	if err != nil {
		return nil, fmt.Errorf("oidc: %w", err)
	}
	roles := map[string]domain.Role{}
	for _, g := range cfg.oidcAdminGroups {
		roles[g] = domain.RoleTenantAdmin
	}
	return &auth.OIDCConfig{
		Issuer: cfg.oidcIssuer, ClientID: cfg.oidcClientID, ClientSecret: secret,
		RedirectURL: cfg.oidcRedirectURL, ProviderName: cfg.oidcProviderName, TenantID: tenantID,
		RoleForGroup: roles, DefaultRole: domain.Role(cfg.oidcDefaultRole),
	}, nil
}
