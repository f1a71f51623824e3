import type { DescService } from "@bufbuild/protobuf";
import { createClient, type Transport } from "@connectrpc/connect";
import { createConnectQueryKey } from "@connectrpc/connect-query";
import type { QueryClient } from "@tanstack/react-query";
import { ApiKeyService } from "../../../gen/ts/cloudvlan/v1/api_key_pb";
import { AuditLogService } from "../../../gen/ts/cloudvlan/v1/audit_log_pb";
import { ResourceType } from "../../../gen/ts/cloudvlan/v1/common_pb";
import { CvlanService } from "../../../gen/ts/cloudvlan/v1/cvlan_pb";
import { DiscoveryServerService } from "../../../gen/ts/cloudvlan/v1/discovery_server_pb";
import { EventService, EventType, type Event } from "../../../gen/ts/cloudvlan/v1/events_pb";
import { GroupService } from "../../../gen/ts/cloudvlan/v1/group_pb";
import { JoinTokenService } from "../../../gen/ts/cloudvlan/v1/join_token_pb";
import { NodeService } from "../../../gen/ts/cloudvlan/v1/node_pb";
import { PolicyService } from "../../../gen/ts/cloudvlan/v1/policy_pb";
import { RegionService } from "../../../gen/ts/cloudvlan/v1/region_pb";
import { RelayService } from "../../../gen/ts/cloudvlan/v1/relay_pb";
import { TagService } from "../../../gen/ts/cloudvlan/v1/tag_pb";
import { TenantService } from "../../../gen/ts/cloudvlan/v1/tenant_pb";
import { UserService } from "../../../gen/ts/cloudvlan/v1/user_pb";
import { VRouterService } from "../../../gen/ts/cloudvlan/v1/vrouter_pb";

/**
 * affectedServices lists the services whose cached queries an event makes stale. Node, relay and
 * vrouter changes also move the tenant's and cvlan's counters shown on the dashboard.
 */
export function affectedServices(type: ResourceType): DescService[] {
  switch (type) {
    case ResourceType.TENANT:
      return [TenantService];
    case ResourceType.CVLAN:
      return [CvlanService, TenantService];
    case ResourceType.NODE:
      return [NodeService, TenantService, CvlanService, GroupService, TagService];
    case ResourceType.USER:
      return [UserService, TenantService];
    case ResourceType.GROUP:
      return [GroupService];
    case ResourceType.POLICY:
      return [PolicyService];
    case ResourceType.VROUTER:
      return [VRouterService, TenantService];
    case ResourceType.REGION:
      return [RegionService];
    case ResourceType.RELAY:
      return [RelayService, RegionService, TenantService];
    case ResourceType.API_KEY:
      return [ApiKeyService];
    case ResourceType.TAG:
      return [TagService];
    case ResourceType.DISCOVERY_SERVER:
      return [DiscoveryServerService];
    case ResourceType.JOIN_TOKEN:
      return [JoinTokenService];
    default:
      return [];
  }
}

/** applyEvent invalidates what the event changed; every mutation also adds an audit entry. */
export function applyEvent(qc: QueryClient, ev: Event): void {
  if (ev.eventType === EventType.HEARTBEAT) return;
  const services = [...affectedServices(ev.resourceType), AuditLogService];
  for (const schema of services) {
    void qc.invalidateQueries({ queryKey: createConnectQueryKey({ schema, cardinality: undefined }) });
  }
}

/** LiveState is the state of the event stream, shown in the header. */
export type LiveState = "connecting" | "live" | "reconnecting";

/**
 * watchEvents keeps a WatchEvents stream open until signal aborts, applying each event to the
 * query cache. The stream has no replay, so after a reconnect everything cached is refetched.
 * Reconnects back off from 1 s to 30 s.
 */
export async function watchEvents(
  transport: Transport,
  qc: QueryClient,
  signal: AbortSignal,
  onState: (s: LiveState) => void,
): Promise<void> {
  const client = createClient(EventService, transport);
  let delay = 1000;
  let first = true;
  while (!signal.aborted) {
    onState(first ? "connecting" : "reconnecting");
    try {
      let opened = false;
      const open = () => {
        if (opened) return;
        opened = true;
        onState("live");
        delay = 1000;
        if (!first) void qc.invalidateQueries();
      };
      // Headers arrive when the server opens the stream (or with its first event).
      const stream = client.watchEvents({}, { signal, onHeader: open });
      for await (const res of stream) {
        open();
        if (res.event) applyEvent(qc, res.event);
      }
    } catch {
      // Fall through to the back-off: the stream ended with an error or the server went away.
    }
    first = false;
    if (signal.aborted) return;
    await sleep(delay, signal);
    delay = Math.min(delay * 2, 30000);
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(t);
      resolve();
    });
  });
}
