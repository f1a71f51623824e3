package nodeplane

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cloudvlan/cloudvlan/controller/identity"
	"github.com/cloudvlan/cloudvlan/controller/internal/auth"
	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/pki"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
)

// IdentityKindHeader is an optional request header of Enroll naming the kind of identity the client
// expects ("node", "relay" or "vrouter"): a token of another kind is then refused with
// PermissionDenied instead of enrolling, say, a relay as a node.
const IdentityKindHeader = "Cloudvlan-Identity-Kind"

type enrollService struct{ p *Plane }

// enrolled is what one enrollment produced.
type enrolled struct {
	id       identity.ID
	node     *domain.Node
	resource string
	chain    pki.Chain
}

// Enroll implements nodev1connect.EnrollmentServiceHandler.
func (s enrollService) Enroll(ctx context.Context, req *connect.Request[nodev1.EnrollRequest]) (*connect.Response[nodev1.EnrollResponse], error) {
	p := s.p
	host, _, err := net.SplitHostPort(req.Peer().Addr)
	if err != nil {
		host = req.Peer().Addr
	}
	if wait, ok := p.enroll.allow(host); !ok {
		return nil, exhausted("too many enrollment attempts", wait)
	}
	m := req.Msg
	if err := p.validate.Validate(m); err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("malformed enrollment request: %w", err))
	}
	// Everything that can be checked without the token is checked before it is consumed, so a bad
	// request never costs a use.
	csr, err := x509.ParseCertificateRequest(m.GetCsrDer())
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("malformed certificate request: %w", err))
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("certificate request signature does not verify: %w", err))
	}
	var routes []netip.Prefix
	for _, r := range m.GetAdvertisedRoutes() {
		pr, err := netip.ParsePrefix(r)
		if err != nil {
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("advertised route %q: %w", r, err))
		}
		routes = append(routes, pr.Masked())
	}
	want := domain.NodeKind(strings.ToLower(req.Header().Get(IdentityKindHeader)))

	var out enrolled
	err = p.deps.Store.Tx(ctx, store.AllTenants(), func(tx store.Tx) error {
		tok, err := tx.ConsumeJoinToken(ctx, auth.HashSecret(m.GetJoinToken()), tx.Now())
		switch {
		case store.IsNotFound(err):
			return connect.NewError(connect.CodeUnauthenticated, errors.New("unknown join token"))
		case errors.Is(err, domain.ErrTokenUsed):
			return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("join token was already used: %w", err))
		case errors.Is(err, domain.ErrTokenExpired):
			return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("join token has expired: %w", err))
		case errors.Is(err, domain.ErrTokenRevoked):
			return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("join token was revoked: %w", err))
		case err != nil:
			return fmt.Errorf("consume join token: %w", err)
		}
		kind := tok.Kind
		if kind == "" {
			kind = domain.NodeKindNode
		}
		if want != "" && want != kind {
			return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("join token %s is for a %s, not a %s", tok.Prefix, kind, want))
		}
		// A relay shared by all tenants enrolls with a token of no tenant; everything else needs one.
		tenant := &domain.Tenant{}
		switch {
		case tok.TenantID != "":
			if tenant, err = tx.GetTenant(ctx, tok.TenantID); err != nil {
				return fmt.Errorf("tenant of join token: %w", err)
			}
		case kind != domain.NodeKindRelay:
			return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("join token %s names no tenant", tok.Prefix))
		}
		if tenant.Status == domain.TenantSuspended {
			return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("tenant %s is suspended", tenant.Name))
		}
		e := enroller{ctx: ctx, p: p, tx: tx, tok: tok, tenant: tenant, req: m, csr: csr, routes: routes, addr: req.Peer().Addr}
		switch kind {
		case domain.NodeKindNode:
			out, err = e.node()
		case domain.NodeKindRelay:
			out, err = e.relay()
		case domain.NodeKindVRouter:
			out, err = e.vrouter()
		default:
			return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("join token %s is of kind %q, which cannot enroll here", tok.Prefix, kind))
		}
		return err
	})
	if err != nil {
		p.log.InfoContext(ctx, "enrollment refused", "addr", req.Peer().Addr, "err", err)
		return nil, toConnect(err)
	}
	p.reg.renewed(out.id.String(), out.chain.Leaf.NotAfter)
	if out.node != nil {
		p.reg.setLive(out.node.TenantID, out.node.ID)
	}
	p.log.InfoContext(ctx, "enrolled", "tenant", out.id.TenantID, "identity", out.id.String(), "addr", req.Peer().Addr)
	return connect.NewResponse(p.enrollResponse(out)), nil
}

func (p *Plane) enrollResponse(out enrolled) *nodev1.EnrollResponse {
	kinds := map[identity.Kind]nodev1.IdentityKind{
		identity.KindNode: nodev1.IdentityKind_IDENTITY_KIND_NODE, identity.KindRelay: nodev1.IdentityKind_IDENTITY_KIND_RELAY,
		identity.KindVRouter: nodev1.IdentityKind_IDENTITY_KIND_VROUTER,
	}
	ni := &nodev1.NodeIdentity{TenantId: out.id.TenantID, Kind: kinds[out.id.Kind], SpiffeId: out.id.String(), ResourceId: out.resource}
	if n := out.node; n != nil {
		ni.NodeId, ni.CvlanId, ni.Name = n.ID, n.CvlanID, n.Name
		if n.IPv4Address.IsValid() {
			ni.Ipv4Address = n.IPv4Address.String()
		}
		if n.IPv6Address.IsValid() {
			ni.Ipv6Address = n.IPv6Address.String()
		}
	}
	resp := &nodev1.EnrollResponse{
		Identity:              ni,
		CertificateChainDer:   out.chain.DER(),
		RootCaDer:             rootDER(p.auth.RootPEM()),
		CertificateExpireTime: timestamppb.New(out.chain.Leaf.NotAfter),
		ControlEndpoints:      p.deps.ControlEndpoints,
		RelayMap:              p.loader.RelayMap(out.id.TenantID),
	}
	return resp
}

// rootDER returns the first certificate of a PEM bundle.
func rootDER(pemBytes []byte) []byte {
	b, _ := pem.Decode(pemBytes)
	if b == nil {
		return nil
	}
	return b.Bytes
}

// enroller does the work of one enrollment inside its transaction.
type enroller struct {
	ctx    context.Context
	p      *Plane
	tx     store.Tx
	tok    *domain.JoinToken
	tenant *domain.Tenant
	req    *nodev1.EnrollRequest
	csr    *x509.CertificateRequest
	routes []netip.Prefix
	addr   string
}

func (e *enroller) ttl() time.Duration {
	if t := e.tenant.Settings.NodeCertificateTTL; t > 0 {
		return t
	}
	return e.p.deps.CertTTL
}

// createNode creates the mesh node of a node or vrouter enrollment.
func (e *enroller) createNode(ctx context.Context, kind domain.NodeKind, cvlanID, name string) (*domain.Node, error) {
	if cvlanID == "" {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("join token %s names no cvlan to join", e.tok.Prefix))
	}
	name, err := e.freeName(ctx, cvlanID, name)
	if err != nil {
		return nil, err
	}
	n := &domain.Node{
		TenantID: e.tok.TenantID, CvlanID: cvlanID, Name: name, Hostname: e.req.GetHostname(), Kind: kind,
		WireGuardPublicKey: base64.StdEncoding.EncodeToString(e.req.GetWireguardPublicKey()),
		Tags:               append([]string(nil), e.tok.Tags...), OS: e.req.GetOs(), AgentVersion: e.req.GetAgentVersion(),
		Status: domain.NodePending, Ephemeral: e.tok.Ephemeral, JoinTokenID: e.tok.ID,
	}
	for _, r := range e.routes {
		n.Routes = append(n.Routes, domain.NodeRoute{CIDR: r, Advertised: true})
	}
	if err := e.tx.CreateNode(ctx, n); err != nil {
		if errors.Is(err, domain.ErrAlreadyExists) {
			return nil, connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("a node with this WireGuard key or name already exists: %w", err))
		}
		return nil, fmt.Errorf("create node: %w", err)
	}
	return n, nil
}

// freeName returns name, or name-2, name-3... when taken in the cvlan (a failed insert would abort
// the whole transaction on PostgreSQL, so the name is chosen before). When more names share the
// prefix than one page holds, the sequence cannot be checked cheaply, so a random suffix is tried.
func (e *enroller) freeName(ctx context.Context, cvlanID, name string) (string, error) {
	name = dnsLabel(name)
	taken, more, err := e.namesWithPrefix(ctx, cvlanID, name)
	if err != nil {
		return "", err
	}
	if !more {
		cand := name
		for i := 2; taken[cand]; i++ {
			cand = withSuffix(name, fmt.Sprintf("-%d", i))
		}
		return cand, nil
	}
	for range 8 {
		var b [3]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", fmt.Errorf("random name suffix: %w", err)
		}
		cand := withSuffix(name, "-"+hex.EncodeToString(b[:]))
		taken, _, err := e.namesWithPrefix(ctx, cvlanID, cand)
		if err != nil {
			return "", err
		}
		if !taken[cand] {
			return cand, nil
		}
	}
	return "", connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("no free node name derived from %q in cvlan %s", name, cvlanID))
}

// namesWithPrefix returns the lower-cased names of the cvlan's nodes that start with prefix (one
// page), and whether there are more.
func (e *enroller) namesWithPrefix(ctx context.Context, cvlanID, prefix string) (map[string]bool, bool, error) {
	page, err := e.tx.ListNodes(ctx, store.NodeFilter{CvlanID: cvlanID, NamePrefix: prefix}, store.ListOptions{PageSize: store.MaxPageSize})
	if err != nil {
		return nil, false, fmt.Errorf("list node names: %w", err)
	}
	taken := make(map[string]bool, len(page.Items))
	for _, n := range page.Items {
		taken[strings.ToLower(n.Name)] = true
	}
	return taken, page.NextPageToken != "", nil
}

// withSuffix appends suffix to a DNS label, shortening the label so the result stays within 63 characters.
func withSuffix(name, suffix string) string {
	return strings.TrimRight(name[:min(len(name), 63-len(suffix))], "-") + suffix
}

// dnsLabel turns a host name into a DNS label: lower case, [a-z0-9-], at most 63 characters.
func dnsLabel(s string) string {
	s = strings.ToLower(s)
	if i := strings.IndexByte(s, '.'); i > 0 {
		s = s[:i]
	}
	var b strings.Builder
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	out := strings.Trim(b.String(), "-")
	if len(out) > 63 {
		out = strings.Trim(out[:63], "-")
	}
	if out == "" {
		out = "node"
	}
	return out
}

func (e *enroller) sign(ctx context.Context, id identity.ID, wg []byte, dns []string) (pki.Chain, error) {
	chain, err := e.p.auth.Sign(ctx, pki.SignRequest{CSR: e.csr, ID: id, WGKey: wg, DNSNames: dns, TTL: e.ttl()})
	if err != nil {
		return pki.Chain{}, fmt.Errorf("sign certificate: %w", err)
	}
	return chain, nil
}

func (e *enroller) audit(ctx context.Context, actorID, resourceType, resourceID string, after any) error {
	b, err := json.Marshal(after)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	tenantID := e.tok.TenantID
	if tenantID == "" {
		// Shared relays are audited in the system tenant, as the API does for them.
		if tenantID, err = e.systemTenant(ctx); err != nil {
			return err
		}
	}
	return e.tx.AppendAudit(ctx, &domain.AuditEntry{
		TenantID: tenantID, ActorType: domain.ActorNode, ActorID: actorID, ActorName: e.req.GetHostname(),
		Action: "Enroll", ResourceType: resourceType, ResourceID: resourceID, After: b, PeerAddress: e.addr,
	})
}

// systemTenant finds the system tenant inside the enrollment's transaction.
func (e *enroller) systemTenant(ctx context.Context) (string, error) {
	page, err := e.tx.ListTenants(ctx, store.TenantFilter{NamePrefix: auth.SystemTenantName}, store.ListOptions{PageSize: 10})
	if err != nil {
		return "", fmt.Errorf("audit: system tenant: %w", err)
	}
	for _, t := range page.Items {
		if t.Name == auth.SystemTenantName {
			return t.ID, nil
		}
	}
	return "", fmt.Errorf("audit: system tenant: %w", domain.ErrNotFound)
}

func (e *enroller) node() (enrolled, error) {
	ctx := e.ctx
	name := e.req.GetName()
	if name == "" {
		name = e.req.GetHostname()
	}
	n, err := e.createNode(ctx, domain.NodeKindNode, e.tok.CvlanID, name)
	if err != nil {
		return enrolled{}, err
	}
	id := identity.ID{TrustDomain: e.p.auth.TrustDomain(), TenantID: n.TenantID, Kind: identity.KindNode, ResourceID: n.ID}
	chain, err := e.sign(ctx, id, e.req.GetWireguardPublicKey(), nil)
	if err != nil {
		return enrolled{}, err
	}
	n.CertSerial, n.CertExpireTime = chain.Leaf.SerialNumber.String(), chain.Leaf.NotAfter
	if err := e.tx.UpdateNode(ctx, n); err != nil {
		return enrolled{}, fmt.Errorf("record certificate: %w", err)
	}
	if err := e.audit(ctx, n.ID, domain.ResourceNode, n.ID, n); err != nil {
		return enrolled{}, err
	}
	return enrolled{id: id, node: n, chain: chain}, nil
}

func (e *enroller) relay() (enrolled, error) {
	ctx := e.ctx
	r, err := e.tx.GetRelay(ctx, e.tok.TargetID)
	if err != nil {
		return enrolled{}, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("join token %s: relay %q: %w", e.tok.Prefix, e.tok.TargetID, err))
	}
	var dns []string
	for _, a := range r.Addresses {
		if h, _, err := net.SplitHostPort(a); err == nil {
			dns = append(dns, h)
		}
	}
	id := identity.ID{TrustDomain: e.p.auth.TrustDomain(), TenantID: r.TenantID, Kind: identity.KindRelay, ResourceID: r.ID}
	chain, err := e.sign(ctx, id, e.req.GetWireguardPublicKey(), dns)
	if err != nil {
		return enrolled{}, err
	}
	r.Status, r.CertExpireTime = domain.RelayPending, chain.Leaf.NotAfter
	if err := e.tx.UpdateRelay(ctx, r); err != nil {
		return enrolled{}, fmt.Errorf("bind relay: %w", err)
	}
	if err := e.audit(ctx, r.ID, domain.ResourceRelay, r.ID, r); err != nil {
		return enrolled{}, err
	}
	return enrolled{id: id, resource: r.ID, chain: chain}, nil
}

func (e *enroller) vrouter() (enrolled, error) {
	ctx := e.ctx
	v, err := e.tx.GetVRouter(ctx, e.tok.TargetID)
	if err != nil {
		return enrolled{}, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("join token %s: vrouter %q: %w", e.tok.Prefix, e.tok.TargetID, err))
	}
	if v.NodeID != "" {
		// Re-enrollment (a reinstalled vrouter): its old mesh identity goes.
		if err := e.tx.DeleteNode(ctx, v.NodeID, 0); err != nil && !store.IsNotFound(err) {
			return enrolled{}, fmt.Errorf("replace vrouter node: %w", err)
		}
	}
	cvlan := v.CvlanID
	if cvlan == "" {
		cvlan = e.tok.CvlanID
	}
	n, err := e.createNode(ctx, domain.NodeKindVRouter, cvlan, v.Name)
	if err != nil {
		return enrolled{}, err
	}
	id := identity.ID{TrustDomain: e.p.auth.TrustDomain(), TenantID: v.TenantID, Kind: identity.KindVRouter, ResourceID: v.ID}
	chain, err := e.sign(ctx, id, e.req.GetWireguardPublicKey(), nil)
	if err != nil {
		return enrolled{}, err
	}
	n.CertSerial, n.CertExpireTime, n.LinkedResourceID = chain.Leaf.SerialNumber.String(), chain.Leaf.NotAfter, v.ID
	if err := e.tx.UpdateNode(ctx, n); err != nil {
		return enrolled{}, fmt.Errorf("record certificate: %w", err)
	}
	v.NodeID, v.Status = n.ID, domain.VRouterPending
	if err := e.tx.UpdateVRouter(ctx, v); err != nil {
		return enrolled{}, fmt.Errorf("bind vrouter: %w", err)
	}
	if err := e.audit(ctx, n.ID, domain.ResourceVRouter, v.ID, v); err != nil {
		return enrolled{}, err
	}
	return enrolled{id: id, node: n, resource: v.ID, chain: chain}, nil
}
