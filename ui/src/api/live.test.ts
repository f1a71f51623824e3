import { createRouterTransport } from "@connectrpc/connect";
import { createConnectQueryKey } from "@connectrpc/connect-query";
import { QueryClient } from "@tanstack/react-query";
import { describe, expect, it } from "vitest";
import { ResourceType } from "../../../gen/ts/cloudvlan/v1/common_pb";
import { CvlanService } from "../../../gen/ts/cloudvlan/v1/cvlan_pb";
import { EventService, EventType } from "../../../gen/ts/cloudvlan/v1/events_pb";
import { NodeService, NodeStatus } from "../../../gen/ts/cloudvlan/v1/node_pb";
import { PolicyService } from "../../../gen/ts/cloudvlan/v1/policy_pb";
import { watchEvents, type LiveState } from "./live";

// seed puts fresh (valid) data under the keys connect-query uses for these calls.
function seed(qc: QueryClient) {
  const keys = {
    nodes: createConnectQueryKey({ schema: NodeService.method.listNodes, input: { pageSize: 100 }, cardinality: "finite" }),
    nodesPaged: createConnectQueryKey({
      schema: NodeService.method.listNodes,
      input: { pageSize: 100, pageToken: "" },
      cardinality: "infinite",
      pageParamKey: "pageToken",
    }),
    policies: createConnectQueryKey({ schema: PolicyService.method.listPolicies, input: {}, cardinality: "finite" }),
    cvlans: createConnectQueryKey({ schema: CvlanService.method.listCvlans, input: {}, cardinality: "finite" }),
  };
  for (const k of Object.values(keys)) qc.setQueryData(k, {} as never);
  return keys;
}

describe("watchEvents", () => {
  it("invalidates the queries of the resource an event names, and only those", async () => {
    const qc = new QueryClient();
    const keys = seed(qc);
    const states: LiveState[] = [];
    const ctl = new AbortController();
    let sent = false;
    const transport = createRouterTransport(({ service }) => {
      service(EventService, {
        async *watchEvents(_req, ctx) {
          yield { event: { eventType: EventType.HEARTBEAT } };
          yield {
            event: {
              eventType: EventType.UPDATED,
              resourceType: ResourceType.NODE,
              resourceId: "6f1c2d9e-1b2a-4c3d-8e9f-0a1b2c3d4e5f",
              payload: { case: "node", value: { name: "web-1", status: NodeStatus.ONLINE } },
            },
          };
          sent = true;
          // Stay open like the real stream until the client goes away.
          await new Promise<void>((resolve) => ctx.signal.addEventListener("abort", () => resolve()));
        },
      });
    });
    const done = watchEvents(transport, qc, ctl.signal, (s) => states.push(s));
    await expect.poll(() => qc.getQueryState(keys.nodes)?.isInvalidated, { timeout: 10_000 }).toBe(true);
    expect(sent).toBe(true);
    expect(qc.getQueryState(keys.nodesPaged)?.isInvalidated).toBe(true);
    expect(qc.getQueryState(keys.cvlans)?.isInvalidated).toBe(true); // cvlan node counters
    expect(qc.getQueryState(keys.policies)?.isInvalidated).toBe(false);
    expect(states).toEqual(["connecting", "live"]);
    ctl.abort();
    await done;
  });

  it("reconnects after the stream fails and refetches everything then", async () => {
    const qc = new QueryClient();
    const keys = seed(qc);
    const states: LiveState[] = [];
    const ctl = new AbortController();
    let calls = 0;
    const transport = createRouterTransport(({ service }) => {
      service(EventService, {
        async *watchEvents(_req, ctx) {
          calls++;
          if (calls === 1) throw new Error("replica went away");
          yield { event: { eventType: EventType.HEARTBEAT } };
          await new Promise<void>((resolve) => ctx.signal.addEventListener("abort", () => resolve()));
        },
      });
    });
    const done = watchEvents(transport, qc, ctl.signal, (s) => states.push(s));
    await expect.poll(() => calls === 2 && states.at(-1) === "live", { timeout: 10_000 }).toBe(true);
    expect(states[0]).toBe("connecting");
    expect(states.slice(-2)).toEqual(["reconnecting", "live"]);
    // Nothing was replayed, so every cached query is stale after the gap.
    expect(qc.getQueryState(keys.policies)?.isInvalidated).toBe(true);
    ctl.abort();
    await done;
  });
});
