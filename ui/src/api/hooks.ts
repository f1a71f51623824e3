import { useQuery } from "@connectrpc/connect-query";
import { CvlanService } from "../../../gen/ts/cloudvlan/v1/cvlan_pb";
import { GroupService } from "../../../gen/ts/cloudvlan/v1/group_pb";
import { NodeService } from "../../../gen/ts/cloudvlan/v1/node_pb";
import { RegionService } from "../../../gen/ts/cloudvlan/v1/region_pb";
import { RelayService } from "../../../gen/ts/cloudvlan/v1/relay_pb";
import { TagService } from "../../../gen/ts/cloudvlan/v1/tag_pb";

// Reference lists used to fill selects and to show names instead of ids. One page of the
// maximum size covers the usual tenant; the pages that list these resources page properly.
const REF_PAGE = 1000;

/** useCvlans lists the tenant's cvlans. */
export const useCvlans = () => useQuery(CvlanService.method.listCvlans, { pageSize: REF_PAGE });
/** useGroups lists the tenant's groups. */
export const useGroups = () => useQuery(GroupService.method.listGroups, { pageSize: REF_PAGE });
/** useTags lists the tenant's tags. */
export const useTags = () => useQuery(TagService.method.listTags, { pageSize: REF_PAGE });
/** useRegions lists the deployment's regions. */
export const useRegions = () => useQuery(RegionService.method.listRegions, { pageSize: REF_PAGE });
/** useRelays lists the relays visible to the tenant. */
export const useRelays = () => useQuery(RelayService.method.listRelays, { pageSize: REF_PAGE });
/** useAllNodes lists up to 1000 nodes (topology, name lookup). */
export const useAllNodes = () => useQuery(NodeService.method.listNodes, { pageSize: REF_PAGE });

/** nameMap maps ids to names for display. */
export function nameMap<T extends { id: string; name: string }>(items: T[] | undefined): Map<string, string> {
  return new Map((items ?? []).map((i) => [i.id, i.name]));
}
