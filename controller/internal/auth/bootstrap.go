package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

// SystemTenantName is the tenant Bootstrap creates: it owns the bootstrap admin key and the
// deployment-wide resources (regions, shared relays), because every store row belongs to a tenant.
const SystemTenantName = "system"

// BootstrapKeyName is the name of the bootstrap admin API key.
const BootstrapKeyName = "bootstrap-admin"

// Bootstrap prepares an empty database: it creates the system tenant and a super_admin API key
// and returns the key's secret with created=true, so that the caller prints it once. On a
// database that already has a tenant it does nothing and returns "", false. Two replicas racing
// on one empty PostgreSQL database are safe: the tenant name is unique, so the loser sees
// ErrAlreadyExists and returns "", false.
func Bootstrap(ctx context.Context, st store.Store) (secret string, created bool, err error) {
	secret, label, hash, err := NewSecret(APIKeyPrefix)
	if err != nil {
		return "", false, err
	}
	err = st.Tx(ctx, store.AllTenants(), func(tx store.Tx) error {
		page, err := tx.ListTenants(ctx, store.TenantFilter{}, store.ListOptions{PageSize: 1})
		if err != nil {
			return err
		}
		if len(page.Items) > 0 {
			return errExists
		}
		t := &domain.Tenant{Name: SystemTenantName, DisplayName: "System", Status: domain.TenantActive}
		if err := tx.CreateTenant(ctx, t); err != nil {
			return err
		}
		k := &domain.APIKey{
			TenantID: t.ID, Name: BootstrapKeyName, Description: "created on first start",
			Prefix: label, Hash: hash, Role: domain.RoleSuperAdmin,
			Scopes:    []string{string(ScopeRead), string(ScopeWrite), string(ScopeAdmin)},
			CreatedBy: "system",
		}
		if err := tx.CreateAPIKey(ctx, k); err != nil {
			return err
		}
		for _, e := range []struct {
			action, rtype, id string
			v                 any
		}{
			{"tenant.create", domain.ResourceTenant, t.ID, t},
			{"api_key.create", domain.ResourceAPIKey, k.ID, map[string]any{"id": k.ID, "name": k.Name, "role": k.Role, "prefix": k.Prefix}},
		} {
			after, err := json.Marshal(e.v)
			if err != nil {
				return err
			}
			if err := tx.AppendAudit(ctx, &domain.AuditEntry{
				TenantID: t.ID, ActorType: domain.ActorSystem, ActorName: "system", Action: e.action,
				ResourceType: e.rtype, ResourceID: e.id, After: after,
			}); err != nil {
				return err
			}
		}
		return nil
	})
	if errors.Is(err, errExists) || errors.Is(err, domain.ErrAlreadyExists) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("bootstrap: %w", err)
	}
	return secret, true, nil
}

var errExists = errors.New("database already initialised")

// SystemTenantID returns the id of the system tenant created by Bootstrap.
func SystemTenantID(ctx context.Context, st store.Store) (string, error) {
	var id string
	err := st.ReadTx(ctx, store.AllTenants(), func(tx store.Tx) error {
		page, err := tx.ListTenants(ctx, store.TenantFilter{NamePrefix: SystemTenantName}, store.ListOptions{PageSize: 10})
		if err != nil {
			return err
		}
		for _, t := range page.Items {
			if t.Name == SystemTenantName {
				id = t.ID
				return nil
			}
		}
		return fmt.Errorf("system tenant: %w", domain.ErrNotFound)
	})
	return id, err
}
