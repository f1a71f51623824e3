import { createContext, useContext } from "react";
import type { LiveState } from "../api/live";

export const LiveContext = createContext<LiveState>("connecting");

/** useLiveState tells whether the event stream is open. */
export function useLiveState(): LiveState {
  return useContext(LiveContext);
}
