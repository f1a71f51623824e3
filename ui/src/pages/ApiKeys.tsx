import { useMutation, useQuery } from "@connectrpc/connect-query";
import { useState } from "react";
import { ApiKeyService, ApiKeyStatus, ApiKeyStatusSchema, ApiScope, ApiScopeSchema, type CreateApiKeyResponse } from "../../../gen/ts/cloudvlan/v1/api_key_pb";
import { UserRole, UserRoleSchema } from "../../../gen/ts/cloudvlan/v1/user_pb";
import { pick, violationsOf, type FieldErrors } from "../api/errors";
import { enumLabel, enumOptions, formatTime, relativeTime } from "../api/format";
import { Badge, ConfirmButton, CopyButton, Dialog, Field, FormErrors, MutationError, PageHeader, QueryView } from "../components/ui";

const KEY_TTLS = [
  { seconds: 0, label: "Never" },
  { seconds: 86400, label: "1 day" },
  { seconds: 30 * 86400, label: "30 days" },
  { seconds: 90 * 86400, label: "90 days" },
  { seconds: 365 * 86400, label: "1 year" },
];

/** ApiKeysPage lists API keys for scripts and issues new ones (secret shown once). */
export function ApiKeysPage() {
  const list = useQuery(ApiKeyService.method.listApiKeys, { pageSize: 1000 });
  const revoke = useMutation(ApiKeyService.method.revokeApiKey);
  const del = useMutation(ApiKeyService.method.deleteApiKey);
  const [open, setOpen] = useState(false);
  return (
    <>
      <PageHeader
        title="API keys"
        description="Keys for grpcurl, cvlanctl and scripts, sent as “Authorization: Bearer cvk_…”."
        actions={<button type="button" className="btn btn-primary" onClick={() => setOpen(true)}>Create API key</button>}
      />
      <MutationError error={revoke.error ?? del.error} />
      <QueryView query={list} isEmpty={(d) => d.apiKeys.length === 0} empty="No API keys.">
        {(d) => (
          <table className="table">
            <caption className="sr-only">API keys</caption>
            <thead>
              <tr>
                <th scope="col">Key</th><th scope="col">Role</th><th scope="col">Scopes</th><th scope="col">Status</th>
                <th scope="col">Last used</th><th scope="col">Expires</th><th scope="col"><span className="sr-only">Actions</span></th>
              </tr>
            </thead>
            <tbody>
              {d.apiKeys.map((k) => (
                <tr key={k.id}>
                  <td><strong>{k.name}</strong><div><code className="small">{k.prefix}…</code></div></td>
                  <td>{enumLabel(UserRoleSchema, k.role)}</td>
                  <td>{k.scopes.map((s) => <Badge key={s} tone="neutral">{enumLabel(ApiScopeSchema, s)}</Badge>)}</td>
                  <td><Badge tone={k.status === ApiKeyStatus.ACTIVE ? "ok" : k.status === ApiKeyStatus.REVOKED ? "bad" : "neutral"}>{enumLabel(ApiKeyStatusSchema, k.status)}</Badge></td>
                  <td>{relativeTime(k.lastUsedTime)}</td>
                  <td>{k.expireTime ? formatTime(k.expireTime) : "never"}</td>
                  <td className="row-actions">
                    {k.status === ApiKeyStatus.ACTIVE && <ConfirmButton label="Revoke" danger onConfirm={() => revoke.mutate({ id: k.id, etag: k.etag })} />}
                    <ConfirmButton label="Delete" danger onConfirm={() => del.mutate({ id: k.id, etag: k.etag })} />
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </QueryView>
      <CreateKeyDialog open={open} onClose={() => setOpen(false)} />
    </>
  );
}

function CreateKeyDialog(props: { open: boolean; onClose: () => void }) {
  const [name, setName] = useState("");
  const [role, setRole] = useState<UserRole>(UserRole.VIEWER);
  const [scopes, setScopes] = useState<ApiScope[]>([ApiScope.READ]);
  const [ttl, setTtl] = useState(90 * 86400);
  const [errors, setErrors] = useState<FieldErrors>({});
  const [created, setCreated] = useState<CreateApiKeyResponse | null>(null);
  const create = useMutation(ApiKeyService.method.createApiKey, { onSuccess: setCreated, onError: (e) => setErrors(violationsOf(e, "api_key.")) });
  const done = () => {
    setCreated(null);
    setName("");
    setErrors({});
    create.reset();
    props.onClose();
  };
  if (created) {
    return (
      <Dialog open={props.open} title="API key created" onClose={done}>
        <p className="notice" role="status">Copy the key now: it is shown only once.</p>
        <Field label="API key">
          {(p) => (
            <div className="copy-row">
              <input {...p} readOnly className="mono" value={created.secret} onFocus={(e) => e.currentTarget.select()} />
              <CopyButton text={created.secret} label="Copy API key" />
            </div>
          )}
        </Field>
        <div className="dialog-actions"><button type="button" className="btn btn-primary" onClick={done}>Done</button></div>
      </Dialog>
    );
  }
  return (
    <Dialog open={props.open} title="Create API key" onClose={done}>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          setErrors({});
          create.mutate({ apiKey: { name: name.trim(), role, scopes }, ttl: ttl ? { seconds: BigInt(ttl) } : undefined });
        }}
      >
        <Field label="Name" errors={pick(errors, "name")}>{(p) => <input {...p} value={name} onChange={(e) => setName(e.target.value)} autoFocus />}</Field>
        <Field label="Role" errors={pick(errors, "role")}>
          {(p) => (
            <select {...p} value={role} onChange={(e) => setRole(Number(e.target.value) as UserRole)}>
              {enumOptions(UserRoleSchema).map((o) => <option key={o.value} value={o.value}>{o.label}</option>)}
            </select>
          )}
        </Field>
        <fieldset className="options">
          <legend>Scopes</legend>
          {enumOptions(ApiScopeSchema).map((o) => (
            <label key={o.value} className="check">
              <input
                type="checkbox"
                checked={scopes.includes(o.value)}
                onChange={(e) => setScopes(e.target.checked ? [...scopes, o.value] : scopes.filter((s) => s !== o.value))}
              />
              {o.label}
            </label>
          ))}
          {pick(errors, "scopes") && <p className="field-error" role="alert">{pick(errors, "scopes")!.join("; ")}</p>}
        </fieldset>
        <Field label="Expires after" errors={pick(errors, "ttl")}>
          {(p) => (
            <select {...p} value={ttl} onChange={(e) => setTtl(Number(e.target.value))}>
              {KEY_TTLS.map((t) => <option key={t.seconds} value={t.seconds}>{t.label}</option>)}
            </select>
          )}
        </Field>
        <FormErrors errors={errors} placed={["name", "role", "scopes", "ttl"]} error={create.error} />
        <div className="dialog-actions">
          <button type="button" className="btn" onClick={done}>Cancel</button>
          <button type="submit" className="btn btn-primary" disabled={create.isPending}>Create</button>
        </div>
      </form>
    </Dialog>
  );
}
