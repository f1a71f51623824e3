import { useMutation, useQuery } from "@connectrpc/connect-query";
import { useEffect, useState } from "react";
import { Link, useNavigate, useParams } from "react-router";
import { NodeEndpointTypeSchema, NodeKindSchema, NodeService, NodeStatus, type Node } from "../../../gen/ts/cloudvlan/v1/node_pb";
import { pick, violationsOf, type FieldErrors } from "../api/errors";
import { enumLabel, formatBytes, formatDuration, formatTime, relativeTime } from "../api/format";
import { nameMap, useAllNodes, useCvlans, useRelays } from "../api/hooks";
import { NodeStatusBadge, PathBadge, SyncBadge } from "../components/badges";
import { Badge, ConfirmButton, Empty, Field, FormErrors, MutationError, PageHeader, QueryView, splitList } from "../components/ui";

/** NodeDetailPage shows one node and its admin actions. */
export function NodeDetailPage() {
  const { id = "" } = useParams();
  const node = useQuery(NodeService.method.getNode, { id });
  return (
    <QueryView query={node} loadingLabel="Loading node…">
      {(d) => (d.node ? <NodeView node={d.node} /> : <Empty>Node not found.</Empty>)}
    </QueryView>
  );
}

function NodeView({ node }: { node: Node }) {
  const navigate = useNavigate();
  const cvlans = nameMap(useCvlans().data?.cvlans);
  const quarantine = useMutation(NodeService.method.quarantineNode);
  const unquarantine = useMutation(NodeService.method.unquarantineNode);
  const del = useMutation(NodeService.method.deleteNode, { onSuccess: () => navigate("/nodes") });
  const [reason, setReason] = useState("");
  const quarantined = node.status === NodeStatus.QUARANTINED;

  return (
    <>
      <PageHeader
        title={node.name}
        description={`${enumLabel(NodeKindSchema, node.kind)} in cvlan ${cvlans.get(node.cvlanId) ?? node.cvlanId}`}
        actions={
          <>
            <Link className="btn" to="/nodes">All nodes</Link>
            <ConfirmButton label="Delete" danger onConfirm={() => del.mutate({ id: node.id, etag: node.etag })} />
          </>
        }
      />
      <MutationError error={del.error ?? quarantine.error ?? unquarantine.error} />
      <div className="grid-2">
        <section className="panel" aria-labelledby="summary">
          <h2 id="summary">Summary</h2>
          <dl className="dl">
            <dt>Status</dt>
            <dd><NodeStatusBadge status={node.status} /> <span className="muted small">last seen {relativeTime(node.lastSeenTime)}</span></dd>
            <dt>Network map</dt>
            <dd><SyncBadge sync={node.sync} /> {node.sync?.error && <span className="field-error">{node.sync.error}</span>}</dd>
            <dt>IPv4</dt>
            <dd><code>{node.ipv4Address || "—"}</code></dd>
            <dt>IPv6</dt>
            <dd><code>{node.ipv6Address || "—"}</code></dd>
            <dt>Hostname</dt>
            <dd>{node.hostname || "—"}</dd>
            <dt>OS / agent</dt>
            <dd>{node.os || "—"} · {node.agentVersion || "—"}</dd>
            <dt>WireGuard key</dt>
            <dd><code className="small break">{node.wireguardPublicKey || "—"}</code></dd>
            <dt>Certificate expires</dt>
            <dd>{formatTime(node.certExpireTime)}</dd>
            <dt>Enrolled</dt>
            <dd>{formatTime(node.createTime)}{node.ephemeral && <> · <Badge tone="info">ephemeral</Badge></>}</dd>
            {quarantined && (
              <>
                <dt>Quarantine</dt>
                <dd className="field-error">{node.quarantineReason || "no reason given"} ({formatTime(node.quarantineTime)})</dd>
              </>
            )}
          </dl>
        </section>
        <section className="panel" aria-labelledby="edit">
          <h2 id="edit">Settings</h2>
          <EditNode node={node} />
          <h3>Quarantine</h3>
          {quarantined ? (
            <div>
              <p className="small muted">The node must enroll again with a join token after the quarantine is lifted.</p>
              <button type="button" className="btn" onClick={() => unquarantine.mutate({ id: node.id, etag: node.etag })}>
                Lift quarantine
              </button>
            </div>
          ) : (
            <form
              onSubmit={(e) => {
                e.preventDefault();
                quarantine.mutate({ id: node.id, etag: node.etag, reason: reason.trim() });
              }}
            >
              <Field label="Reason" hint="Revokes the node's certificate and cuts it off from its peers at once.">
                {(p) => <input {...p} value={reason} onChange={(e) => setReason(e.target.value)} required />}
              </Field>
              <button type="submit" className="btn btn-danger" disabled={!reason.trim() || quarantine.isPending}>
                Quarantine
              </button>
            </form>
          )}
        </section>
      </div>
      <Routes node={node} />
      <PeerPaths node={node} />
      <section className="panel" aria-labelledby="endpoints">
        <h2 id="endpoints">Endpoints</h2>
        {node.endpoints.length === 0 ? (
          <Empty>No endpoints reported.</Empty>
        ) : (
          <table className="table">
            <thead>
              <tr><th scope="col">Address</th><th scope="col">Learned from</th><th scope="col">Observed</th></tr>
            </thead>
            <tbody>
              {node.endpoints.map((e) => (
                <tr key={e.address}>
                  <td><code>{e.address}</code></td>
                  <td>{enumLabel(NodeEndpointTypeSchema, e.type)}</td>
                  <td>{relativeTime(e.observeTime)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </section>
    </>
  );
}

function EditNode({ node }: { node: Node }) {
  const [name, setName] = useState(node.name);
  const [tags, setTags] = useState(node.tags.join(", "));
  const [description, setDescription] = useState(node.description);
  const [errors, setErrors] = useState<FieldErrors>({});
  useEffect(() => {
    setName(node.name);
    setTags(node.tags.join(", "));
    setDescription(node.description);
  }, [node.etag, node.name, node.tags, node.description]);
  const update = useMutation(NodeService.method.updateNode, {
    onSuccess: () => setErrors({}),
    onError: (err) => setErrors(violationsOf(err, "node.")),
  });
  return (
    <form
      onSubmit={(e) => {
        e.preventDefault();
        setErrors({});
        update.mutate({
          node: { id: node.id, etag: node.etag, name: name.trim(), tags: splitList(tags), description },
          updateMask: { paths: ["name", "tags", "description"] },
        });
      }}
    >
      <Field label="Name" errors={pick(errors, "name")}>
        {(p) => <input {...p} value={name} onChange={(e) => setName(e.target.value)} />}
      </Field>
      <Field label="Tags" errors={pick(errors, "tags")} hint="Tag names separated by commas.">
        {(p) => <input {...p} value={tags} onChange={(e) => setTags(e.target.value)} />}
      </Field>
      <Field label="Description" errors={pick(errors, "description")}>
        {(p) => <input {...p} value={description} onChange={(e) => setDescription(e.target.value)} />}
      </Field>
      <FormErrors errors={errors} placed={["name", "tags", "description"]} error={update.error} />
      <button type="submit" className="btn btn-primary" disabled={update.isPending}>
        {update.isPending ? "Saving…" : "Save"}
      </button>
      {update.isSuccess && <span className="ok-text" role="status"> Saved.</span>}
    </form>
  );
}

function Routes({ node }: { node: Node }) {
  const approve = useMutation(NodeService.method.approveNodeRoutes);
  return (
    <section className="panel" aria-labelledby="routes">
      <h2 id="routes">Subnet routes</h2>
      <MutationError error={approve.error} />
      {node.routes.length === 0 ? (
        <Empty>The node advertises no subnet routes.</Empty>
      ) : (
        <table className="table">
          <thead>
            <tr><th scope="col">Subnet</th><th scope="col">Advertised</th><th scope="col">Approved</th><th scope="col"><span className="sr-only">Actions</span></th></tr>
          </thead>
          <tbody>
            {node.routes.map((r) => (
              <tr key={r.cidr}>
                <td><code>{r.cidr}</code>{(r.cidr === "0.0.0.0/0" || r.cidr === "::/0") && <> <Badge tone="info">exit node</Badge></>}</td>
                <td>{r.advertised ? "yes" : "no"}</td>
                <td>{r.approved ? <Badge tone="ok">approved</Badge> : <Badge tone="warn">awaiting approval</Badge>}</td>
                <td className="row-actions">
                  {r.approved ? (
                    <button type="button" className="btn btn-small" onClick={() => approve.mutate({ id: node.id, etag: node.etag, unapproveCidrs: [r.cidr] })}>
                      Withdraw approval of {r.cidr}
                    </button>
                  ) : (
                    <button type="button" className="btn btn-small btn-primary" onClick={() => approve.mutate({ id: node.id, etag: node.etag, approveCidrs: [r.cidr] })}>
                      Approve {r.cidr}
                    </button>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

function PeerPaths({ node }: { node: Node }) {
  const nodes = nameMap(useAllNodes().data?.nodes);
  const relays = nameMap(useRelays().data?.relays);
  return (
    <section className="panel" aria-labelledby="paths">
      <h2 id="paths">Peers and paths</h2>
      {node.peerPaths.length === 0 ? (
        <Empty>No peer paths reported yet.</Empty>
      ) : (
        <table className="table">
          <thead>
            <tr>
              <th scope="col">Peer</th><th scope="col">Path</th><th scope="col">Via</th><th scope="col">Latency</th>
              <th scope="col">Last handshake</th><th scope="col">Received</th><th scope="col">Sent</th>
            </tr>
          </thead>
          <tbody>
            {node.peerPaths.map((p) => (
              <tr key={p.peerNodeId}>
                <td><Link to={`/nodes/${p.peerNodeId}`}>{nodes.get(p.peerNodeId) ?? p.peerNodeId}</Link></td>
                <td><PathBadge path={p.path} /></td>
                <td>{p.relayId ? `relay ${relays.get(p.relayId) ?? p.relayId}` : <code>{p.endpoint || "—"}</code>}</td>
                <td>{formatDuration(p.latency)}</td>
                <td>{relativeTime(p.lastHandshakeTime)}</td>
                <td>{formatBytes(p.rxBytes)}</td>
                <td>{formatBytes(p.txBytes)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
