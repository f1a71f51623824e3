package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
)

// config is the controller's command-line configuration.
type config struct {
	dataDir     string
	apiAddr     string
	nodeAddr    string
	metricsAddr string
	logLevel    slog.Level

	// database is empty for the embedded SQLite file in dataDir, or a PostgreSQL URL.
	database        string
	databaseMigrate string

	trustDomain      string
	serverNames      []string
	controlEndpoints []string
	certTTL          time.Duration

	// External step-ca; empty URL means the embedded authority.
	stepCAURL          string
	stepCARoot         string
	stepCAProvisioner  string
	stepCAPasswordFile string
	stepCAKeyFile      string

	oidcIssuer           string
	oidcClientID         string
	oidcClientSecretFile string
	oidcRedirectURL      string
	oidcProviderName     string
	oidcDefaultRole      string
	oidcAdminGroups      []string
}

// listFlag is a repeatable, comma-separated string flag.
type listFlag struct{ v *[]string }

func (l listFlag) String() string {
	if l.v == nil {
		return ""
	}
	return strings.Join(*l.v, ",")
}

func (l listFlag) Set(s string) error {
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l.v = append(*l.v, p)
		}
	}
	return nil
}

func parseFlags(args []string, out io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("cvlan-controller", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&c.dataDir, "data-dir", "data", "directory for the embedded database and CA")
	fs.StringVar(&c.apiAddr, "api-addr", ":8443", "API port: Connect, gRPC, gRPC-Web, reflection, health and the UI (HTTPS)")
	fs.StringVar(&c.nodeAddr, "node-addr", ":8444", "node port: enrollment and the mTLS control plane")
	fs.StringVar(&c.metricsAddr, "metrics-addr", ":9090", "Prometheus metrics and /healthz (plain HTTP)")
	fs.TextVar(&c.logLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn, error")
	fs.StringVar(&c.database, "database", envOr("CLOUDVLAN_DATABASE", ""), "PostgreSQL URL (postgres://...); empty uses SQLite in the data dir (env CLOUDVLAN_DATABASE)")
	fs.StringVar(&c.databaseMigrate, "database-migrate", envOr("CLOUDVLAN_DATABASE_MIGRATE", ""), "PostgreSQL URL of the schema owner for migrations; empty uses --database")
	fs.StringVar(&c.trustDomain, "trust-domain", "cloudvlan.internal", "SPIFFE trust domain of issued identities")
	fs.Var(listFlag{&c.serverNames}, "server-name", "DNS name or IP of this controller for its certificate (repeatable; localhost is always included)")
	fs.Var(listFlag{&c.controlEndpoints}, "control-endpoint", "node-port endpoint host:port handed to enrolling nodes (repeatable; default <first server name or localhost>:<node port>)")
	fs.DurationVar(&c.certTTL, "cert-ttl", 8*time.Hour, "lifetime of node certificates")
	fs.StringVar(&c.stepCAURL, "step-ca-url", "", "use an external step-ca at this URL instead of the embedded authority")
	fs.StringVar(&c.stepCARoot, "step-ca-root", "", "external step-ca: root certificate PEM file")
	fs.StringVar(&c.stepCAProvisioner, "step-ca-provisioner", "", "external step-ca: JWK provisioner name")
	fs.StringVar(&c.stepCAPasswordFile, "step-ca-password-file", "", "external step-ca: file with the provisioner key's password")
	fs.StringVar(&c.stepCAKeyFile, "step-ca-key-file", "", "external step-ca: provisioner private JWK file (default: fetched from the CA)")
	fs.StringVar(&c.oidcIssuer, "oidc-issuer", "", "OpenID provider issuer URL for UI login; empty disables OIDC")
	fs.StringVar(&c.oidcClientID, "oidc-client-id", "", "OIDC client id")
	fs.StringVar(&c.oidcClientSecretFile, "oidc-client-secret-file", "", "file holding the OIDC client secret")
	fs.StringVar(&c.oidcRedirectURL, "oidc-redirect-url", "", "OIDC redirect URL (https://<this controller>/auth/callback)")
	fs.StringVar(&c.oidcProviderName, "oidc-provider-name", "Single sign-on", "name shown on the login button")
	fs.StringVar(&c.oidcDefaultRole, "oidc-default-role", string(domain.RoleViewer), "role of OIDC users in no admin group (empty refuses them)")
	fs.Var(listFlag{&c.oidcAdminGroups}, "oidc-admin-group", "IdP group whose members become tenant admins (repeatable)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if c.oidcIssuer != "" && (c.oidcClientID == "" || c.oidcRedirectURL == "") {
		return c, fmt.Errorf("--oidc-issuer needs --oidc-client-id and --oidc-redirect-url")
	}
	if c.stepCAURL != "" && (c.stepCARoot == "" || c.stepCAProvisioner == "") {
		return c, fmt.Errorf("--step-ca-url needs --step-ca-root and --step-ca-provisioner")
	}
	return c, nil
}

func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}
