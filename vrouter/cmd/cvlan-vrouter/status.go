package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/nodeclient"
	"github.com/cloudvlan/cloudvlan/vrouter/internal/control"
)

// showStatus prints the identity and certificate from the state directory and the last applied
// version and connection states from the status file the running vrouter keeps there.
func showStatus(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("cvlan-vrouter status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	stateDir := fs.String("state-dir", "/var/lib/cvlan-vrouter", "state directory of `cvlan-vrouter up`")
	asJSON := fs.Bool("json", false, "print the status file as JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	st, err := nodeclient.Store{Dir: *stateDir, Name: storeName}.Load()
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("not enrolled: no vrouter state in %s (run cvlan-vrouter up with a join token)", *stateDir)
	}
	if err != nil {
		return err
	}
	leaf, err := st.Leaf()
	if err != nil {
		return err
	}
	s, err := control.ReadStatus(filepath.Join(*stateDir, statusFile))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	// The identity and certificate on disk are current even when the status file is old.
	s.VRouterID, s.NodeID, s.TenantID, s.SPIFFEID, s.CertNotAfter = st.ResourceID, st.NodeID, st.TenantID, st.SPIFFEID, leaf.NotAfter.UTC()
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(s)
	}
	left := time.Until(s.CertNotAfter).Round(time.Second)
	fmt.Fprintf(stdout, "vrouter:      %s\nnode:         %s\ntenant:       %s\nidentity:     %s\n", s.VRouterID, s.NodeID, s.TenantID, s.SPIFFEID)
	if left > 0 {
		fmt.Fprintf(stdout, "certificate:  valid until %s (%s left)\n", s.CertNotAfter.Format(time.RFC3339), left)
	} else {
		fmt.Fprintf(stdout, "certificate:  EXPIRED at %s: enroll again with a new join token\n", s.CertNotAfter.Format(time.RFC3339))
	}
	if s.UpdateTime.IsZero() {
		fmt.Fprintln(stdout, "status:       none yet (is cvlan-vrouter up running?)")
		return nil
	}
	fmt.Fprintf(stdout, "config:       applied version %d, received version %d (as of %s)\n", s.AppliedVersion, s.DesiredVersion, s.UpdateTime.Format(time.RFC3339))
	if s.ApplyError != "" {
		fmt.Fprintf(stdout, "apply error:  %s\n", s.ApplyError)
	}
	fmt.Fprintf(stdout, "connections:  %d\n", len(s.Connections))
	for _, c := range s.Connections {
		fmt.Fprintf(stdout, "  %-24s %-11s rx %d B  tx %d B\n", c.Name, c.State, c.RxBytes, c.TxBytes)
	}
	return nil
}
