package api

import (
	"context"
	"errors"
	"slices"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	v1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/v1"

	"github.com/cloudvlan/cloudvlan/controller/internal/auth"
	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

// Default lifetimes from the protos.
const (
	defaultAPIKeyTTL    = 90 * 24 * time.Hour
	defaultJoinTokenTTL = time.Hour
)

// --- API keys

func (s *server) apiKeyMsg(k *domain.APIKey) proto.Message { return apiKeyPB(k, s.now()) }

func (s *server) GetApiKey(ctx context.Context, req *connect.Request[v1.GetApiKeyRequest]) (*connect.Response[v1.GetApiKeyResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	var k *domain.APIKey
	if err := s.read(ctx, scope, func(tx store.Tx) (err error) { k, err = tx.GetAPIKey(ctx, req.Msg.GetId()); return }); err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.GetApiKeyResponse{ApiKey: apiKeyPB(k, s.now())}), nil
}

func (s *server) ListApiKeys(ctx context.Context, req *connect.Request[v1.ListApiKeysRequest]) (*connect.Response[v1.ListApiKeysResponse], error) {
	m := req.Msg
	scope, err := s.tenantOf(ctx, m.GetTenantId())
	if err != nil {
		return nil, err
	}
	out := &v1.ListApiKeysResponse{}
	now := s.now()
	err = s.read(ctx, scope, func(tx store.Tx) error {
		p, err := tx.ListAPIKeys(ctx, store.APIKeyFilter{
			NamePrefix: m.GetNamePrefix(), IncludeRevoked: true, CreatedBy: m.GetCreatedBy(),
			Status: credentialStatus(m.GetStatus()), Now: now,
		}, listOpts(m.GetPageSize(), m.GetPageToken()))
		if err != nil {
			return err
		}
		for _, k := range p.Items {
			out.ApiKeys = append(out.ApiKeys, apiKeyPB(k, now))
		}
		out.NextPageToken, out.TotalSize = p.NextPageToken, int32(p.TotalSize)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(out), nil
}

func (s *server) CreateApiKey(ctx context.Context, req *connect.Request[v1.CreateApiKeyRequest]) (*connect.Response[v1.CreateApiKeyResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	p, _ := principal(ctx)
	in := req.Msg.GetApiKey()
	role := domain.Role(enumStr(in.GetRole()))
	if err := checkGrant(ctx, role); err != nil {
		return nil, err
	}
	var scopes []string
	for _, sc := range in.GetScopes() {
		// A key never gains a scope its creator (an API key itself) lacks.
		if !p.HasScope(auth.Scope(enumStr(sc))) {
			return nil, connect.NewError(connect.CodePermissionDenied, errors.New("cannot grant a scope you do not have"))
		}
		scopes = append(scopes, enumStr(sc))
	}
	ttl := defaultAPIKeyTTL
	if req.Msg.Ttl != nil {
		ttl = req.Msg.GetTtl().AsDuration()
	}
	secret, label, hash, err := auth.NewSecret(auth.APIKeyPrefix)
	if err != nil {
		return nil, s.toConnect(ctx, err)
	}
	k := &domain.APIKey{
		TenantID: scope.TenantID, Name: in.GetName(), Description: in.GetDescription(), Prefix: label, Hash: hash,
		Role: role, Scopes: scopes, ExpireTime: s.now().Add(ttl).UTC(), CreatedBy: p.ID,
	}
	if err := doCreate(ctx, s, scope, "api_key.create", domain.ResourceAPIKey, k, store.Tx.CreateAPIKey, s.apiKeyMsg, nil); err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.CreateApiKeyResponse{ApiKey: apiKeyPB(k, s.now()), Secret: secret}), nil
}

func (s *server) UpdateApiKey(ctx context.Context, req *connect.Request[v1.UpdateApiKeyRequest]) (*connect.Response[v1.UpdateApiKeyResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	in := req.Msg.GetApiKey()
	k, err := doUpdate(ctx, s, scope, in.GetId(), in.GetEtag(), "api_key.update", domain.ResourceAPIKey,
		store.Tx.GetAPIKey, store.Tx.UpdateAPIKey, s.apiKeyMsg, func(_ store.Tx, k *domain.APIKey) error {
			for _, path := range req.Msg.GetUpdateMask().GetPaths() {
				switch path {
				case "name":
					k.Name = in.GetName()
				case "description":
					k.Description = in.GetDescription()
				default:
					return invalid("update_mask path %q is not allowed", path)
				}
			}
			return nil
		})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.UpdateApiKeyResponse{ApiKey: apiKeyPB(k, s.now())}), nil
}

func (s *server) DeleteApiKey(ctx context.Context, req *connect.Request[v1.DeleteApiKeyRequest]) (*connect.Response[v1.DeleteApiKeyResponse], error) {
	m := req.Msg
	scope, err := s.tenantOf(ctx, m.GetTenantId())
	if err != nil {
		return nil, err
	}
	if _, err := doDelete(ctx, s, scope, m.GetId(), m.GetEtag(), "api_key.delete", domain.ResourceAPIKey, store.Tx.GetAPIKey,
		func(tx store.Tx, id string, v int64) error { return tx.DeleteAPIKey(ctx, id, v) }, s.apiKeyMsg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.DeleteApiKeyResponse{}), nil
}

func (s *server) RevokeApiKey(ctx context.Context, req *connect.Request[v1.RevokeApiKeyRequest]) (*connect.Response[v1.RevokeApiKeyResponse], error) {
	m := req.Msg
	scope, err := s.tenantOf(ctx, m.GetTenantId())
	if err != nil {
		return nil, err
	}
	var k *domain.APIKey
	if err := s.read(ctx, scope, func(tx store.Tx) (err error) { k, err = tx.GetAPIKey(ctx, m.GetId()); return }); err != nil {
		return nil, err
	}
	if k.Revoked { // revoking a revoked key succeeds and changes nothing (no audit row either)
		return connect.NewResponse(&v1.RevokeApiKeyResponse{ApiKey: apiKeyPB(k, s.now())}), nil
	}
	k, err = doUpdate(ctx, s, scope, m.GetId(), m.GetEtag(), "api_key.revoke", domain.ResourceAPIKey,
		store.Tx.GetAPIKey, store.Tx.UpdateAPIKey, s.apiKeyMsg, func(tx store.Tx, k *domain.APIKey) error {
			k.Revoked, k.RevokeTime = true, tx.Now()
			return nil
		})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.RevokeApiKeyResponse{ApiKey: apiKeyPB(k, s.now())}), nil
}

// --- join tokens

func (s *server) joinTokenMsg(j *domain.JoinToken) proto.Message { return joinTokenPB(j, s.now()) }

func (s *server) GetJoinToken(ctx context.Context, req *connect.Request[v1.GetJoinTokenRequest]) (*connect.Response[v1.GetJoinTokenResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	var j *domain.JoinToken
	if err := s.read(ctx, scope, func(tx store.Tx) (err error) { j, err = tx.GetJoinToken(ctx, req.Msg.GetId()); return }); err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.GetJoinTokenResponse{JoinToken: joinTokenPB(j, s.now())}), nil
}

func (s *server) ListJoinTokens(ctx context.Context, req *connect.Request[v1.ListJoinTokensRequest]) (*connect.Response[v1.ListJoinTokensResponse], error) {
	m := req.Msg
	scope, err := s.tenantOf(ctx, m.GetTenantId())
	if err != nil {
		return nil, err
	}
	out := &v1.ListJoinTokensResponse{}
	now := s.now()
	err = s.read(ctx, scope, func(tx store.Tx) error {
		p, err := tx.ListJoinTokens(ctx, store.JoinTokenFilter{
			Kind: domain.NodeKind(enumStr(m.GetKind())), CvlanID: m.GetCvlanId(), IncludeRevoked: true,
			TargetID: m.GetTargetId(), Status: credentialStatus(m.GetStatus()), Now: now,
		}, listOpts(m.GetPageSize(), m.GetPageToken()))
		if err != nil {
			return err
		}
		for _, j := range p.Items {
			out.JoinTokens = append(out.JoinTokens, joinTokenPB(j, now))
		}
		out.NextPageToken, out.TotalSize = p.NextPageToken, int32(p.TotalSize)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(out), nil
}

func (s *server) CreateJoinToken(ctx context.Context, req *connect.Request[v1.CreateJoinTokenRequest]) (*connect.Response[v1.CreateJoinTokenResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	p, _ := principal(ctx)
	in := req.Msg.GetJoinToken()
	ttl := defaultJoinTokenTTL
	if req.Msg.Ttl != nil {
		ttl = req.Msg.GetTtl().AsDuration()
	}
	secret, label, hash, err := auth.NewSecret(auth.JoinTokenPrefix)
	if err != nil {
		return nil, s.toConnect(ctx, err)
	}
	j := &domain.JoinToken{
		TenantID: scope.TenantID, Name: in.GetName(), Description: in.GetDescription(), Prefix: label, Hash: hash,
		Kind: domain.NodeKind(enumStr(in.GetKind())), TargetID: in.GetTargetId(), CvlanID: in.GetCvlanId(),
		Reusable: in.GetReusable(), MaxUses: in.GetMaxUses(), Ephemeral: in.GetEphemeral(),
		Tags: slices.Clone(in.GetTags()), ExpireTime: s.now().Add(ttl).UTC(), CreatedBy: p.ID,
	}
	if j.Kind == domain.NodeKindRelay {
		// A token for a shared relay has no tenant and is created in the all-tenants scope,
		// by super_admin only.
		var r *domain.Relay
		if err := s.read(ctx, scope, func(tx store.Tx) (err error) { r, err = tx.GetRelay(ctx, j.TargetID); return }); err != nil {
			return nil, err
		}
		if r.TenantID == "" {
			if !p.IsSuperAdmin() {
				return nil, connect.NewError(connect.CodePermissionDenied, errors.New("only super_admin enrolls shared relays"))
			}
			scope, j.TenantID = store.AllTenants(), ""
		}
	}
	err = doCreate(ctx, s, scope, "join_token.create", domain.ResourceJoinToken, j, store.Tx.CreateJoinToken, s.joinTokenMsg,
		func(tx store.Tx) error {
			if err := checkTags(ctx, tx, j.Tags); err != nil {
				return err
			}
			switch j.Kind {
			case domain.NodeKindNode:
				_, err := tx.GetCvlan(ctx, j.CvlanID)
				return err
			case domain.NodeKindVRouter:
				v, err := tx.GetVRouter(ctx, j.TargetID)
				if err != nil {
					return err
				}
				j.CvlanID = v.CvlanID // taken from the VRouter resource
				return nil
			case domain.NodeKindRelay:
				j.CvlanID = ""
				_, err := tx.GetRelay(ctx, j.TargetID)
				return err
			}
			return invalid("unknown join token kind")
		})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.CreateJoinTokenResponse{JoinToken: joinTokenPB(j, s.now()), Secret: secret}), nil
}

func (s *server) DeleteJoinToken(ctx context.Context, req *connect.Request[v1.DeleteJoinTokenRequest]) (*connect.Response[v1.DeleteJoinTokenResponse], error) {
	m := req.Msg
	scope, err := s.tenantOf(ctx, m.GetTenantId())
	if err != nil {
		return nil, err
	}
	if _, err := doDelete(ctx, s, scope, m.GetId(), m.GetEtag(), "join_token.delete", domain.ResourceJoinToken, store.Tx.GetJoinToken,
		func(tx store.Tx, id string, v int64) error { return tx.DeleteJoinToken(ctx, id, v) }, s.joinTokenMsg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.DeleteJoinTokenResponse{}), nil
}

func (s *server) RevokeJoinToken(ctx context.Context, req *connect.Request[v1.RevokeJoinTokenRequest]) (*connect.Response[v1.RevokeJoinTokenResponse], error) {
	m := req.Msg
	scope, err := s.tenantOf(ctx, m.GetTenantId())
	if err != nil {
		return nil, err
	}
	var j *domain.JoinToken
	if err := s.read(ctx, scope, func(tx store.Tx) (err error) { j, err = tx.GetJoinToken(ctx, m.GetId()); return }); err != nil {
		return nil, err
	}
	if j.Revoked {
		return connect.NewResponse(&v1.RevokeJoinTokenResponse{JoinToken: joinTokenPB(j, s.now())}), nil
	}
	j, err = doUpdate(ctx, s, scope, m.GetId(), m.GetEtag(), "join_token.revoke", domain.ResourceJoinToken,
		store.Tx.GetJoinToken, store.Tx.UpdateJoinToken, s.joinTokenMsg, func(tx store.Tx, j *domain.JoinToken) error {
			j.Revoked, j.RevokeTime = true, tx.Now()
			return nil
		})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.RevokeJoinTokenResponse{JoinToken: joinTokenPB(j, s.now())}), nil
}

// --- AuthService

func (s *server) GetAuthConfig(_ context.Context, _ *connect.Request[v1.GetAuthConfigRequest]) (*connect.Response[v1.GetAuthConfigResponse], error) {
	out := &v1.GetAuthConfigResponse{}
	if s.oidc != nil {
		out.OidcEnabled, out.OidcIssuer, out.OidcClientId = true, s.oidc.Issuer, s.oidc.ClientID
		out.LoginUrlPath, out.LogoutUrlPath, out.OidcProviderName = auth.LoginPath, auth.LogoutPath, s.oidc.ProviderName
	}
	return connect.NewResponse(out), nil
}

func (s *server) WhoAmI(ctx context.Context, _ *connect.Request[v1.WhoAmIRequest]) (*connect.Response[v1.WhoAmIResponse], error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	out := &v1.WhoAmIResponse{
		PrincipalId: p.ID, Role: v1.UserRole(enumNum(v1.UserRole(0).Descriptor(), string(p.Role))),
		TenantId: p.TenantID, Email: p.Email, DisplayName: p.Name, ExpireTime: ts(p.ExpireTime),
		Kind: v1.PrincipalKind_PRINCIPAL_KIND_USER,
	}
	if p.Kind == auth.KindAPIKey {
		out.Kind = v1.PrincipalKind_PRINCIPAL_KIND_API_KEY
		for _, sc := range p.Scopes {
			out.Scopes = append(out.Scopes, v1.ApiScope(enumNum(v1.ApiScope(0).Descriptor(), string(sc))))
		}
	}
	err = s.read(ctx, store.TenantScope(p.TenantID), func(tx store.Tx) error {
		t, err := tx.GetTenant(ctx, p.TenantID)
		if err != nil {
			return err
		}
		out.TenantName = t.Name
		return nil
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(out), nil
}
