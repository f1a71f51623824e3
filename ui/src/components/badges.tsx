import { JoinTokenStatus, JoinTokenStatusSchema } from "../../../gen/ts/cloudvlan/v1/join_token_pb";
import { NodePathType, NodeStatus, NodeStatusSchema, NodeSyncState, NodeSyncStateSchema, type NodeSync } from "../../../gen/ts/cloudvlan/v1/node_pb";
import { RelayStatus, RelayStatusSchema } from "../../../gen/ts/cloudvlan/v1/relay_pb";
import { VRouterConnectionStatus, VRouterConnectionStatusSchema, VRouterStatus, VRouterStatusSchema } from "../../../gen/ts/cloudvlan/v1/vrouter_pb";
import { enumLabel } from "../api/format";
import { Badge, type Tone } from "./ui";

const nodeTone: Record<NodeStatus, Tone> = {
  [NodeStatus.UNSPECIFIED]: "neutral",
  [NodeStatus.PENDING]: "info",
  [NodeStatus.ONLINE]: "ok",
  [NodeStatus.OFFLINE]: "warn",
  [NodeStatus.QUARANTINED]: "bad",
};

/** NodeStatusBadge shows a node's connection state. */
export function NodeStatusBadge(props: { status: NodeStatus }) {
  return <Badge tone={nodeTone[props.status] ?? "neutral"}>{enumLabel(NodeStatusSchema, props.status)}</Badge>;
}

const syncTone: Record<NodeSyncState, Tone> = {
  [NodeSyncState.UNSPECIFIED]: "neutral",
  [NodeSyncState.IN_SYNC]: "ok",
  [NodeSyncState.PENDING]: "info",
  [NodeSyncState.FAILED]: "bad",
};

/** SyncBadge shows whether a node applied its latest network map. */
export function SyncBadge(props: { sync: NodeSync | undefined }) {
  const s = props.sync?.state ?? NodeSyncState.UNSPECIFIED;
  const title = props.sync ? `applied v${props.sync.appliedVersion} of v${props.sync.desiredVersion}${props.sync.error ? `: ${props.sync.error}` : ""}` : undefined;
  return (
    <Badge tone={syncTone[s]} title={title}>
      {s === NodeSyncState.UNSPECIFIED ? "no sync" : enumLabel(NodeSyncStateSchema, s)}
    </Badge>
  );
}

/** PathBadge shows how a node reaches a peer. */
export function PathBadge(props: { path: NodePathType }) {
  if (props.path === NodePathType.DIRECT) return <Badge tone="ok">direct</Badge>;
  if (props.path === NodePathType.RELAYED) return <Badge tone="warn">relayed</Badge>;
  return <Badge tone="neutral">unknown</Badge>;
}

/** RelayStatusBadge shows a relay's state. */
export function RelayStatusBadge(props: { status: RelayStatus }) {
  const tone: Tone = props.status === RelayStatus.ONLINE ? "ok" : props.status === RelayStatus.OFFLINE ? "bad" : "info";
  return <Badge tone={tone}>{enumLabel(RelayStatusSchema, props.status)}</Badge>;
}

/** VRouterStatusBadge shows a vrouter's state. */
export function VRouterStatusBadge(props: { status: VRouterStatus }) {
  const tone: Tone =
    props.status === VRouterStatus.ONLINE ? "ok" : props.status === VRouterStatus.DEGRADED ? "warn" : props.status === VRouterStatus.OFFLINE ? "bad" : "info";
  return <Badge tone={tone}>{enumLabel(VRouterStatusSchema, props.status)}</Badge>;
}

/** ConnectionStatusBadge shows an IPsec connection's state. */
export function ConnectionStatusBadge(props: { status: VRouterConnectionStatus }) {
  const tone: Tone =
    props.status === VRouterConnectionStatus.UP ? "ok" : props.status === VRouterConnectionStatus.DOWN ? "bad" : "info";
  return <Badge tone={tone}>{enumLabel(VRouterConnectionStatusSchema, props.status)}</Badge>;
}

/** TokenStatusBadge shows whether a join token can still be used. */
export function TokenStatusBadge(props: { status: JoinTokenStatus }) {
  const tone: Tone = props.status === JoinTokenStatus.ACTIVE ? "ok" : props.status === JoinTokenStatus.REVOKED ? "bad" : "neutral";
  return <Badge tone={tone}>{enumLabel(JoinTokenStatusSchema, props.status)}</Badge>;
}
