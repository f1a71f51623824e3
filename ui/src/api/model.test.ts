import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { FieldPathSchema } from "../../../gen/ts/buf/validate/validate_pb";
import { ResourceType } from "../../../gen/ts/cloudvlan/v1/common_pb";
import { NodePathType, NodeSchema } from "../../../gen/ts/cloudvlan/v1/node_pb";
import { NodeService } from "../../../gen/ts/cloudvlan/v1/node_pb";
import { TenantService } from "../../../gen/ts/cloudvlan/v1/tenant_pb";
import { emptyPolicy, parsePorts, toPolicy } from "../components/policyModel";
import { linksOf } from "../components/topologyModel";
import { fieldPathString, pick, unplaced } from "./errors";
import { affectedServices } from "./live";

describe("fieldPathString", () => {
  it.each([
    [[{ fieldName: "policy" }, { fieldName: "name" }], "policy.name"],
    [[{ fieldName: "rules", subscript: { case: "index" as const, value: 2n } }, { fieldName: "ports", subscript: { case: "index" as const, value: 0n } }], "rules[2].ports[0]"],
    [[{ fieldName: "drops", subscript: { case: "stringKey" as const, value: "queue" } }], 'drops["queue"]'],
  ])("renders path %# as %s", (elements, want) => {
    expect(fieldPathString(create(FieldPathSchema, { elements }))).toBe(want);
  });
});

describe("pick and unplaced", () => {
  const errs = { name: ["bad name"], "rules[0].ports[1]": ["bad port"], "rules[10]": ["bad rule"], other: ["x"] };
  it("picks a field and what is below it, not its namesakes", () => {
    expect(pick(errs, "rules[0]")).toEqual(["bad port"]);
    expect(pick(errs, "rules[1]")).toBeUndefined();
    expect(pick(errs, "name")).toEqual(["bad name"]);
  });
  it("reports what no field shows", () => {
    expect(unplaced(errs, ["name", "rules"])).toEqual(["other: x"]);
  });
});

describe("parsePorts", () => {
  it.each([
    ["", []],
    ["22", [{ first: 22, last: 0 }]],
    ["80, 8000-8080", [{ first: 80, last: 0 }, { first: 8000, last: 8080 }]],
  ])("parses %j", (text, want) => expect(parsePorts(text)).toEqual(want));
  it.each(["http", "1-2-3", "22;23"])("rejects %j", (text) => expect(typeof parsePorts(text)).toBe("string"));
  it("reports a bad priority instead of sending it", () => {
    expect(toPolicy({ ...emptyPolicy(), priority: "high" }).localErrors).toHaveProperty("priority");
  });
});

describe("linksOf", () => {
  const node = (id: string, paths: { peer: string; path: NodePathType; relay?: string }[]) =>
    create(NodeSchema, { id, name: id, peerPaths: paths.map((p) => ({ peerNodeId: p.peer, path: p.path, relayId: p.relay ?? "" })) });
  it("merges both directions into one link, preferring a direct report", () => {
    const links = linksOf([
      node("a", [{ peer: "b", path: NodePathType.RELAYED, relay: "r1" }, { peer: "gone", path: NodePathType.DIRECT }]),
      node("b", [{ peer: "a", path: NodePathType.DIRECT }]),
      node("c", [{ peer: "a", path: NodePathType.RELAYED, relay: "r1" }]),
    ]);
    expect(links).toEqual([
      { a: "a", b: "b", path: NodePathType.DIRECT, relayId: "" },
      { a: "a", b: "c", path: NodePathType.RELAYED, relayId: "r1" },
    ]);
  });
});

describe("affectedServices", () => {
  it("refreshes nodes and the dashboard's counters when a node changes", () => {
    const names = affectedServices(ResourceType.NODE).map((s) => s.typeName);
    expect(names).toContain(NodeService.typeName);
    expect(names).toContain(TenantService.typeName);
  });
});
