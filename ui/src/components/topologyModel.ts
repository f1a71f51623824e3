import { NodePathType, NodeStatus, type Node } from "../../../gen/ts/cloudvlan/v1/node_pb";

/** Link is one connection between two nodes as their agents reported it. */
export type Link = { a: string; b: string; path: NodePathType; relayId: string };

/**
 * linksOf merges the nodes' peer paths into undirected links: one per pair, direct when either
 * side reports a direct path (the other side may not have upgraded its report yet). Paths to
 * nodes not in the list (other pages, deleted) are dropped.
 */
export function linksOf(nodes: Node[]): Link[] {
  const known = new Set(nodes.map((n) => n.id));
  const links = new Map<string, Link>();
  for (const n of nodes) {
    for (const p of n.peerPaths) {
      if (!known.has(p.peerNodeId) || p.peerNodeId === n.id || p.path === NodePathType.UNSPECIFIED) continue;
      const [a, b] = n.id < p.peerNodeId ? [n.id, p.peerNodeId] : [p.peerNodeId, n.id];
      const key = `${a}|${b}`;
      const prev = links.get(key);
      if (!prev || (prev.path === NodePathType.RELAYED && p.path === NodePathType.DIRECT)) {
        links.set(key, { a, b, path: p.path, relayId: p.relayId });
      }
    }
  }
  return [...links.values()];
}

/** circleLayout spreads n items on a circle big enough that they do not overlap. */
export function circleLayout(n: number, spacing = 170): { x: number; y: number }[] {
  if (n === 1) return [{ x: 0, y: 0 }];
  const r = Math.max(140, (n * spacing) / (2 * Math.PI));
  return Array.from({ length: n }, (_, i) => {
    const a = (2 * Math.PI * i) / n - Math.PI / 2;
    return { x: Math.round(r * Math.cos(a)), y: Math.round(r * Math.sin(a)) };
  });
}

/** statusColor is the colour of a node in the graph. */
export function statusColor(s: NodeStatus): string {
  switch (s) {
    case NodeStatus.ONLINE:
      return "#16a34a";
    case NodeStatus.OFFLINE:
      return "#9ca3af";
    case NodeStatus.QUARANTINED:
      return "#dc2626";
    default:
      return "#2563eb";
  }
}
