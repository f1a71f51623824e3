package control

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/atomicfile"
	vrouterv1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/vrouter/v1"
)

// Status is what `cvlan-vrouter status` shows, written as JSON after every apply and report.
type Status struct {
	VRouterID      string       `json:"vrouter_id"`
	NodeID         string       `json:"node_id,omitempty"`
	TenantID       string       `json:"tenant_id,omitempty"`
	SPIFFEID       string       `json:"spiffe_id"`
	CertNotAfter   time.Time    `json:"certificate_not_after"`
	DesiredVersion uint64       `json:"desired_version"`
	AppliedVersion uint64       `json:"applied_version"`
	ApplyError     string       `json:"apply_error,omitempty"`
	Connections    []Connection `json:"connections"`
	UpdateTime     time.Time    `json:"update_time"`
}

// Connection is one IPsec connection's last reported state.
type Connection struct {
	Name       string    `json:"name"`
	State      string    `json:"state"`
	LastChange time.Time `json:"last_change,omitzero"`
	RxBytes    uint64    `json:"rx_bytes"`
	TxBytes    uint64    `json:"tx_bytes"`
}

// stateNames are the short names of connection states.
var stateNames = map[vrouterv1.ConnectionState]string{
	vrouterv1.ConnectionState_CONNECTION_STATE_UP: "up", vrouterv1.ConnectionState_CONNECTION_STATE_DOWN: "down",
	vrouterv1.ConnectionState_CONNECTION_STATE_CONNECTING: "connecting",
}

func (l *loop) status() Status {
	st := l.cl.State()
	s := Status{
		VRouterID: st.ResourceID, NodeID: st.NodeID, TenantID: st.TenantID, SPIFFEID: st.SPIFFEID,
		CertNotAfter: l.cl.Credentials().NotAfter().UTC(), DesiredVersion: l.desired.GetVersion(), AppliedVersion: l.applied,
		Connections: []Connection{}, UpdateTime: time.Now().UTC(),
	}
	if l.applyErr != nil {
		s.ApplyError = l.applyErr.Error()
	}
	for _, c := range l.conns {
		name := stateNames[c.GetState()]
		if name == "" {
			name = "unknown"
		}
		cs := Connection{Name: c.GetName(), State: name, RxBytes: c.GetRxBytes(), TxBytes: c.GetTxBytes()}
		if c.GetLastChangeTime() != nil {
			cs.LastChange = c.GetLastChangeTime().AsTime().UTC()
		}
		s.Connections = append(s.Connections, cs)
	}
	return s
}

// writeStatus replaces the status file; a failure is logged only.
func (l *loop) writeStatus() {
	if l.o.StatusFile == "" {
		return
	}
	if err := WriteStatus(l.o.StatusFile, l.status()); err != nil {
		l.log.Warn("writing the status file failed", "err", err)
	}
}

// WriteStatus replaces the status file at path (0600) atomically.
func WriteStatus(path string, s Status) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("control: marshal status: %w", err)
	}
	if err := atomicfile.Write(path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("control: status: %w", err)
	}
	return nil
}

// ReadStatus reads a status file.
func ReadStatus(path string) (Status, error) {
	var s Status
	b, err := os.ReadFile(path)
	if err != nil {
		return s, fmt.Errorf("control: read status: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("control: %s: %w", path, err)
	}
	return s, nil
}
