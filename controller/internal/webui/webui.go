// Package webui serves the web console: the single-page application built by Vite from ui/ into
// dist/ and embedded in the controller binary. Paths that are not files of the build fall back to
// index.html so that the client-side router handles deep links. When the UI has not been built
// (dist/ holds only its .keep placeholder) every page says so instead of serving a blank screen.
package webui

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"fmt"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
	"time"
)

// dist holds the Vite build. The all: prefix embeds dot-files too, so the committed dist/.keep
// makes the pattern match (and the package compile) before the first `npm run build`.
//
//go:embed all:dist
var dist embed.FS

const (
	// cacheImmutable is for Vite's content-hashed files under assets/: their name changes with
	// their content, so browsers may keep them forever.
	cacheImmutable = "public, max-age=31536000, immutable"
	// cacheRevalidate is for index.html and unhashed files: always revalidated (cheap thanks to
	// the ETag), so a controller upgrade reaches browsers at once.
	cacheRevalidate = "no-cache"
	// contentSecurityPolicy allows only this origin. Inline style attributes are needed by the
	// topology graph, which positions its nodes with them; scripts stay strictly same-origin.
	contentSecurityPolicy = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; " +
		"img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; " +
		"base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)

// asset is one file of the build, read once at start-up.
type asset struct {
	data        []byte
	contentType string
	etag        string
	cache       string
}

// handler serves a built single-page application from memory.
type handler struct {
	assets  map[string]*asset // keyed by clean path without the leading slash
	index   *asset            // nil when the UI is not built
	modTime time.Time
}

// Handler returns the handler for the console embedded in this binary. Mount it at "/" on the API
// port; more specific patterns (the Connect and gRPC service paths) take precedence in a ServeMux.
func Handler() http.Handler {
	sub, err := fs.Sub(dist, "dist")
	if err != nil {
		// fs.Sub fails only for an invalid name; "dist" is a constant.
		panic(fmt.Sprintf("webui: %v", err))
	}
	h, err := NewHandler(sub)
	if err != nil {
		// The embedded FS is read-only memory: reading it cannot fail at run time.
		panic(fmt.Sprintf("webui: %v", err))
	}
	return h
}

// Built reports whether the embedded console was built (dist/index.html exists), so that the
// controller can log a hint at start-up when it was not.
func Built() bool {
	_, err := fs.Stat(dist, "dist/index.html")
	return err == nil
}

// NewHandler returns a handler serving the single-page application in fsys (the root of a Vite
// build, with index.html at its top). Every file is read into memory once.
func NewHandler(fsys fs.FS) (http.Handler, error) {
	h := &handler{assets: make(map[string]*asset), modTime: time.Now()}
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || strings.HasPrefix(d.Name(), ".") {
			return nil
		}
		data, err := fs.ReadFile(fsys, p)
		if err != nil {
			return fmt.Errorf("read %s: %w", p, err)
		}
		sum := sha256.Sum256(data)
		a := &asset{
			data:        data,
			contentType: contentType(p, data),
			etag:        `"` + base64.RawURLEncoding.EncodeToString(sum[:16]) + `"`,
			cache:       cacheRevalidate,
		}
		if strings.HasPrefix(p, "assets/") {
			a.cache = cacheImmutable
		}
		h.assets[p] = a
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load web console: %w", err)
	}
	h.index = h.assets["index.html"]
	return h, nil
}

// ServeHTTP serves a file of the build, index.html for client-side routes, or 404 for missing
// files that are clearly not routes (so a stale script reference fails loudly, not as HTML).
func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Referrer-Policy", "same-origin")

	name := strings.TrimPrefix(path.Clean("/"+r.URL.Path), "/")
	if a, ok := h.assets[name]; ok {
		h.serve(w, r, name, a)
		return
	}
	if !isRoute(name, r) {
		http.NotFound(w, r)
		return
	}
	if h.index == nil {
		notBuilt(w)
		return
	}
	h.serve(w, r, "index.html", h.index)
}

func (h *handler) serve(w http.ResponseWriter, r *http.Request, name string, a *asset) {
	hdr := w.Header()
	hdr.Set("Content-Type", a.contentType)
	hdr.Set("Cache-Control", a.cache)
	hdr.Set("ETag", a.etag)
	if strings.HasPrefix(a.contentType, "text/html") {
		hdr.Set("Content-Security-Policy", contentSecurityPolicy)
		hdr.Set("X-Frame-Options", "DENY")
	}
	// ServeContent answers If-None-Match (304) and Range requests from the ETag set above.
	http.ServeContent(w, r, name, h.modTime, bytes.NewReader(a.data))
}

// isRoute tells a client-side route (served index.html) from a missing file (404): Vite's
// assets/ directory and names with a file extension are files; the console's routes use ids and
// DNS-label names, which have no extension. A browser navigation (Accept: text/html) is always a
// route, so a deep link such as /nodes/web-1.example still opens the console.
func isRoute(name string, r *http.Request) bool {
	if strings.HasPrefix(name, "assets/") {
		return false
	}
	if strings.Contains(r.Header.Get("Accept"), "text/html") {
		return true
	}
	return path.Ext(name) == ""
}

// contentType names a file's media type from its extension, with explicit entries for the types
// a Vite build produces (the system MIME table differs between machines, e.g. for .js and .svg).
func contentType(name string, data []byte) string {
	switch strings.ToLower(path.Ext(name)) {
	case ".html":
		return "text/html; charset=utf-8"
	case ".js", ".mjs":
		return "text/javascript; charset=utf-8"
	case ".css":
		return "text/css; charset=utf-8"
	case ".json", ".map":
		return "application/json"
	case ".webmanifest":
		return "application/manifest+json"
	case ".svg":
		return "image/svg+xml"
	case ".png":
		return "image/png"
	case ".ico":
		return "image/x-icon"
	case ".woff2":
		return "font/woff2"
	case ".woff":
		return "font/woff"
	case ".wasm":
		return "application/wasm"
	case ".txt":
		return "text/plain; charset=utf-8"
	}
	if t := mime.TypeByExtension(path.Ext(name)); t != "" {
		return t
	}
	return http.DetectContentType(data)
}

// notBuiltPage is what every route shows when the binary was built without the console.
const notBuiltPage = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>CloudVLAN: UI not built</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#1f2937}
code{background:#f3f4f6;padding:.1rem .3rem;border-radius:4px}</style></head>
<body><h1>UI not built: run make ui</h1>
<p>This cvlan-controller binary was compiled without the web console. Build it with
<code>make ui</code> (or <code>npm ci &amp;&amp; npm run build</code> in <code>ui/</code>), then rebuild the
controller. The API on this port works without it.</p></body></html>
`

func notBuilt(w http.ResponseWriter) {
	hdr := w.Header()
	hdr.Set("Content-Type", "text/html; charset=utf-8")
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("Content-Security-Policy", contentSecurityPolicy)
	w.WriteHeader(http.StatusServiceUnavailable)
	_, _ = w.Write([]byte(notBuiltPage))
}
