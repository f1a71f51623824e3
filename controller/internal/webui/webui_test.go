package webui

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/fstest"
)

func testFS() fstest.MapFS {
	return fstest.MapFS{
		"index.html":              {Data: []byte("<!doctype html><title>CloudVLAN</title><div id=root></div>")},
		"assets/index-abc123.js":  {Data: []byte("console.log('app')")},
		"assets/index-def456.css": {Data: []byte("body{}")},
		"favicon.svg":             {Data: []byte("<svg xmlns='http://www.w3.org/2000/svg'/>")},
		".keep":                   {Data: nil},
	}
}

func TestHandler(t *testing.T) {
	h, err := NewHandler(testFS())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name        string
		method      string
		path        string
		accept      string
		wantStatus  int
		wantType    string
		wantCache   string
		wantBodyHas string
	}{
		{"root serves index", "GET", "/", "", 200, "text/html; charset=utf-8", "no-cache", "<div id=root>"},
		{"index.html path serves index", "GET", "/index.html", "", 200, "text/html; charset=utf-8", "no-cache", "<div id=root>"},
		{"hashed script is immutable", "GET", "/assets/index-abc123.js", "", 200, "text/javascript; charset=utf-8", "public, max-age=31536000, immutable", "console.log"},
		{"hashed css", "GET", "/assets/index-def456.css", "", 200, "text/css; charset=utf-8", "public, max-age=31536000, immutable", "body{}"},
		{"unhashed file revalidates", "GET", "/favicon.svg", "", 200, "image/svg+xml", "no-cache", "<svg"},
		{"client route falls back to index", "GET", "/nodes/6f1c2d9e-1b2a-4c3d-8e9f-0a1b2c3d4e5f", "", 200, "text/html; charset=utf-8", "no-cache", "<div id=root>"},
		{"navigation with a dot falls back", "GET", "/nodes/web-1.example", "text/html,application/xhtml+xml", 200, "text/html; charset=utf-8", "no-cache", "<div id=root>"},
		{"missing asset is 404", "GET", "/assets/index-old.js", "text/html", 404, "", "", ""},
		{"missing file with extension is 404", "GET", "/robots.txt", "*/*", 404, "", "", ""},
		{"dot files are not served", "GET", "/.keep", "*/*", 404, "", "", ""},
		{"traversal stays inside the build", "GET", "/../../etc/passwd", "", 200, "text/html; charset=utf-8", "no-cache", "<div id=root>"},
		{"head works", "HEAD", "/", "", 200, "text/html; charset=utf-8", "no-cache", ""},
		{"post is refused", "POST", "/", "", 405, "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(tt.method, tt.path, nil)
			if tt.accept != "" {
				req.Header.Set("Accept", tt.accept)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tt.wantStatus {
				t.Fatalf("status = %d, want %d (body %q)", rec.Code, tt.wantStatus, rec.Body.String())
			}
			if got := rec.Header().Get("X-Content-Type-Options"); got != "nosniff" {
				t.Errorf("X-Content-Type-Options = %q, want nosniff", got)
			}
			if tt.wantStatus != 200 {
				return
			}
			if got := rec.Header().Get("Content-Type"); got != tt.wantType {
				t.Errorf("Content-Type = %q, want %q", got, tt.wantType)
			}
			if got := rec.Header().Get("Cache-Control"); got != tt.wantCache {
				t.Errorf("Cache-Control = %q, want %q", got, tt.wantCache)
			}
			if !strings.Contains(rec.Body.String(), tt.wantBodyHas) {
				t.Errorf("body = %q, want it to contain %q", rec.Body.String(), tt.wantBodyHas)
			}
			if strings.HasPrefix(tt.wantType, "text/html") && rec.Header().Get("Content-Security-Policy") == "" {
				t.Error("HTML served without a Content-Security-Policy")
			}
		})
	}
}

func TestHandlerConditionalGet(t *testing.T) {
	h, err := NewHandler(testFS())
	if err != nil {
		t.Fatal(err)
	}
	first := httptest.NewRecorder()
	h.ServeHTTP(first, httptest.NewRequest("GET", "/assets/index-abc123.js", nil))
	etag := first.Header().Get("ETag")
	if etag == "" {
		t.Fatal("no ETag")
	}
	req := httptest.NewRequest("GET", "/assets/index-abc123.js", nil)
	req.Header.Set("If-None-Match", etag)
	second := httptest.NewRecorder()
	h.ServeHTTP(second, req)
	if second.Code != http.StatusNotModified {
		t.Fatalf("status = %d, want 304", second.Code)
	}

	other := httptest.NewRecorder()
	h.ServeHTTP(other, httptest.NewRequest("GET", "/assets/index-def456.css", nil))
	if other.Header().Get("ETag") == etag {
		t.Error("two different files share an ETag")
	}
}

func TestHandlerNotBuilt(t *testing.T) {
	h, err := NewHandler(fstest.MapFS{".keep": {Data: nil}})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/", "/nodes", "/audit"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", p, nil))
		if rec.Code != http.StatusServiceUnavailable {
			t.Errorf("%s: status = %d, want 503", p, rec.Code)
		}
		if !strings.Contains(rec.Body.String(), "UI not built: run make ui") {
			t.Errorf("%s: body lacks the build hint: %q", p, rec.Body.String())
		}
	}
}

// TestEmbedded checks the handler over this binary's own embedded files, whichever state they are
// in: the console when `npm run build` ran before `go test`, the build hint otherwise.
func TestEmbedded(t *testing.T) {
	rec := httptest.NewRecorder()
	Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	if Built() {
		if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `id="root"`) {
			t.Fatalf("built console: status %d, body %.200q", rec.Code, rec.Body.String())
		}
		return
	}
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "run make ui") {
		t.Fatalf("unbuilt console: status %d, body %.200q", rec.Code, rec.Body.String())
	}
}
