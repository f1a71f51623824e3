import type { ReactNode } from "react";
import { NavLink } from "react-router";
import { UserRole, UserRoleSchema } from "../../../gen/ts/cloudvlan/v1/user_pb";
import { enumLabel } from "../api/format";
import { useSession } from "./auth";
import { useLiveState } from "./live";

const nav: { to: string; label: string; superOnly?: boolean }[] = [
  { to: "/", label: "Dashboard" },
  { to: "/topology", label: "Topology" },
  { to: "/nodes", label: "Nodes" },
  { to: "/cvlans", label: "Cvlans" },
  { to: "/join-tokens", label: "Join tokens" },
  { to: "/policies", label: "Policies" },
  { to: "/groups", label: "Groups & tags" },
  { to: "/relays", label: "Relays" },
  { to: "/vrouters", label: "VRouters" },
  { to: "/api-keys", label: "API keys" },
  { to: "/audit", label: "Audit log" },
  { to: "/tenants", label: "Tenants", superOnly: true },
];

/** Layout is the console frame: navigation, the caller, the live-update indicator. */
export function Layout(props: { children: ReactNode }) {
  const { me, signOut } = useSession();
  const live = useLiveState();
  const superAdmin = me.role === UserRole.SUPER_ADMIN;
  return (
    <div className="shell">
      <a className="skip-link" href="#main">
        Skip to content
      </a>
      <aside className="sidebar">
        <div className="sidebar-inner">
        <div className="brand">
          <img src="/favicon.svg" alt="" width={26} height={26} />
          <span>CloudVLAN</span>
        </div>
        <nav aria-label="Main">
          <ul>
            {nav
              .filter((n) => !n.superOnly || superAdmin)
              .map((n) => (
                <li key={n.to}>
                  <NavLink to={n.to} end={n.to === "/"}>
                    {n.label}
                  </NavLink>
                </li>
              ))}
          </ul>
        </nav>
        </div>
      </aside>
      <div className="main-col">
        <header className="topbar">
          <div className="tenant" title="Tenant">
            <span className="muted small">Tenant</span> <strong>{me.tenantName || "—"}</strong>
          </div>
          <div className="topbar-right">
            <span className={`live live-${live}`} role="status" aria-live="polite">
              <span className="dot" aria-hidden="true" />
              {live === "live" ? "Live" : live === "connecting" ? "Connecting…" : "Reconnecting…"}
            </span>
            <span className="who">
              {me.displayName || me.email || me.principalId} <span className="muted">({enumLabel(UserRoleSchema, me.role)})</span>
            </span>
            <button type="button" className="btn btn-small" onClick={signOut}>
              Sign out
            </button>
          </div>
        </header>
        <main id="main" className="content" tabIndex={-1}>
          {props.children}
        </main>
      </div>
    </div>
  );
}
