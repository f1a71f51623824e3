import { createClient, type Transport } from "@connectrpc/connect";
import { useQuery } from "@connectrpc/connect-query";
import { useState } from "react";
import { AuthService } from "../../../gen/ts/cloudvlan/v1/auth_pb";
import { errorMessage } from "../api/errors";
import { API_KEY_PREFIX, type KeyStore } from "../api/session";
import { Field, Loading } from "../components/ui";

/**
 * SignInPage offers OIDC when the controller has it configured, and an API key field (how the
 * first admin signs in with the bootstrap key printed at first start).
 */
export function SignInPage(props: { keyStore: KeyStore; transport: Transport; onSignedIn: () => void }) {
  const config = useQuery(AuthService.method.getAuthConfig, {}, { retry: 1 });
  const [key, setKey] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const submit = async (e: React.FormEvent) => {
    e.preventDefault();
    const trimmed = key.trim();
    if (!trimmed.startsWith(API_KEY_PREFIX)) {
      setError(`An API key starts with "${API_KEY_PREFIX}".`);
      return;
    }
    setBusy(true);
    setError(null);
    props.keyStore.set(trimmed);
    try {
      await createClient(AuthService, props.transport).whoAmI({});
      props.onSignedIn();
    } catch (err) {
      props.keyStore.clear();
      setError(errorMessage(err));
    } finally {
      setBusy(false);
    }
  };

  const redirect = encodeURIComponent(window.location.pathname + window.location.search);
  return (
    <main className="signin">
      <div className="signin-card">
        <div className="brand brand-large">
          <img src="/favicon.svg" alt="" width={36} height={36} />
          <span>CloudVLAN</span>
        </div>
        <h1>Sign in to the console</h1>
        {config.isPending && <Loading label="Loading sign-in options…" />}
        {config.data?.oidcEnabled && (
          <>
            <a className="btn btn-primary btn-block" href={`${config.data.loginUrlPath}?redirect=${redirect}`}>
              Sign in with {config.data.oidcProviderName || "single sign-on"}
            </a>
            <div className="divider" role="separator">
              <span>or use an API key</span>
            </div>
          </>
        )}
        <form onSubmit={submit} noValidate>
          <Field
            label="API key"
            errors={error ? [error] : undefined}
            hint="For the first sign-in, use the bootstrap admin key the controller printed at its first start. The key is kept only for this browser tab."
          >
            {(p) => (
              <input
                {...p}
                type="password"
                name="api-key"
                autoComplete="off"
                spellCheck={false}
                placeholder="cvk_…"
                value={key}
                onChange={(e) => setKey(e.target.value)}
                autoFocus={!config.data?.oidcEnabled}
              />
            )}
          </Field>
          <button type="submit" className="btn btn-primary btn-block" disabled={busy || key.trim() === ""}>
            {busy ? "Signing in…" : "Sign in with API key"}
          </button>
        </form>
        {config.isError && <p className="muted small">Sign-in options could not be loaded: {errorMessage(config.error)}</p>}
      </div>
    </main>
  );
}
