package api

import (
	"context"
	"errors"
	"fmt"

	"buf.build/go/protovalidate"
	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	v1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/v1"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/policy"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

func policyMsg(p *domain.Policy) proto.Message { return policyPB(p) }

// policyViolations lists every problem of p: its protovalidate rules, the policy engine's own
// checks and references to users, groups, tags, nodes and cvlans that do not exist in the
// transaction's tenant.
func (s *server) policyViolations(ctx context.Context, tx store.Tx, p *v1.Policy) ([]*v1.PolicyViolation, *domain.Policy, error) {
	var out []*v1.PolicyViolation
	if err := s.validator.Validate(p); err != nil {
		var ve *protovalidate.ValidationError
		if !errors.As(err, &ve) {
			return nil, nil, err
		}
		for _, v := range ve.Violations {
			vp := v.Proto
			out = append(out, &v1.PolicyViolation{Field: protovalidate.FieldPathString(vp.GetField()), RuleId: vp.GetRuleId(), Message: vp.GetMessage()})
		}
		return out, nil, nil // the domain conversion below assumes a structurally valid policy
	}
	dp, err := policyDomain(p)
	if err != nil {
		return append(out, &v1.PolicyViolation{RuleId: "parse", Message: err.Error()}), nil, nil
	}
	pp := toPolicy(dp)
	if pp.ID == "" {
		pp.ID = "new"
	}
	if err := policy.Validate(pp); err != nil {
		for _, e := range unjoin(err) {
			var re *policy.RuleError
			if errors.As(e, &re) {
				out = append(out, &v1.PolicyViolation{Field: fmt.Sprintf("rules[%d].%s", re.Rule, re.Field), RuleId: "policy.rule", Message: re.Reason})
			} else {
				out = append(out, &v1.PolicyViolation{RuleId: "policy", Message: e.Error()})
			}
		}
	}
	ref := func(field string, err error) error {
		if errors.Is(err, domain.ErrNotFound) {
			out = append(out, &v1.PolicyViolation{Field: field, RuleId: "reference.not_found", Message: "no such resource in the tenant"})
			return nil
		}
		return err
	}
	if dp.CvlanID != "" {
		_, err := tx.GetCvlan(ctx, dp.CvlanID)
		if err := ref("cvlan_id", err); err != nil {
			return nil, nil, err
		}
	}
	for i, r := range dp.Rules {
		for _, side := range []struct {
			name string
			ts   []domain.PolicyTarget
		}{{"sources", r.Sources}, {"destinations", r.Destinations}} {
			for j, t := range side.ts {
				path := fmt.Sprintf("rules[%d].%s[%d]", i, side.name, j)
				var err error
				switch {
				case t.UserID != "":
					_, err = tx.GetUser(ctx, t.UserID)
					path += ".user_id"
				case t.GroupID != "":
					_, err = tx.GetGroup(ctx, t.GroupID)
					path += ".group_id"
				case t.NodeID != "":
					_, err = tx.GetNode(ctx, t.NodeID)
					path += ".node_id"
				case t.Tag != "":
					path += ".tag"
					var page *store.Page[domain.Tag]
					page, err = tx.ListTags(ctx, store.TagFilter{NamePrefix: t.Tag}, store.ListOptions{PageSize: store.MaxPageSize})
					if err == nil {
						err = fmt.Errorf("tag %s: %w", t.Tag, domain.ErrNotFound)
						for _, tg := range page.Items {
							if tg.Name == t.Tag {
								err = nil
							}
						}
					}
				}
				if err := ref(path, err); err != nil {
					return nil, nil, err
				}
			}
		}
	}
	return out, dp, nil
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// violationsError is InvalidArgument carrying every violation as an error detail.
func violationsError(vs []*v1.PolicyViolation) error {
	e := connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("policy has %d violation(s); first: %s: %s", len(vs), vs[0].GetField(), vs[0].GetMessage()))
	for _, v := range vs {
		if d, err := connect.NewErrorDetail(v); err == nil {
			e.AddDetail(d)
		}
	}
	return e
}

func (s *server) GetPolicy(ctx context.Context, req *connect.Request[v1.GetPolicyRequest]) (*connect.Response[v1.GetPolicyResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	var p *domain.Policy
	if err := s.read(ctx, scope, func(tx store.Tx) (err error) { p, err = tx.GetPolicy(ctx, req.Msg.GetId()); return }); err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.GetPolicyResponse{Policy: policyPB(p)}), nil
}

func (s *server) ListPolicies(ctx context.Context, req *connect.Request[v1.ListPoliciesRequest]) (*connect.Response[v1.ListPoliciesResponse], error) {
	m := req.Msg
	scope, err := s.tenantOf(ctx, m.GetTenantId())
	if err != nil {
		return nil, err
	}
	out := &v1.ListPoliciesResponse{}
	err = s.read(ctx, scope, func(tx store.Tx) error {
		p, err := tx.ListPolicies(ctx, store.PolicyFilter{CvlanID: m.GetCvlanId(), Enabled: m.Enabled, NamePrefix: m.GetNamePrefix()},
			listOpts(m.GetPageSize(), m.GetPageToken()))
		if err != nil {
			return err
		}
		for _, x := range p.Items {
			out.Policies = append(out.Policies, policyPB(x))
		}
		out.NextPageToken, out.TotalSize = p.NextPageToken, int32(p.TotalSize)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(out), nil
}

func (s *server) CreatePolicy(ctx context.Context, req *connect.Request[v1.CreatePolicyRequest]) (*connect.Response[v1.CreatePolicyResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	p := &domain.Policy{}
	err = doCreate(ctx, s, scope, "policy.create", domain.ResourcePolicy, p, store.Tx.CreatePolicy, policyMsg,
		func(tx store.Tx) error {
			vs, dp, err := s.policyViolations(ctx, tx, req.Msg.GetPolicy())
			if err != nil {
				return err
			}
			if len(vs) > 0 {
				return violationsError(vs)
			}
			*p = *dp
			p.TenantID = scope.TenantID
			return nil
		})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.CreatePolicyResponse{Policy: policyPB(p)}), nil
}

func (s *server) UpdatePolicy(ctx context.Context, req *connect.Request[v1.UpdatePolicyRequest]) (*connect.Response[v1.UpdatePolicyResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	in := req.Msg.GetPolicy()
	p, err := doUpdate(ctx, s, scope, in.GetId(), in.GetEtag(), "policy.update", domain.ResourcePolicy,
		store.Tx.GetPolicy, store.Tx.UpdatePolicy, policyMsg, func(tx store.Tx, p *domain.Policy) error {
			// Apply the mask to the stored policy's proto form, then validate the result whole.
			merged := policyPB(p)
			for _, path := range req.Msg.GetUpdateMask().GetPaths() {
				switch path {
				case "name":
					merged.Name = in.GetName()
				case "description":
					merged.Description = in.GetDescription()
				case "cvlan_id":
					merged.CvlanId = in.GetCvlanId()
				case "enabled":
					merged.Enabled = in.GetEnabled()
				case "priority":
					merged.Priority = in.GetPriority()
				case "rules":
					merged.Rules = in.GetRules()
				default:
					return invalid("update_mask path %q is not allowed", path)
				}
			}
			vs, dp, err := s.policyViolations(ctx, tx, merged)
			if err != nil {
				return err
			}
			if len(vs) > 0 {
				return violationsError(vs)
			}
			dp.Meta, dp.TenantID = p.Meta, p.TenantID
			*p = *dp
			return nil
		})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.UpdatePolicyResponse{Policy: policyPB(p)}), nil
}

func (s *server) DeletePolicy(ctx context.Context, req *connect.Request[v1.DeletePolicyRequest]) (*connect.Response[v1.DeletePolicyResponse], error) {
	m := req.Msg
	scope, err := s.tenantOf(ctx, m.GetTenantId())
	if err != nil {
		return nil, err
	}
	if _, err := doDelete(ctx, s, scope, m.GetId(), m.GetEtag(), "policy.delete", domain.ResourcePolicy, store.Tx.GetPolicy,
		func(tx store.Tx, id string, v int64) error { return tx.DeletePolicy(ctx, id, v) }, policyMsg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.DeletePolicyResponse{}), nil
}

func (s *server) ValidatePolicy(ctx context.Context, req *connect.Request[v1.ValidatePolicyRequest]) (*connect.Response[v1.ValidatePolicyResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	out := &v1.ValidatePolicyResponse{}
	err = s.read(ctx, scope, func(tx store.Tx) error {
		vs, _, err := s.policyViolations(ctx, tx, req.Msg.GetPolicy())
		out.Violations = vs
		return err
	})
	if err != nil {
		return nil, err
	}
	out.Valid = len(out.Violations) == 0
	return connect.NewResponse(out), nil
}
