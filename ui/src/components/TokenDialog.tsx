import { useMutation, useQuery } from "@connectrpc/connect-query";
import { useState } from "react";
import { JoinTokenKind, JoinTokenService, type CreateJoinTokenResponse } from "../../../gen/ts/cloudvlan/v1/join_token_pb";
import { RelayService } from "../../../gen/ts/cloudvlan/v1/relay_pb";
import { VRouterService } from "../../../gen/ts/cloudvlan/v1/vrouter_pb";
import { pick, violationsOf, type FieldErrors } from "../api/errors";
import { useCvlans } from "../api/hooks";
import { CopyButton, Dialog, Field, FormErrors, splitList } from "./ui";

/** TTL choices for a join token, in seconds (the server allows 1 minute to 30 days). */
export const TTL_CHOICES: { seconds: number; label: string }[] = [
  { seconds: 900, label: "15 minutes" },
  { seconds: 3600, label: "1 hour" },
  { seconds: 86400, label: "1 day" },
  { seconds: 7 * 86400, label: "7 days" },
  { seconds: 30 * 86400, label: "30 days" },
];

/** agentCommand is the command line that enrolls a machine with a token. */
/** NODE_PORT is the controller's default node port (enrollment and the mTLS control plane). */
export const NODE_PORT = "8444";

/** ROOT_CA_PATH is where the API port serves the root CA certificate that nodes verify the controller with. */
export const ROOT_CA_PATH = "/ca/root.pem";

/**
 * agentCommand is the command that enrolls a machine: it talks to the node port of the controller
 * serving this page and verifies it with the root CA downloaded from this page (next to the command).
 */
export function agentCommand(origin: string, secret: string, kind: JoinTokenKind = JoinTokenKind.NODE): string {
  const bin = kind === JoinTokenKind.RELAY ? "cvlan-relay" : kind === JoinTokenKind.VROUTER ? "cvlan-vrouter" : "cvlan-agent";
  const u = new URL(origin);
  u.port = NODE_PORT;
  const node = `${u.protocol}//${u.host}`;
  return `${bin} up --controller ${node} --controller-ca cloudvlan-root.pem --token ${secret}`;
}

type Form = {
  kind: JoinTokenKind;
  cvlanId: string;
  targetId: string;
  name: string;
  description: string;
  reusable: boolean;
  maxUses: string;
  ephemeral: boolean;
  tags: string;
  ttl: number;
};

const initial: Form = {
  kind: JoinTokenKind.NODE,
  cvlanId: "",
  targetId: "",
  name: "",
  description: "",
  reusable: false,
  maxUses: "0",
  ephemeral: false,
  tags: "",
  ttl: 3600,
};

/**
 * TokenDialog creates a join token and shows its secret exactly once, with the command that
 * enrolls a machine. Closing the dialog forgets the secret.
 */
export function TokenDialog(props: { open: boolean; onClose: () => void; origin?: string }) {
  const origin = props.origin ?? window.location.origin;
  const [form, setForm] = useState<Form>(initial);
  const [errors, setErrors] = useState<FieldErrors>({});
  const [created, setCreated] = useState<CreateJoinTokenResponse | null>(null);
  const cvlans = useCvlans();
  const relays = useQuery(RelayService.method.listRelays, { pageSize: 1000 }, { enabled: props.open && form.kind === JoinTokenKind.RELAY });
  const vrouters = useQuery(VRouterService.method.listVRouters, { pageSize: 1000 }, { enabled: props.open && form.kind === JoinTokenKind.VROUTER });
  const create = useMutation(JoinTokenService.method.createJoinToken, {
    onSuccess: (res) => setCreated(res),
    onError: (err) => setErrors(violationsOf(err, "join_token.")),
  });

  const close = () => {
    setCreated(null);
    setForm(initial);
    setErrors({});
    create.reset();
    props.onClose();
  };
  const cvlanId = form.cvlanId || cvlans.data?.cvlans[0]?.id || "";

  if (created) {
    const cmd = agentCommand(origin, created.secret, created.joinToken?.kind);
    return (
      <Dialog open={props.open} title="Join token created" onClose={close} wide>
        <p className="notice" role="status">
          Copy the secret now: it is shown only once and cannot be retrieved later.
        </p>
        <Field label="Secret">
          {(p) => (
            <div className="copy-row">
              <input {...p} readOnly value={created.secret} className="mono" onFocus={(e) => e.currentTarget.select()} />
              <CopyButton text={created.secret} label="Copy secret" />
            </div>
          )}
        </Field>
        <p className="hint">
          First save the controller's root CA on the machine as <code>cloudvlan-root.pem</code>:{" "}
          <a href={ROOT_CA_PATH} download="cloudvlan-root.pem">
            download the root CA
          </a>
          . The agent verifies the controller with it before sending the token.
        </p>
        <Field label="Run on the machine to enroll" hint="Enrolls the machine into the cvlan with this token.">
          {(p) => (
            <div className="copy-row">
              <textarea {...p} readOnly value={cmd} className="mono" rows={3} onFocus={(e) => e.currentTarget.select()} />
              <CopyButton text={cmd} label="Copy command" />
            </div>
          )}
        </Field>
        <div className="dialog-actions">
          <button type="button" className="btn btn-primary" onClick={close}>
            Done
          </button>
        </div>
      </Dialog>
    );
  }

  const set = <K extends keyof Form>(k: K, v: Form[K]) => setForm((f) => ({ ...f, [k]: v }));
  const placed = ["kind", "cvlan_id", "target_id", "name", "description", "reusable", "max_uses", "ephemeral", "tags", "ttl"];
  return (
    <Dialog open={props.open} title="Create join token" onClose={close}>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          setErrors({});
          create.mutate({
            joinToken: {
              kind: form.kind,
              cvlanId: form.kind === JoinTokenKind.NODE ? cvlanId : "",
              targetId: form.kind === JoinTokenKind.NODE ? "" : form.targetId,
              name: form.name.trim(),
              description: form.description,
              reusable: form.reusable,
              maxUses: form.reusable ? Number(form.maxUses) || 0 : 0,
              ephemeral: form.ephemeral,
              tags: splitList(form.tags),
            },
            ttl: { seconds: BigInt(form.ttl) },
          });
        }}
      >
        <Field label="Enrolls" errors={pick(errors, "kind")}>
          {(p) => (
            <select {...p} value={form.kind} onChange={(e) => set("kind", Number(e.target.value) as JoinTokenKind)}>
              <option value={JoinTokenKind.NODE}>A node (cvlan-agent)</option>
              <option value={JoinTokenKind.RELAY}>A relay</option>
              <option value={JoinTokenKind.VROUTER}>A vrouter</option>
            </select>
          )}
        </Field>
        {form.kind === JoinTokenKind.NODE ? (
          <Field label="Cvlan" errors={pick(errors, "cvlan_id")}>
            {(p) => (
              <select {...p} value={cvlanId} onChange={(e) => set("cvlanId", e.target.value)} required>
                {cvlans.data?.cvlans.length === 0 && <option value="">No cvlan: create one first</option>}
                {cvlans.data?.cvlans.map((c) => (
                  <option key={c.id} value={c.id}>
                    {c.name}
                  </option>
                ))}
              </select>
            )}
          </Field>
        ) : (
          <Field label={form.kind === JoinTokenKind.RELAY ? "Relay" : "VRouter"} errors={pick(errors, "target_id")}>
            {(p) => (
              <select {...p} value={form.targetId} onChange={(e) => set("targetId", e.target.value)} required>
                <option value="">Choose…</option>
                {(form.kind === JoinTokenKind.RELAY ? relays.data?.relays : vrouters.data?.vrouters)?.map((t) => (
                  <option key={t.id} value={t.id}>
                    {t.name}
                  </option>
                ))}
              </select>
            )}
          </Field>
        )}
        <Field label="Name" errors={pick(errors, "name")} hint="Optional, to recognise the token in lists (a DNS label).">
          {(p) => <input {...p} value={form.name} onChange={(e) => set("name", e.target.value)} />}
        </Field>
        <Field label="Valid for" errors={pick(errors, "ttl")}>
          {(p) => (
            <select {...p} value={form.ttl} onChange={(e) => set("ttl", Number(e.target.value))}>
              {TTL_CHOICES.map((c) => (
                <option key={c.seconds} value={c.seconds}>
                  {c.label}
                </option>
              ))}
            </select>
          )}
        </Field>
        <Field label="Tags for enrolled nodes" errors={pick(errors, "tags")} hint="Tag names separated by commas.">
          {(p) => <input {...p} value={form.tags} onChange={(e) => set("tags", e.target.value)} />}
        </Field>
        <fieldset className="options">
          <legend>Options</legend>
          <label className="check">
            <input type="checkbox" checked={form.reusable} onChange={(e) => set("reusable", e.target.checked)} />
            Reusable (more than one machine)
          </label>
          {form.reusable && (
            <Field label="Maximum uses" errors={pick(errors, "max_uses")} hint="0 means unlimited until it expires.">
              {(p) => <input {...p} type="number" min={0} value={form.maxUses} onChange={(e) => set("maxUses", e.target.value)} />}
            </Field>
          )}
          <label className="check">
            <input type="checkbox" checked={form.ephemeral} onChange={(e) => set("ephemeral", e.target.checked)} />
            Ephemeral nodes (deleted when offline, for CI runners and containers)
          </label>
        </fieldset>
        <FormErrors errors={errors} placed={placed} error={create.error} />
        <div className="dialog-actions">
          <button type="button" className="btn" onClick={close}>
            Cancel
          </button>
          <button type="submit" className="btn btn-primary" disabled={create.isPending}>
            {create.isPending ? "Creating…" : "Create token"}
          </button>
        </div>
      </form>
    </Dialog>
  );
}
