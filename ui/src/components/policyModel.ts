import type { MessageInitShape } from "@bufbuild/protobuf";
import { Protocol } from "../../../gen/ts/cloudvlan/v1/common_pb";
import { PolicyAction, type Policy, type PolicySchema, type PolicyTarget, type PolicyTargetSchema } from "../../../gen/ts/cloudvlan/v1/policy_pb";

/** TargetKind is the case of a PolicyTarget's oneof (plus "any"). */
export type TargetKind = "any" | "tag" | "groupId" | "userId" | "nodeId" | "cidr";

/** The proto field name of each target kind, as it appears in violation paths. */
export const targetField: Record<TargetKind, string> = {
  any: "any",
  tag: "tag",
  groupId: "group_id",
  userId: "user_id",
  nodeId: "node_id",
  cidr: "cidr",
};

/** TargetState is one source or destination being edited. */
export type TargetState = { kind: TargetKind; value: string };

/** RuleState is one rule being edited; ports are text such as "22, 8000-8080". */
export type RuleState = {
  key: number;
  name: string;
  description: string;
  action: PolicyAction;
  protocol: Protocol;
  ports: string;
  sources: TargetState[];
  destinations: TargetState[];
};

/** EditorState is the whole policy being edited. */
export type EditorState = {
  id: string;
  etag: string;
  name: string;
  description: string;
  cvlanId: string;
  enabled: boolean;
  priority: string;
  rules: RuleState[];
};

let nextKey = 1;
/** newRule is an empty allow-any rule, the usual starting point. */
export function newRule(): RuleState {
  return {
    key: nextKey++,
    name: "",
    description: "",
    action: PolicyAction.ALLOW,
    protocol: Protocol.ANY,
    ports: "",
    sources: [{ kind: "any", value: "" }],
    destinations: [{ kind: "any", value: "" }],
  };
}

/** emptyPolicy is the state of a new policy. */
export function emptyPolicy(): EditorState {
  return { id: "", etag: "", name: "", description: "", cvlanId: "", enabled: true, priority: "100", rules: [newRule()] };
}

function targetState(t: PolicyTarget): TargetState {
  switch (t.target.case) {
    case "any":
      return { kind: "any", value: "" };
    case undefined:
      return { kind: "any", value: "" };
    default:
      return { kind: t.target.case, value: t.target.value };
  }
}

/** fromPolicy turns a stored policy into editor state. */
export function fromPolicy(p: Policy): EditorState {
  return {
    id: p.id,
    etag: p.etag,
    name: p.name,
    description: p.description,
    cvlanId: p.cvlanId,
    enabled: p.enabled,
    priority: String(p.priority),
    rules: p.rules.map((r) => ({
      key: nextKey++,
      name: r.name,
      description: r.description,
      action: r.action,
      protocol: r.protocol,
      ports: r.ports.map((pr) => (pr.last && pr.last !== pr.first ? `${pr.first}-${pr.last}` : String(pr.first))).join(", "),
      sources: r.sources.map(targetState),
      destinations: r.destinations.map(targetState),
    })),
  };
}

/** parsePorts reads "22, 8000-8080"; it returns an error message for anything else. */
export function parsePorts(text: string): { first: number; last: number }[] | string {
  const out: { first: number; last: number }[] = [];
  for (const part of text.split(",").map((s) => s.trim()).filter(Boolean)) {
    const m = /^(\d+)(?:\s*-\s*(\d+))?$/.exec(part);
    if (!m) return `"${part}" is not a port or range (e.g. 22 or 8000-8080)`;
    out.push({ first: Number(m[1]), last: m[2] ? Number(m[2]) : 0 });
  }
  return out;
}

function targetInit(t: TargetState): MessageInitShape<typeof PolicyTargetSchema> {
  if (t.kind === "any") return { target: { case: "any", value: true } };
  return { target: { case: t.kind, value: t.value.trim() } };
}

/**
 * toPolicy builds the request's policy. Port text that does not parse is reported in
 * localErrors (keyed like the server's violations) instead of being sent.
 */
export function toPolicy(s: EditorState): { policy: MessageInitShape<typeof PolicySchema>; localErrors: Record<string, string[]> } {
  const localErrors: Record<string, string[]> = {};
  const rules = s.rules.map((r, i) => {
    const ports = parsePorts(r.ports);
    if (typeof ports === "string") localErrors[`rules[${i}].ports`] = [ports];
    return {
      name: r.name.trim(),
      description: r.description,
      action: r.action,
      protocol: r.protocol,
      ports: typeof ports === "string" ? [] : ports,
      sources: r.sources.map(targetInit),
      destinations: r.destinations.map(targetInit),
    };
  });
  const priority = Number(s.priority);
  if (!/^\d+$/.test(s.priority.trim())) localErrors["priority"] = ["priority must be a whole number"];
  return {
    policy: {
      id: s.id,
      etag: s.etag,
      name: s.name.trim(),
      description: s.description,
      cvlanId: s.cvlanId,
      enabled: s.enabled,
      priority: Number.isFinite(priority) ? priority : 0,
      rules,
    },
    localErrors,
  };
}
