import { createContext, useContext } from "react";
import type { WhoAmIResponse } from "../../../gen/ts/cloudvlan/v1/auth_pb";

/** Session is the signed-in caller and how to sign out. */
export type Session = {
  me: WhoAmIResponse;
  signOut: () => void;
};

export const SessionContext = createContext<Session | null>(null);

/** useSession returns the signed-in caller; only used below AuthGate. */
export function useSession(): Session {
  const s = useContext(SessionContext);
  if (!s) throw new Error("useSession outside AuthGate");
  return s;
}
