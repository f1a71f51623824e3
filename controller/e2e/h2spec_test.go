package e2e

import (
	"encoding/xml"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// h2specReport is the part of h2spec's JUnit report the test reads.
type h2specReport struct {
	Suites []struct {
		Cases []struct {
			Package string    `xml:"package,attr"`
			Name    string    `xml:"classname,attr"`
			Failure *struct{} `xml:"failure"`
			Skipped *struct{} `xml:"skipped"`
		} `xml:"testcase"`
	} `xml:"testsuite"`
}

// TestNodePortHTTP2Conformance runs h2spec (the HTTP/2 conformance suite, a pinned tool) against the
// built controller's node port, which runs the controller's own HTTP/2 server (ADR 010). Every case
// must pass but the two of section 8.1.2.6, which race the handler: a request whose DATA disagrees
// with its content-length is reset with PROTOCOL_ERROR when the DATA arrives, but a handler that
// answers without reading the body (the node port's unknown-path 404 here) may have answered first.
func TestNodePortHTTP2Conformance(t *testing.T) {
	p := startController(t)
	h2spec := binary(t, "h2spec")
	host, port, err := net.SplitHostPort(p.addr("node"))
	if err != nil {
		t.Fatal(err)
	}
	if host == "::" || host == "" {
		host = "127.0.0.1"
	}
	report := filepath.Join(t.TempDir(), "h2spec.xml")
	out, err := run(t, 5*time.Minute, h2spec, "-t", "-k", "-h", host, "-p", port, "-o", "10", "-j", report)
	raw, rerr := os.ReadFile(report)
	if rerr != nil {
		t.Fatalf("h2spec wrote no report (%v): %v\n%s", rerr, err, out)
	}
	var r h2specReport
	if err := xml.Unmarshal(raw, &r); err != nil {
		t.Fatalf("h2spec report: %v", err)
	}
	total, passed := 0, 0
	for _, s := range r.Suites {
		for _, c := range s.Cases {
			total++
			switch {
			case c.Failure == nil && c.Skipped == nil:
				passed++
			case c.Failure != nil && strings.HasSuffix(c.Package, "/8.1.2.6"):
				t.Logf("h2spec %s %q failed (a handler may answer before the DATA arrives)", c.Package, c.Name)
			default:
				t.Errorf("h2spec %s %q did not pass", c.Package, c.Name)
			}
		}
	}
	if total < 140 {
		t.Fatalf("h2spec ran %d cases, want the whole suite (145)\n%s", total, out)
	}
	t.Logf("h2spec: %d of %d cases passed", passed, total)
	if t.Failed() {
		t.Logf("h2spec output:\n%s", out)
	}
}
