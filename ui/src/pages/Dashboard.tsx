import { useQuery } from "@connectrpc/connect-query";
import { Link } from "react-router";
import { AuditLogService } from "../../../gen/ts/cloudvlan/v1/audit_log_pb";
import type { ConnectError } from "@connectrpc/connect";
import type { UseQueryResult } from "@tanstack/react-query";
import { NodeService, NodeStatus, NodeSyncState, type ListNodesResponse } from "../../../gen/ts/cloudvlan/v1/node_pb";
import { TenantService } from "../../../gen/ts/cloudvlan/v1/tenant_pb";
import { formatTime, relativeTime } from "../api/format";
import { useSession } from "../components/auth";
import { NodeStatusBadge, SyncBadge } from "../components/badges";
import { Empty, PageHeader, QueryView } from "../components/ui";

/** DashboardPage: fleet health at a glance and what needs attention. */
export function DashboardPage() {
  const { me } = useSession();
  const stats = useQuery(TenantService.method.getTenantStats, { tenantId: me.tenantId });
  const failed = useQuery(NodeService.method.listNodes, { pageSize: 10, syncState: NodeSyncState.FAILED });
  const quarantined = useQuery(NodeService.method.listNodes, { pageSize: 10, status: NodeStatus.QUARANTINED });
  const routes = useQuery(NodeService.method.listNodes, { pageSize: 10, pendingRouteApproval: true });
  const audit = useQuery(AuditLogService.method.listAuditLogs, { pageSize: 8 });

  return (
    <>
      <PageHeader title="Dashboard" description={`Overview of tenant ${me.tenantName || me.tenantId}.`} />
      <QueryView query={stats} loadingLabel="Loading statistics…">
        {({ stats: s }) =>
          s ? (
            <section className="cards" aria-label="Statistics">
              <Stat label="Nodes online" value={s.nodesOnline} total={s.nodesTotal} tone="ok" to="/nodes?status=online" />
              <Stat label="Nodes offline" value={s.nodesOffline} tone={s.nodesOffline ? "warn" : "neutral"} to="/nodes?status=offline" />
              <Stat label="In sync" value={s.nodesInSync} total={s.nodesTotal} tone="ok" />
              <Stat label="Sync pending" value={s.nodesSyncPending} tone={s.nodesSyncPending ? "info" : "neutral"} />
              <Stat label="Sync failed" value={s.nodesSyncFailed} tone={s.nodesSyncFailed ? "bad" : "neutral"} />
              <Stat label="Relays online" value={s.relaysOnline} total={s.relaysTotal} tone={s.relaysOnline < s.relaysTotal ? "warn" : "ok"} to="/relays" />
              <Stat label="VRouters online" value={s.vroutersOnline} total={s.vroutersTotal} tone={s.vroutersOnline < s.vroutersTotal ? "warn" : "ok"} to="/vrouters" />
              <Stat
                label="Open incidents"
                value={s.nodesSyncFailed + s.nodesQuarantined + s.nodesInConflict + (s.relaysTotal - s.relaysOnline)}
                tone={s.nodesSyncFailed + s.nodesQuarantined + s.nodesInConflict + (s.relaysTotal - s.relaysOnline) ? "bad" : "ok"}
              />
            </section>
          ) : (
            <Empty>No statistics yet.</Empty>
          )
        }
      </QueryView>

      <div className="grid-2">
        <section className="panel" aria-labelledby="attention">
          <h2 id="attention">Needs attention</h2>
          <AttentionList title="Sync failed" query={failed} />
          <AttentionList title="Quarantined" query={quarantined} />
          <AttentionList title="Routes awaiting approval" query={routes} />
        </section>
        <section className="panel" aria-labelledby="recent">
          <h2 id="recent">
            Recent activity{" "}
            <Link className="small" to="/audit">
              View all
            </Link>
          </h2>
          <QueryView query={audit} isEmpty={(d) => d.auditLogs.length === 0} empty="No activity recorded yet.">
            {(d) => (
              <ul className="activity">
                {d.auditLogs.map((a) => (
                  <li key={a.id}>
                    <code>{a.action}</code> by {a.actorName || "system"}{" "}
                    <time className="muted" title={formatTime(a.eventTime)}>
                      {relativeTime(a.eventTime)}
                    </time>
                  </li>
                ))}
              </ul>
            )}
          </QueryView>
        </section>
      </div>
    </>
  );
}

function Stat(props: { label: string; value: number; total?: number; tone: string; to?: string }) {
  const body = (
    <>
      <span className="stat-value">
        {props.value}
        {props.total !== undefined && <span className="stat-total"> / {props.total}</span>}
      </span>
      <span className="stat-label">{props.label}</span>
    </>
  );
  return (
    <div className={`card stat stat-${props.tone}`}>
      {props.to ? <Link to={props.to}>{body}</Link> : body}
    </div>
  );
}

function AttentionList(props: { title: string; query: UseQueryResult<ListNodesResponse, ConnectError> }) {
  return (
    <div className="attention">
      <h3>{props.title}</h3>
      <QueryView query={props.query} isEmpty={(d) => d.nodes.length === 0} empty="None.">
        {(d) => (
          <ul>
            {d.nodes.map((n) => (
              <li key={n.id}>
                <Link to={`/nodes/${n.id}`}>{n.name}</Link> <NodeStatusBadge status={n.status} /> <SyncBadge sync={n.sync} />
              </li>
            ))}
          </ul>
        )}
      </QueryView>
    </div>
  );
}
