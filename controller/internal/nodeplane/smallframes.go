package nodeplane

import "net/http"

// maxWriteChunk bounds the bytes handed to the HTTP/2 server per flush. The server's frame writer
// keeps a buffer as large as the largest DATA frame it ever wrote, for the life of the connection;
// without this bound a map snapshot (a few KiB at 20 peers, far more in large meshes) leaves that
// much behind on every agent connection. Deltas and keep-alives are smaller and go out unchanged.
const maxWriteChunk = 1 << 10

// newChunkedWriter wraps w so that large response writes go out as flushed pieces of at most
// maxWriteChunk bytes: no DATA frame (and no retained frame buffer) is larger.
func newChunkedWriter(w http.ResponseWriter) http.ResponseWriter {
	return &chunkedWriter{ResponseWriter: w, rc: http.NewResponseController(w)}
}

type chunkedWriter struct {
	http.ResponseWriter
	rc *http.ResponseController
}

func (c *chunkedWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > maxWriteChunk {
		m, err := c.ResponseWriter.Write(p[:maxWriteChunk])
		n += m
		if err != nil {
			return n, err
		}
		if err := c.rc.Flush(); err != nil {
			return n, err
		}
		p = p[maxWriteChunk:]
	}
	m, err := c.ResponseWriter.Write(p)
	return n + m, err
}

// Flush implements http.Flusher (Connect flushes after every message).
func (c *chunkedWriter) Flush() { _ = c.rc.Flush() }

// FlushError is what http.ResponseController calls.
func (c *chunkedWriter) FlushError() error { return c.rc.Flush() }

// Unwrap lets http.ResponseController reach the server's writer (write deadlines).
func (c *chunkedWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }
