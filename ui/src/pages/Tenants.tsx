import { useMutation, useQuery } from "@connectrpc/connect-query";
import { useState } from "react";
import { TenantService, TenantStatus, TenantStatusSchema } from "../../../gen/ts/cloudvlan/v1/tenant_pb";
import { pick, violationsOf, type FieldErrors } from "../api/errors";
import { enumLabel, formatTime } from "../api/format";
import { Badge, ConfirmButton, Dialog, Field, FormErrors, MutationError, PageHeader, QueryView } from "../components/ui";

/** TenantsPage (super admins) lists and creates tenants. */
export function TenantsPage() {
  const list = useQuery(TenantService.method.listTenants, { pageSize: 1000 });
  const del = useMutation(TenantService.method.deleteTenant);
  const suspend = useMutation(TenantService.method.updateTenant);
  const [open, setOpen] = useState(false);
  return (
    <>
      <PageHeader
        title="Tenants"
        description="Isolated organisations sharing this deployment."
        actions={<button type="button" className="btn btn-primary" onClick={() => setOpen(true)}>Create tenant</button>}
      />
      <MutationError error={del.error ?? suspend.error} />
      <QueryView query={list} isEmpty={(d) => d.tenants.length === 0} empty="No tenants.">
        {(d) => (
          <table className="table">
            <caption className="sr-only">Tenants</caption>
            <thead>
              <tr><th scope="col">Tenant</th><th scope="col">Status</th><th scope="col">DNS domain</th><th scope="col">Node capacity</th><th scope="col">Created</th><th scope="col"><span className="sr-only">Actions</span></th></tr>
            </thead>
            <tbody>
              {d.tenants.map((t) => {
                const active = t.status === TenantStatus.ACTIVE;
                return (
                  <tr key={t.id}>
                    <td><strong>{t.displayName || t.name}</strong><div className="muted small">{t.name}</div></td>
                    <td><Badge tone={active ? "ok" : "warn"}>{enumLabel(TenantStatusSchema, t.status)}</Badge></td>
                    <td>{t.settings?.dnsDomain || "—"}</td>
                    <td>{t.capacity ? `${t.capacity.used} / ${t.capacity.limit || "∞"}` : "—"}</td>
                    <td>{formatTime(t.createTime)}</td>
                    <td className="row-actions">
                      <button
                        type="button"
                        className="btn btn-small"
                        onClick={() =>
                          suspend.mutate({ tenant: { id: t.id, etag: t.etag, status: active ? TenantStatus.SUSPENDED : TenantStatus.ACTIVE }, updateMask: { paths: ["status"] } })
                        }
                      >
                        {active ? "Suspend" : "Reactivate"}
                      </button>
                      <ConfirmButton label="Delete" danger onConfirm={() => del.mutate({ id: t.id, etag: t.etag })} />
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        )}
      </QueryView>
      <CreateTenantDialog open={open} onClose={() => setOpen(false)} />
    </>
  );
}

function CreateTenantDialog(props: { open: boolean; onClose: () => void }) {
  const [f, setF] = useState({ name: "", displayName: "", dnsDomain: "" });
  const [errors, setErrors] = useState<FieldErrors>({});
  const done = () => {
    setF({ name: "", displayName: "", dnsDomain: "" });
    setErrors({});
    create.reset();
    props.onClose();
  };
  const create = useMutation(TenantService.method.createTenant, { onSuccess: done, onError: (e) => setErrors(violationsOf(e, "tenant.")) });
  return (
    <Dialog open={props.open} title="Create tenant" onClose={done}>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          setErrors({});
          create.mutate({ tenant: { name: f.name.trim(), displayName: f.displayName, settings: f.dnsDomain ? { dnsDomain: f.dnsDomain.trim() } : undefined } });
        }}
      >
        <Field label="Name" errors={pick(errors, "name")} hint="A DNS label.">{(p) => <input {...p} value={f.name} onChange={(e) => setF({ ...f, name: e.target.value })} autoFocus />}</Field>
        <Field label="Display name" errors={pick(errors, "display_name")}>{(p) => <input {...p} value={f.displayName} onChange={(e) => setF({ ...f, displayName: e.target.value })} />}</Field>
        <Field label="DNS domain" errors={pick(errors, "settings.dns_domain")}>{(p) => <input {...p} value={f.dnsDomain} onChange={(e) => setF({ ...f, dnsDomain: e.target.value })} />}</Field>
        <FormErrors errors={errors} placed={["name", "display_name", "settings"]} error={create.error} />
        <div className="dialog-actions">
          <button type="button" className="btn" onClick={done}>Cancel</button>
          <button type="submit" className="btn btn-primary" disabled={create.isPending}>Create</button>
        </div>
      </form>
    </Dialog>
  );
}
