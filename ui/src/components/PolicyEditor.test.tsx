import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createRouterTransport } from "@connectrpc/connect";
import { screen, waitFor } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { describe, expect, it, vi } from "vitest";
import { ViolationsSchema } from "../../../gen/ts/buf/validate/validate_pb";
import { Protocol } from "../../../gen/ts/cloudvlan/v1/common_pb";
import { CvlanService } from "../../../gen/ts/cloudvlan/v1/cvlan_pb";
import { GroupService } from "../../../gen/ts/cloudvlan/v1/group_pb";
import { NodeService } from "../../../gen/ts/cloudvlan/v1/node_pb";
import {
  PolicyAction,
  PolicySchema,
  PolicyService,
  type CreatePolicyRequest,
  type ValidatePolicyRequest,
} from "../../../gen/ts/cloudvlan/v1/policy_pb";
import { TagService } from "../../../gen/ts/cloudvlan/v1/tag_pb";
import { describedText, renderWithApi } from "../test/render";
import { PolicyEditor } from "./PolicyEditor";

const GROUP_ID = "3f0c1e2a-4b5d-4c6e-8f90-a1b2c3d4e5f6";

type Handlers = {
  createPolicy?: (req: CreatePolicyRequest) => unknown;
  validatePolicy?: (req: ValidatePolicyRequest) => unknown;
};

// api is a real Connect transport over an in-memory router: requests and errors (with their
// details) go through the Connect protocol's encoding, as they would over HTTP.
function api(h: Handlers) {
  return createRouterTransport(({ service }) => {
    service(PolicyService, {
      createPolicy: (req) => {
        const res = h.createPolicy?.(req);
        return res ?? { policy: { ...req.policy, id: "9a1b2c3d-0000-4000-8000-000000000001", etag: "1" } };
      },
      validatePolicy: (req) => (h.validatePolicy?.(req) as { valid: boolean }) ?? { valid: true },
    });
    service(CvlanService, { listCvlans: () => ({ cvlans: [] }) });
    service(GroupService, { listGroups: () => ({ groups: [{ id: GROUP_ID, name: "admins" }] }) });
    service(TagService, { listTags: () => ({ tags: [{ id: "t1", name: "web" }] }) });
    service(NodeService, { listNodes: () => ({ nodes: [] }) });
  });
}

// violation builds the protovalidate detail the server attaches, for policy.rules[r].<list>[i].<field>.
function violation(rule: number, list: string, item: number, field: string, message: string) {
  return create(ViolationsSchema, {
    violations: [
      {
        field: {
          elements: [
            { fieldName: "policy", fieldNumber: 2 },
            { fieldName: "rules", fieldNumber: 13, subscript: { case: "index", value: BigInt(rule) } },
            { fieldName: list, fieldNumber: list === "sources" ? 4 : 5, subscript: { case: "index", value: BigInt(item) } },
            { fieldName: field, fieldNumber: 6 },
          ],
        },
        ruleId: "string.ip_prefix",
        message,
      },
    ],
  });
}

describe("PolicyEditor", () => {
  it("shows a protovalidate violation from CreatePolicy next to the offending target", async () => {
    const user = userEvent.setup();
    const seen: CreatePolicyRequest[] = [];
    const transport = api({
      createPolicy: (req) => {
        seen.push(req);
        throw new ConnectError("validation error", Code.InvalidArgument, undefined, [
          { desc: ViolationsSchema, value: violation(0, "sources", 0, "cidr", "value must be a valid IP prefix") },
        ]);
      },
    });
    renderWithApi(<PolicyEditor />, transport);

    await user.type(screen.getByLabelText("Name"), "office");
    await user.selectOptions(screen.getByLabelText("Rule 1 source 1 type"), "cidr");
    await user.type(screen.getByLabelText("Rule 1 source 1 value"), "10.0.0.0/33");
    await user.click(screen.getByRole("button", { name: "Create policy" }));

    const input = screen.getByLabelText("Rule 1 source 1 value");
    await waitFor(() => expect(input.getAttribute("aria-invalid")).toBe("true"));
    expect(describedText(input)).toContain("value must be a valid IP prefix");
    // The error is on that field only, not on its neighbours.
    expect(screen.getByLabelText("Rule 1 destination 1 type").getAttribute("aria-invalid")).toBeNull();
    expect(screen.getByLabelText("Name").getAttribute("aria-invalid")).toBeNull();

    expect(seen).toHaveLength(1);
    const rule = seen[0].policy!.rules[0];
    expect(seen[0].policy!.name).toBe("office");
    expect(rule.sources[0].target).toEqual({ case: "cidr", value: "10.0.0.0/33" });
    expect(rule.destinations[0].target).toEqual({ case: "any", value: true });
    expect(rule.action).toBe(PolicyAction.ALLOW);
  });

  it("asks ValidatePolicy where a reference error is when the save error has no field", async () => {
    const user = userEvent.setup();
    const validated: ValidatePolicyRequest[] = [];
    const transport = api({
      createPolicy: () => {
        throw new ConnectError("policy refers to unknown resources", Code.InvalidArgument);
      },
      validatePolicy: (req) => {
        validated.push(req);
        return {
          valid: false,
          violations: [{ field: "rules[0].destinations[0].group_id", ruleId: "reference.not_found", message: "group does not exist" }],
        };
      },
    });
    renderWithApi(<PolicyEditor />, transport);

    await user.type(screen.getByLabelText("Name"), "db-access");
    await user.selectOptions(screen.getByLabelText("Rule 1 destination 1 type"), "groupId");
    const value = await screen.findByLabelText("Rule 1 destination 1 value");
    await waitFor(() => expect(screen.getByRole("option", { name: "admins" })).toBeTruthy());
    await user.selectOptions(value, GROUP_ID);
    await user.click(screen.getByRole("button", { name: "Create policy" }));

    await waitFor(() => expect(describedText(screen.getByLabelText("Rule 1 destination 1 value"))).toContain("group does not exist"));
    expect(validated).toHaveLength(1);
    expect(validated[0].policy!.rules[0].destinations[0].target).toEqual({ case: "groupId", value: GROUP_ID });
  });

  it("rejects unparsable ports locally without calling the server", async () => {
    const user = userEvent.setup();
    const createPolicy = vi.fn();
    renderWithApi(<PolicyEditor />, api({ createPolicy }));

    await user.type(screen.getByLabelText("Name"), "ssh");
    await user.selectOptions(screen.getByLabelText("Rule 1 protocol"), String(Protocol.TCP));
    await user.type(screen.getByLabelText("Rule 1 ports"), "22, ssh");
    await user.click(screen.getByRole("button", { name: "Create policy" }));

    expect(describedText(screen.getByLabelText("Rule 1 ports"))).toContain('"ssh" is not a port or range');
    expect(createPolicy).not.toHaveBeenCalled();
  });

  it("sends every rule in order with ports and reports a valid dry run", async () => {
    const user = userEvent.setup();
    const validated: ValidatePolicyRequest[] = [];
    const saved = vi.fn();
    const transport = api({
      validatePolicy: (req) => {
        validated.push(req);
        return { valid: true };
      },
    });
    renderWithApi(<PolicyEditor onSaved={saved} />, transport);

    await user.type(screen.getByLabelText("Name"), "web");
    await user.selectOptions(screen.getByLabelText("Rule 1 protocol"), String(Protocol.TCP));
    await user.type(screen.getByLabelText("Rule 1 ports"), "80, 8000-8080");
    await user.click(screen.getByRole("button", { name: "Add rule" }));
    await user.selectOptions(screen.getByLabelText("Rule 2 action"), String(PolicyAction.DENY));
    await user.click(screen.getByRole("button", { name: "Move rule 2 up" }));
    await user.click(screen.getByRole("button", { name: "Check" }));

    await screen.findByText("The policy is valid.");
    const rules = validated[0].policy!.rules;
    expect(rules.map((r) => r.action)).toEqual([PolicyAction.DENY, PolicyAction.ALLOW]);
    expect(rules[1].ports.map((p) => [p.first, p.last])).toEqual([
      [80, 0],
      [8000, 8080],
    ]);

    await user.click(screen.getByRole("button", { name: "Create policy" }));
    await waitFor(() => expect(saved).toHaveBeenCalledTimes(1));
    expect(saved.mock.calls[0][0].name).toBe("web");
  });

  it("loads an existing policy into the form", () => {
    const policy = create(PolicySchema, {
      id: "9a1b2c3d-0000-4000-8000-000000000002",
      etag: "7",
      name: "existing",
      priority: 42,
      enabled: true,
      rules: [
        {
          action: PolicyAction.ALLOW,
          protocol: Protocol.UDP,
          ports: [{ first: 53 }, { first: 6000, last: 6010 }],
          sources: [{ target: { case: "tag", value: "web" } }],
          destinations: [{ target: { case: "cidr", value: "10.1.0.0/16" } }],
        },
      ],
    });
    renderWithApi(<PolicyEditor policy={policy} />, api({}));
    expect((screen.getByLabelText("Name") as HTMLInputElement).value).toBe("existing");
    expect((screen.getByLabelText("Priority") as HTMLInputElement).value).toBe("42");
    expect((screen.getByLabelText("Rule 1 ports") as HTMLInputElement).value).toBe("53, 6000-6010");
    expect((screen.getByLabelText("Rule 1 source 1 value") as HTMLInputElement).value).toBe("web");
    expect((screen.getByLabelText("Rule 1 destination 1 value") as HTMLInputElement).value).toBe("10.1.0.0/16");
    expect(screen.getByRole("button", { name: "Save policy" })).toBeTruthy();
  });
});
