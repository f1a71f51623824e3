// The API key a user signed in with lives in sessionStorage: it survives reloads of this tab but
// not the browser session, and is never written to localStorage or a cookie.
const KEY = "cloudvlan.apiKey";

/** A place to keep the signed-in API key; sessionStorage in the browser, a map in tests. */
export interface KeyStore {
  get(): string | null;
  set(key: string): void;
  clear(): void;
}

/** sessionKeyStore keeps the key in the tab's sessionStorage. */
export const sessionKeyStore: KeyStore = {
  get: () => sessionStorage.getItem(KEY),
  set: (key) => sessionStorage.setItem(KEY, key),
  clear: () => sessionStorage.removeItem(KEY),
};

/** API keys start with this prefix (DESIGN.md section 7). */
export const API_KEY_PREFIX = "cvk_";
