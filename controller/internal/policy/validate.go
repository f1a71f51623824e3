package policy

import (
	"errors"
	"fmt"
)

var (
	// ErrInvalidRule is wrapped by every *RuleError.
	ErrInvalidRule = errors.New("invalid policy rule")
	// ErrInvalidPolicy is wrapped by errors about a policy as a whole (id, duplicates).
	ErrInvalidPolicy = errors.New("invalid policy")
)

// RuleError says precisely which part of which rule is wrong, so that the UI's
// dry-run can point at the field.
type RuleError struct {
	PolicyID string
	// Rule is the index of the rule in Policy.Rules.
	Rule int
	// Field is a path inside the rule, e.g. "sources[2].id", "ports[0]", "protocol".
	Field  string
	Reason string
}

// Error implements error.
func (e *RuleError) Error() string {
	return fmt.Sprintf("policy %q rule %d: %s: %s", e.PolicyID, e.Rule, e.Field, e.Reason)
}

// Unwrap makes errors.Is(err, ErrInvalidRule) true.
func (e *RuleError) Unwrap() error { return ErrInvalidRule }

// Validate checks one policy and returns every problem found, joined with
// errors.Join; each is a *RuleError (errors.Is ErrInvalidRule) or wraps
// ErrInvalidPolicy. It returns nil when the policy is valid.
func Validate(p Policy) error {
	var errs []error
	if p.ID == "" {
		errs = append(errs, fmt.Errorf("%w: empty id", ErrInvalidPolicy))
	}
	for i, r := range p.Rules {
		bad := func(field, format string, args ...any) {
			errs = append(errs, &RuleError{PolicyID: p.ID, Rule: i, Field: field, Reason: fmt.Sprintf(format, args...)})
		}
		if r.Action != ActionAllow && r.Action != ActionDeny {
			bad("action", "must be allow or deny, got %v", r.Action)
		}
		if len(r.Sources) == 0 {
			bad("sources", "at least one source is required")
		}
		if len(r.Destinations) == 0 {
			bad("destinations", "at least one destination is required")
		}
		for j, t := range r.Sources {
			if msg, field := checkTarget(t); msg != "" {
				bad(fmt.Sprintf("sources[%d]%s", j, field), "%s", msg)
			}
		}
		for j, t := range r.Destinations {
			if msg, field := checkTarget(t); msg != "" {
				bad(fmt.Sprintf("destinations[%d]%s", j, field), "%s", msg)
			}
		}
		switch r.Protocol {
		case ProtoAny, ProtoTCP, ProtoUDP:
		case ProtoICMP:
			if len(r.Ports) > 0 {
				bad("ports", "icmp has no ports")
			}
		default:
			bad("protocol", "unknown protocol %v", r.Protocol)
		}
		for j, pr := range r.Ports {
			if pr.First > pr.Last {
				bad(fmt.Sprintf("ports[%d]", j), "first port %d is above last port %d", pr.First, pr.Last)
			}
		}
	}
	return errors.Join(errs...)
}

// checkTarget returns a reason and a field suffix when t is invalid.
func checkTarget(t Target) (reason, field string) {
	switch t.Kind {
	case KindAny:
		if t.ID != "" || t.Prefix.IsValid() {
			return "any takes no id or prefix", ""
		}
	case KindUser, KindGroup, KindTag, KindNode:
		if t.ID == "" {
			return fmt.Sprintf("%v needs an id", t.Kind), ".id"
		}
		if t.Prefix.IsValid() {
			return fmt.Sprintf("%v takes no prefix", t.Kind), ".prefix"
		}
	case KindCIDR:
		if !t.Prefix.IsValid() {
			return "cidr needs a valid prefix", ".prefix"
		}
		if t.Prefix != t.Prefix.Masked() {
			return fmt.Sprintf("prefix %v has host bits set (want %v)", t.Prefix, t.Prefix.Masked()), ".prefix"
		}
		if t.ID != "" {
			return "cidr takes no id", ".id"
		}
	default:
		return fmt.Sprintf("unknown target kind %v", t.Kind), ".kind"
	}
	return "", ""
}
