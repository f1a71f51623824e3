import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createRouterTransport } from "@connectrpc/connect";
import { screen, waitFor } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { useState } from "react";
import { describe, expect, it } from "vitest";
import { ViolationsSchema } from "../../../gen/ts/buf/validate/validate_pb";
import { CvlanService } from "../../../gen/ts/cloudvlan/v1/cvlan_pb";
import { JoinTokenKind, JoinTokenService, JoinTokenStatus, type CreateJoinTokenRequest } from "../../../gen/ts/cloudvlan/v1/join_token_pb";
import { describedText, renderWithApi } from "../test/render";
import { agentCommand, TokenDialog } from "./TokenDialog";

const ORIGIN = "https://ctl.example:8443";
const OFFICE = "6f1c2d9e-1b2a-4c3d-8e9f-0a1b2c3d4e5f";
const LAB = "7a2d3e0f-2c3b-4d4e-9fa0-1b2c3d4e5f60";
const SECRET = "cvj_4kq8Zr0tD2mNw7XbLp9sVcE1yHfA6uGj3oQiTe5RxKz";

function api(onCreate: (req: CreateJoinTokenRequest) => unknown) {
  return createRouterTransport(({ service }) => {
    service(CvlanService, {
      listCvlans: () => ({
        cvlans: [
          { id: OFFICE, name: "office" },
          { id: LAB, name: "lab" },
        ],
      }),
    });
    service(JoinTokenService, {
      createJoinToken: (req) =>
        (onCreate(req) as object) ?? {
          joinToken: { ...req.joinToken, id: "0d9c8b7a-0000-4000-8000-000000000001", status: JoinTokenStatus.ACTIVE, prefix: "cvj_4kq8" },
          secret: SECRET,
        },
    });
  });
}

// Harness opens the dialog from a button, as the join-tokens page does.
function Harness() {
  const [open, setOpen] = useState(false);
  return (
    <>
      <button type="button" onClick={() => setOpen(true)}>
        Create join token
      </button>
      <TokenDialog open={open} onClose={() => setOpen(false)} origin={ORIGIN} />
    </>
  );
}

describe("TokenDialog", () => {
  it("creates a token with the chosen options and shows the secret and agent command once", async () => {
    const user = userEvent.setup();
    const seen: CreateJoinTokenRequest[] = [];
    renderWithApi(<Harness />, api((req) => void seen.push(req)));

    await user.click(screen.getByRole("button", { name: "Create join token" }));
    const cvlan = screen.getByLabelText("Cvlan");
    await waitFor(() => expect(screen.getByRole("option", { name: "lab" })).toBeTruthy());
    await user.selectOptions(cvlan, LAB);
    await user.type(screen.getByLabelText("Name"), "ci-runners");
    await user.selectOptions(screen.getByLabelText("Valid for"), "86400");
    await user.type(screen.getByLabelText("Tags for enrolled nodes"), "ci, linux");
    await user.click(screen.getByLabelText("Reusable (more than one machine)"));
    const maxUses = screen.getByLabelText("Maximum uses");
    await user.clear(maxUses);
    await user.type(maxUses, "5");
    await user.click(screen.getByLabelText(/^Ephemeral nodes/));
    await user.click(screen.getByRole("button", { name: "Create token" }));

    const command = await screen.findByLabelText("Run on the machine to enroll");
    expect((command as HTMLInputElement).value).toBe(`cvlan-agent up --controller https://ctl.example:8444 --controller-ca cloudvlan-root.pem --token ${SECRET}`);
    expect((screen.getByLabelText("Secret") as HTMLInputElement).value).toBe(SECRET);
    expect(screen.getByText(/shown only once/)).toBeTruthy();

    expect(seen).toHaveLength(1);
    const t = seen[0].joinToken!;
    expect(t.kind).toBe(JoinTokenKind.NODE);
    expect(t.cvlanId).toBe(LAB);
    expect(t.name).toBe("ci-runners");
    expect(t.reusable).toBe(true);
    expect(t.maxUses).toBe(5);
    expect(t.ephemeral).toBe(true);
    expect(t.tags).toEqual(["ci", "linux"]);
    expect(seen[0].ttl?.seconds).toBe(86400n);

    await user.click(screen.getByRole("button", { name: "Copy command" }));
    // user-event installs a clipboard stub in place of the browser's.
    expect(await navigator.clipboard.readText()).toBe(`cvlan-agent up --controller https://ctl.example:8444 --controller-ca cloudvlan-root.pem --token ${SECRET}`);
    expect(screen.getByRole("button", { name: "Copy command" }).textContent).toBe("Copied");

    // Done forgets the secret: reopening shows a fresh form, not the old secret.
    await user.click(screen.getByRole("button", { name: "Done" }));
    expect(screen.queryByDisplayValue(SECRET)).toBeNull();
    await user.click(screen.getByRole("button", { name: "Create join token" }));
    expect(screen.getByRole("button", { name: "Create token" })).toBeTruthy();
    expect(screen.queryByDisplayValue(SECRET)).toBeNull();
    expect((screen.getByLabelText("Name") as HTMLInputElement).value).toBe("");
  });

  it("defaults to a single-use node token for the first cvlan, valid for an hour", async () => {
    const user = userEvent.setup();
    const seen: CreateJoinTokenRequest[] = [];
    renderWithApi(<Harness />, api((req) => void seen.push(req)));
    await user.click(screen.getByRole("button", { name: "Create join token" }));
    await waitFor(() => expect((screen.getByLabelText("Cvlan") as HTMLSelectElement).value).toBe(OFFICE));
    expect(screen.queryByLabelText("Maximum uses")).toBeNull();
    await user.click(screen.getByRole("button", { name: "Create token" }));
    await screen.findByLabelText("Secret");
    const t = seen[0].joinToken!;
    expect([t.cvlanId, t.reusable, t.maxUses, t.ephemeral, t.tags.length]).toEqual([OFFICE, false, 0, false, 0]);
    expect(seen[0].ttl?.seconds).toBe(3600n);
  });

  it("shows the server's violation next to the field and keeps the form", async () => {
    const user = userEvent.setup();
    renderWithApi(
      <Harness />,
      api(() => {
        throw new ConnectError("validation error", Code.InvalidArgument, undefined, [
          {
            desc: ViolationsSchema,
            value: create(ViolationsSchema, {
              violations: [
                {
                  field: {
                    elements: [
                      { fieldName: "join_token", fieldNumber: 2 },
                      { fieldName: "tags", fieldNumber: 17, subscript: { case: "index", value: 0n } },
                    ],
                  },
                  ruleId: "string.pattern",
                  message: "value does not match regex pattern",
                },
              ],
            }),
          },
        ]);
      }),
    );
    await user.click(screen.getByRole("button", { name: "Create join token" }));
    await waitFor(() => expect(screen.getByRole("option", { name: "office" })).toBeTruthy());
    await user.type(screen.getByLabelText("Tags for enrolled nodes"), "Not_A_Label");
    await user.click(screen.getByRole("button", { name: "Create token" }));
    const tags = screen.getByLabelText("Tags for enrolled nodes");
    await waitFor(() => expect(describedText(tags)).toContain("value does not match regex pattern"));
    expect(screen.queryByLabelText("Secret")).toBeNull();
  });

  it("builds the enrollment command for each kind", () => {
    expect(agentCommand(ORIGIN, "cvj_x")).toBe(`cvlan-agent up --controller https://ctl.example:8444 --controller-ca cloudvlan-root.pem --token cvj_x`);
    expect(agentCommand(ORIGIN, "cvj_x", JoinTokenKind.RELAY)).toBe(`cvlan-relay up --controller https://ctl.example:8444 --controller-ca cloudvlan-root.pem --token cvj_x`);
  });
});
