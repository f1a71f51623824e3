import type { Transport } from "@connectrpc/connect";
import { TransportProvider } from "@connectrpc/connect-query";
import { MutationCache, QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { lazy, Suspense, useState } from "react";
import { BrowserRouter, Route, Routes } from "react-router";
import { isUnauthenticated } from "./api/errors";
import type { KeyStore } from "./api/session";
import { AuthGate } from "./components/AuthGate";
import { Layout } from "./components/Layout";
import { Loading } from "./components/ui";
import { ApiKeysPage } from "./pages/ApiKeys";
import { AuditLogPage } from "./pages/AuditLog";
import { CvlansPage } from "./pages/Cvlans";
import { DashboardPage } from "./pages/Dashboard";
import { GroupsTagsPage } from "./pages/GroupsTags";
import { JoinTokensPage } from "./pages/JoinTokens";
import { NodeDetailPage } from "./pages/NodeDetail";
import { NodesPage } from "./pages/Nodes";
import { NotFoundPage } from "./pages/NotFound";
import { PoliciesPage, PolicyEditPage } from "./pages/Policies";
import { RelaysPage } from "./pages/Relays";
import { TenantsPage } from "./pages/Tenants";
import { VRoutersPage } from "./pages/VRouters";

// The topology view carries the graph library; load it only when opened.
const TopologyPage = lazy(() => import("./pages/Topology").then((m) => ({ default: m.TopologyPage })));

/** newQueryClient: no retries on auth failures (the sign-in page takes over), few otherwise. */
export function newQueryClient(): QueryClient {
  const qc: QueryClient = new QueryClient({
    // After any change, everything shown may be stale (lists, counters, the audit log). The live
    // event stream does the same for changes made elsewhere.
    mutationCache: new MutationCache({ onSuccess: () => void qc.invalidateQueries() }),
    defaultOptions: {
      queries: {
        retry: (count, err) => !isUnauthenticated(err) && count < 2,
        staleTime: 10_000,
        refetchOnWindowFocus: false,
      },
    },
  });
  return qc;
}

/** App wires the transport, the query cache, the router and the sign-in gate. */
export function App(props: { transport: Transport; keyStore: KeyStore }) {
  const [qc] = useState(() => newQueryClient());
  return (
    <TransportProvider transport={props.transport}>
      <QueryClientProvider client={qc}>
        <BrowserRouter>
          <AuthGate keyStore={props.keyStore} transport={props.transport}>
            <Layout>
              <Routes>
                <Route path="/" element={<DashboardPage />} />
                <Route path="/tenants" element={<TenantsPage />} />
                <Route path="/cvlans" element={<CvlansPage />} />
                <Route path="/nodes" element={<NodesPage />} />
                <Route path="/nodes/:id" element={<NodeDetailPage />} />
                <Route path="/join-tokens" element={<JoinTokensPage />} />
                <Route path="/groups" element={<GroupsTagsPage />} />
                <Route path="/policies" element={<PoliciesPage />} />
                <Route path="/policies/new" element={<PolicyEditPage />} />
                <Route path="/policies/:id" element={<PolicyEditPage />} />
                <Route path="/relays" element={<RelaysPage />} />
                <Route path="/vrouters" element={<VRoutersPage />} />
                <Route path="/api-keys" element={<ApiKeysPage />} />
                <Route path="/audit" element={<AuditLogPage />} />
                <Route
                  path="/topology"
                  element={
                    <Suspense fallback={<Loading label="Loading the topology view…" />}>
                      <TopologyPage />
                    </Suspense>
                  }
                />
                <Route path="*" element={<NotFoundPage />} />
              </Routes>
            </Layout>
          </AuthGate>
        </BrowserRouter>
      </QueryClientProvider>
    </TransportProvider>
  );
}
