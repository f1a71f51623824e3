package sqlcore

import "testing"

func TestLabelFromEmail(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"Jane.Doe+x@example.com", "jane-doe-x"},
		{"bob@x", "bob"},
		{"_x_@y", "x"},
		{"", ""},
	} {
		if got := labelFromEmail(tt.in); got != tt.want {
			t.Errorf("labelFromEmail(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestPageToken(t *testing.T) {
	tok := encodeToken(pageToken{Name: "node-1", ID: "abc"})
	got, err := decodeToken(tok)
	if err != nil || got.Name != "node-1" || got.ID != "abc" {
		t.Fatalf("round trip = %+v, %v", got, err)
	}
	for _, bad := range []string{"%%%", "e30", "bm90IGpzb24"} { // invalid base64, {}, "not json"
		if _, err := decodeToken(bad); err == nil {
			t.Errorf("decodeToken(%q): want error", bad)
		}
	}
}
