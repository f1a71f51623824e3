import type { Interceptor, Transport } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import type { KeyStore } from "./session";

/**
 * bearerInterceptor sends the stored API key as "Authorization: Bearer cvk_...". Without a key
 * the request goes out bare and the OIDC session cookie (same origin) authenticates it.
 */
export function bearerInterceptor(store: KeyStore): Interceptor {
  return (next) => async (req) => {
    const key = store.get();
    if (key && !req.header.has("Authorization")) {
      req.header.set("Authorization", `Bearer ${key}`);
    }
    return next(req);
  };
}

/** createTransport talks the Connect protocol to the controller that served the page. */
export function createTransport(store: KeyStore, baseUrl = window.location.origin): Transport {
  return createConnectTransport({
    baseUrl,
    interceptors: [bearerInterceptor(store)],
    // Cookies for the OIDC session; same-origin only, so keys never leave for another site.
    fetch: (input, init) => globalThis.fetch(input, { ...init, credentials: "same-origin" }),
  });
}
