package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strings"
)

// Secret prefixes: they make a leaked secret recognisable (secret scanners, logs).
const (
	APIKeyPrefix    = "cvk_"
	JoinTokenPrefix = "cvj_"
	SessionPrefix   = "cvs_"
)

// visibleLen is how many characters of a secret (prefix included) are kept as its
// non-secret label ("cvk_8f2k").
const visibleLen = 8

// NewSecret returns a fresh secret "<prefix><256 random bits, base64url>", its visible label
// and the hash under which it is stored.
func NewSecret(prefix string) (secret, label string, hash []byte, err error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", nil, fmt.Errorf("generate secret: %w", err)
	}
	secret = prefix + base64.RawURLEncoding.EncodeToString(b[:])
	return secret, secret[:visibleLen], HashSecret(secret), nil
}

// HashSecret is the stored form of a secret. A plain SHA-256 suffices because the secret carries
// 256 random bits: there is nothing to brute-force, and lookups stay one index probe.
func HashSecret(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// HasPrefix reports whether s looks like a secret with the given prefix.
func HasPrefix(s, prefix string) bool {
	return strings.HasPrefix(s, prefix) && len(s) > len(prefix)+16
}
