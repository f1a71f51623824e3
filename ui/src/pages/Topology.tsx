import { Background, Controls, ReactFlow, type Edge, type Node as FlowNode } from "@xyflow/react";
import "@xyflow/react/dist/style.css";
import { useMemo } from "react";
import { Link, useNavigate } from "react-router";
import { NodePathType, NodeStatusSchema } from "../../../gen/ts/cloudvlan/v1/node_pb";
import { enumLabel } from "../api/format";
import { nameMap, useAllNodes, useRelays } from "../api/hooks";
import { PathBadge } from "../components/badges";
import { circleLayout, linksOf, statusColor } from "../components/topologyModel";
import { Empty, PageHeader, QueryView } from "../components/ui";

/** TopologyPage draws the mesh: nodes and their current links, direct or through a relay. */
export function TopologyPage() {
  const nodes = useAllNodes();
  const relays = nameMap(useRelays().data?.relays);
  const navigate = useNavigate();
  const graph = useMemo(() => {
    const list = nodes.data?.nodes ?? [];
    const pos = circleLayout(list.length);
    const flowNodes: FlowNode[] = list.map((n, i) => ({
      id: n.id,
      position: pos[i],
      data: { label: `${n.name}\n${n.ipv4Address}` },
      ariaLabel: `Node ${n.name}, ${enumLabel(NodeStatusSchema, n.status)}, ${n.ipv4Address}`,
      className: "topo-node",
      style: { borderColor: statusColor(n.status), borderWidth: 2, whiteSpace: "pre-line" },
    }));
    const links = linksOf(list);
    const edges: Edge[] = links.map((l) => {
      const direct = l.path === NodePathType.DIRECT;
      return {
        id: `${l.a}-${l.b}`,
        source: l.a,
        target: l.b,
        // Straight lines between node centres (the handles are centred by CSS): a mesh has no
        // direction, and curves between arbitrary sides look like detours.
        type: "straight",
        label: direct ? "direct" : `relay ${relays.get(l.relayId) ?? ""}`.trim(),
        animated: !direct,
        style: { stroke: direct ? "#16a34a" : "#d97706", strokeWidth: 2, strokeDasharray: direct ? undefined : "6 4" },

      };
    });
    return { flowNodes, edges, links };
  }, [nodes.data, relays]);
  const names = nameMap(nodes.data?.nodes);

  return (
    <>
      <PageHeader title="Topology" description="Nodes and their current links, as the agents report them." />
      <QueryView query={nodes} isEmpty={(d) => d.nodes.length === 0} empty="No nodes yet: enroll one with a join token." loadingLabel="Loading the mesh…">
        {() => (
          <>
            <div className="legend" aria-label="Legend">
              <span><i className="swatch swatch-direct" /> direct</span>
              <span><i className="swatch swatch-relayed" /> relayed</span>
              <span><i className="dot-online" /> online</span>
              <span><i className="dot-offline" /> offline</span>
              <span><i className="dot-quarantined" /> quarantined</span>
            </div>
            <div className="topology" role="region" aria-label="Topology graph">
              <ReactFlow
                nodes={graph.flowNodes}
                edges={graph.edges}
                fitView
                fitViewOptions={{ padding: 0.3, maxZoom: 1.1 }}
                nodesDraggable
                nodesConnectable={false}
                onNodeClick={(_, n) => navigate(`/nodes/${n.id}`)}
                proOptions={{ hideAttribution: true }}
                minZoom={0.2}
              >
                <Background gap={24} />
                <Controls showInteractive={false} />
              </ReactFlow>
            </div>
            <section className="panel" aria-labelledby="links">
              <h2 id="links">Links ({graph.links.length})</h2>
              {graph.links.length === 0 ? (
                <Empty>No links reported yet: nodes report their paths once they talk to a peer.</Empty>
              ) : (
                <table className="table">
                  <thead><tr><th scope="col">Between</th><th scope="col">Path</th><th scope="col">Relay</th></tr></thead>
                  <tbody>
                    {graph.links.map((l) => (
                      <tr key={`${l.a}-${l.b}`}>
                        <td><Link to={`/nodes/${l.a}`}>{names.get(l.a)}</Link> ⇄ <Link to={`/nodes/${l.b}`}>{names.get(l.b)}</Link></td>
                        <td><PathBadge path={l.path} /></td>
                        <td>{l.relayId ? relays.get(l.relayId) ?? l.relayId : "—"}</td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              )}
            </section>
          </>
        )}
      </QueryView>
    </>
  );
}
