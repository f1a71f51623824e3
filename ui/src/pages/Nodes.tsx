import { useInfiniteQuery } from "@connectrpc/connect-query";
import { Link, useSearchParams } from "react-router";
import { NodePathType, NodeService, NodeStatus, NodeStatusSchema, type Node } from "../../../gen/ts/cloudvlan/v1/node_pb";
import { nameMap, useCvlans } from "../api/hooks";
import { enumOptions, formatTime, relativeTime } from "../api/format";
import { NodeStatusBadge, SyncBadge } from "../components/badges";
import { Badge, Empty, ErrorBanner, Loading, PageHeader } from "../components/ui";

const statusByParam: Record<string, NodeStatus> = {
  pending: NodeStatus.PENDING,
  online: NodeStatus.ONLINE,
  offline: NodeStatus.OFFLINE,
  quarantined: NodeStatus.QUARANTINED,
};

/** NodesPage lists the mesh's nodes with filters kept in the URL. */
export function NodesPage() {
  const [params, setParams] = useSearchParams();
  const cvlanId = params.get("cvlan") ?? "";
  const status = statusByParam[params.get("status") ?? ""] ?? NodeStatus.UNSPECIFIED;
  const namePrefix = params.get("q") ?? "";
  const tag = params.get("tag") ?? "";
  const routes = params.get("routes") === "pending";
  const cvlans = useCvlans();
  const cvlanNames = nameMap(cvlans.data?.cvlans);
  const nodes = useInfiniteQuery(
    NodeService.method.listNodes,
    { pageSize: 100, pageToken: "", cvlanId, status, namePrefix, tag, pendingRouteApproval: routes },
    { pageParamKey: "pageToken", getNextPageParam: (last) => last.nextPageToken || undefined },
  );
  const setParam = (k: string, v: string) => {
    const next = new URLSearchParams(params);
    if (v) next.set(k, v);
    else next.delete(k);
    setParams(next, { replace: true });
  };
  const all = nodes.data?.pages.flatMap((p) => p.nodes) ?? [];
  const total = nodes.data?.pages[0]?.totalSize ?? 0;

  return (
    <>
      <PageHeader
        title="Nodes"
        description="Machines of the mesh: their status, addresses and how they reach their peers."
        actions={
          <Link className="btn btn-primary" to="/join-tokens">
            Add a node
          </Link>
        }
      />
      <form className="filters" role="search" aria-label="Filter nodes" onSubmit={(e) => e.preventDefault()}>
        <label>
          Name starts with
          <input type="search" value={namePrefix} onChange={(e) => setParam("q", e.target.value)} />
        </label>
        <label>
          Cvlan
          <select value={cvlanId} onChange={(e) => setParam("cvlan", e.target.value)}>
            <option value="">All</option>
            {cvlans.data?.cvlans.map((c) => (
              <option key={c.id} value={c.id}>
                {c.name}
              </option>
            ))}
          </select>
        </label>
        <label>
          Status
          <select value={params.get("status") ?? ""} onChange={(e) => setParam("status", e.target.value)}>
            <option value="">Any</option>
            {enumOptions(NodeStatusSchema).map((o) => (
              <option key={o.value} value={o.label}>
                {o.label}
              </option>
            ))}
          </select>
        </label>
        <label>
          Tag
          <input value={tag} onChange={(e) => setParam("tag", e.target.value.trim())} placeholder="e.g. web" />
        </label>
        <label className="check">
          <input type="checkbox" checked={routes} onChange={(e) => setParam("routes", e.target.checked ? "pending" : "")} />
          Routes awaiting approval
        </label>
      </form>

      {nodes.isPending ? (
        <Loading label="Loading nodes…" />
      ) : nodes.isError ? (
        <ErrorBanner error={nodes.error} onRetry={() => void nodes.refetch()} />
      ) : all.length === 0 ? (
        <Empty>
          No nodes match. Create a <Link to="/join-tokens">join token</Link> and run <code>cvlan-agent up</code> on a machine to add one.
        </Empty>
      ) : (
        <>
          <p className="muted small" aria-live="polite">
            Showing {all.length} of {total} nodes.
          </p>
          <table className="table">
            <caption className="sr-only">Nodes</caption>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Status</th>
                <th scope="col">Sync</th>
                <th scope="col">Addresses</th>
                <th scope="col">Paths</th>
                <th scope="col">Tags</th>
                <th scope="col">Cvlan</th>
                <th scope="col">Last seen</th>
              </tr>
            </thead>
            <tbody>
              {all.map((n) => (
                <tr key={n.id} data-node-name={n.name}>
                  <td>
                    <Link to={`/nodes/${n.id}`}>
                      <strong>{n.name}</strong>
                    </Link>
                    <div className="muted small">{n.hostname}{n.os ? ` · ${n.os}` : ""}</div>
                  </td>
                  <td><NodeStatusBadge status={n.status} /></td>
                  <td><SyncBadge sync={n.sync} /></td>
                  <td>
                    <code>{n.ipv4Address}</code>
                    {n.ipv6Address && <div><code className="small">{n.ipv6Address}</code></div>}
                  </td>
                  <td><PathSummary node={n} /></td>
                  <td>{n.tags.map((t) => <Badge key={t} tone="neutral">{t}</Badge>)}</td>
                  <td>{cvlanNames.get(n.cvlanId) ?? "—"}</td>
                  <td title={formatTime(n.lastSeenTime)}>{relativeTime(n.lastSeenTime)}</td>
                </tr>
              ))}
            </tbody>
          </table>
          {nodes.hasNextPage && (
            <button type="button" className="btn" onClick={() => void nodes.fetchNextPage()} disabled={nodes.isFetchingNextPage}>
              {nodes.isFetchingNextPage ? "Loading…" : "Load more"}
            </button>
          )}
        </>
      )}
    </>
  );
}

/** PathSummary counts a node's peers reached directly and through relays. */
export function PathSummary(props: { node: Node }) {
  const direct = props.node.peerPaths.filter((p) => p.path === NodePathType.DIRECT).length;
  const relayed = props.node.peerPaths.filter((p) => p.path === NodePathType.RELAYED).length;
  if (direct + relayed === 0) return <span className="muted">no peers</span>;
  return (
    <span>
      {direct > 0 && <Badge tone="ok">{direct} direct</Badge>} {relayed > 0 && <Badge tone="warn">{relayed} relayed</Badge>}
    </span>
  );
}
