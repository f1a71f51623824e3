import { createClient, type Transport } from "@connectrpc/connect";
import { createConnectQueryKey, useQuery } from "@connectrpc/connect-query";
import { useQueryClient } from "@tanstack/react-query";
import { useCallback, useEffect, useMemo, useState, type ReactNode } from "react";
import { AuthService, PrincipalKind } from "../../../gen/ts/cloudvlan/v1/auth_pb";
import { isUnauthenticated } from "../api/errors";
import { watchEvents, type LiveState } from "../api/live";
import type { KeyStore } from "../api/session";
import { SignInPage } from "../pages/SignIn";
import { SessionContext } from "./auth";
import { LiveContext } from "./live";
import { ErrorBanner, Loading } from "./ui";

/**
 * AuthGate shows the sign-in page until WhoAmI succeeds, then the console with the live event
 * stream open.
 */
export function AuthGate(props: { keyStore: KeyStore; transport: Transport; children: ReactNode }) {
  const qc = useQueryClient();
  const whoAmI = useQuery(AuthService.method.whoAmI, {}, { staleTime: 60_000, retry: false });
  const [live, setLive] = useState<LiveState>("connecting");
  const signedIn = whoAmI.isSuccess;

  // Any request that comes back UNAUTHENTICATED (an expired key, a revoked session) re-checks
  // WhoAmI, which then shows the sign-in page.
  useEffect(() => {
    return qc.getQueryCache().subscribe((e) => {
      if (e.type !== "updated" || e.action.type !== "error" || !isUnauthenticated(e.action.error)) return;
      const meta = e.query.queryKey[1] as { serviceName?: string } | undefined;
      if (meta?.serviceName === AuthService.typeName) return;
      void qc.invalidateQueries({ queryKey: createConnectQueryKey({ schema: AuthService, cardinality: undefined }) });
    });
  }, [qc]);

  useEffect(() => {
    if (!signedIn) return;
    const ctl = new AbortController();
    void watchEvents(props.transport, qc, ctl.signal, setLive);
    return () => ctl.abort();
  }, [signedIn, props.transport, qc]);

  const signOut = useCallback(async () => {
    const kind = whoAmI.data?.kind;
    props.keyStore.clear();
    if (kind === PrincipalKind.USER) {
      try {
        const cfg = await createClient(AuthService, props.transport).getAuthConfig({});
        if (cfg.logoutUrlPath) await fetch(cfg.logoutUrlPath, { method: "POST", credentials: "same-origin" });
      } catch {
        // Signing out locally still works: the key is gone and the cache is cleared below.
      }
    }
    qc.clear();
    await whoAmI.refetch();
  }, [whoAmI, props.keyStore, props.transport, qc]);

  const session = useMemo(() => (whoAmI.data ? { me: whoAmI.data, signOut: () => void signOut() } : null), [whoAmI.data, signOut]);

  if (whoAmI.isPending) return <Loading label="Checking your session…" />;
  if (whoAmI.isError) {
    if (isUnauthenticated(whoAmI.error)) {
      return (
        <SignInPage
          keyStore={props.keyStore}
          transport={props.transport}
          onSignedIn={() => {
            qc.clear();
            void whoAmI.refetch();
          }}
        />
      );
    }
    return (
      <main className="center-page">
        <ErrorBanner error={whoAmI.error} title="Cannot check your session with the controller" onRetry={() => void whoAmI.refetch()} />
      </main>
    );
  }
  return (
    <SessionContext.Provider value={session}>
      <LiveContext.Provider value={live}>{props.children}</LiveContext.Provider>
    </SessionContext.Provider>
  );
}
