/// <reference types="vitest/config" />
// Vite builds the console into the controller's webui package, which embeds it (go:embed).
import { mkdirSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import react from "@vitejs/plugin-react";
import { defineConfig, type Plugin } from "vite";

const here = (p: string) => fileURLToPath(new URL(p, import.meta.url));
const outDir = here("../controller/internal/webui/dist");

// keepPlaceholder puts back dist/.keep after Vite empties the directory: the Go package embeds
// dist/ and must compile (and git must keep the directory) whether or not the UI is built.
function keepPlaceholder(): Plugin {
  return {
    name: "cloudvlan-keep-placeholder",
    apply: "build",
    closeBundle() {
      mkdirSync(outDir, { recursive: true });
      writeFileSync(`${outDir}/.keep`, "");
    },
  };
}

// The API origin for `npm run dev` (the controller's self-signed HTTPS API port).
const devApi = process.env.CLOUDVLAN_API ?? "https://localhost:8443";

export default defineConfig({
  plugins: [react(), keepPlaceholder()],
  resolve: {
    // gen/ts lives outside ui/: without dedupe its imports of @bufbuild/protobuf would not find
    // ui/node_modules (and two copies of the runtime would break message identity).
    dedupe: ["@bufbuild/protobuf", "@connectrpc/connect", "react", "react-dom"],
  },
  server: {
    fs: { allow: [here("..")] },
    proxy: {
      "^/cloudvlan\\.": { target: devApi, secure: false, changeOrigin: true },
      "/auth/": { target: devApi, secure: false, changeOrigin: true },
    },
  },
  build: {
    outDir,
    emptyOutDir: true,
    sourcemap: false,
    chunkSizeWarningLimit: 1500,
  },
  test: {
    environment: "jsdom",
    include: ["src/**/*.test.{ts,tsx}"],
    setupFiles: ["src/test/setup.ts"],
    // Generous limits: CI is a slow 2-core machine that may be busy with Go tests meanwhile.
    testTimeout: 60_000,
    server: { deps: { inline: [/gen\/ts/] } },
  },
});
