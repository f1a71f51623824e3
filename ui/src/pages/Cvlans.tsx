import { useMutation, useQuery } from "@connectrpc/connect-query";
import { useState } from "react";
import { Link } from "react-router";
import { CvlanService, type Cvlan } from "../../../gen/ts/cloudvlan/v1/cvlan_pb";
import { pick, violationsOf, type FieldErrors } from "../api/errors";
import { formatTime } from "../api/format";
import { ConfirmButton, Dialog, Field, FormErrors, MutationError, PageHeader, QueryView, splitList } from "../components/ui";

/** CvlansPage lists the tenant's overlay networks and creates new ones. */
export function CvlansPage() {
  const list = useQuery(CvlanService.method.listCvlans, { pageSize: 1000 });
  const del = useMutation(CvlanService.method.deleteCvlan);
  const [creating, setCreating] = useState(false);
  return (
    <>
      <PageHeader
        title="Cvlans"
        description="Overlay networks: each node belongs to one cvlan and gets stable addresses from its ranges."
        actions={
          <button type="button" className="btn btn-primary" onClick={() => setCreating(true)}>
            Create cvlan
          </button>
        }
      />
      <MutationError error={del.error} />
      <QueryView query={list} isEmpty={(d) => d.cvlans.length === 0} empty="No cvlans yet. Create one to enroll nodes into it.">
        {(d) => (
          <table className="table">
            <caption className="sr-only">Cvlans</caption>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">IPv4</th>
                <th scope="col">IPv6</th>
                <th scope="col">DNS domain</th>
                <th scope="col">Nodes</th>
                <th scope="col">Created</th>
                <th scope="col">
                  <span className="sr-only">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {d.cvlans.map((c) => (
                <tr key={c.id}>
                  <td>
                    <strong>{c.name}</strong>
                    {c.description && <div className="muted small">{c.description}</div>}
                  </td>
                  <td><code>{c.ipv4Cidr}</code></td>
                  <td><code>{c.ipv6Cidr}</code></td>
                  <td>{c.dnsDomain || <span className="muted">default</span>}</td>
                  <td><CvlanNodes cvlan={c} /></td>
                  <td>{formatTime(c.createTime)}</td>
                  <td className="row-actions">
                    <ConfirmButton label="Delete" danger onConfirm={() => del.mutate({ id: c.id, etag: c.etag })} />
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </QueryView>
      <CreateCvlanDialog open={creating} onClose={() => setCreating(false)} />
    </>
  );
}

function CvlanNodes(props: { cvlan: Cvlan }) {
  const stats = useQuery(CvlanService.method.getCvlanStats, { id: props.cvlan.id });
  if (stats.isPending) return <span className="muted">…</span>;
  if (stats.isError || !stats.data.stats) return <span className="muted">—</span>;
  const s = stats.data.stats;
  return (
    <Link to={`/nodes?cvlan=${props.cvlan.id}`}>
      {s.nodesOnline} online / {s.nodesTotal}
    </Link>
  );
}

function CreateCvlanDialog(props: { open: boolean; onClose: () => void }) {
  const [form, setForm] = useState({ name: "", description: "", ipv4Cidr: "", ipv6Cidr: "", dnsDomain: "", dnsNameservers: "" });
  const [errors, setErrors] = useState<FieldErrors>({});
  const create = useMutation(CvlanService.method.createCvlan, {
    onSuccess: () => {
      setForm({ name: "", description: "", ipv4Cidr: "", ipv6Cidr: "", dnsDomain: "", dnsNameservers: "" });
      props.onClose();
    },
    onError: (err) => setErrors(violationsOf(err, "cvlan.")),
  });
  const set = (k: keyof typeof form) => (e: React.ChangeEvent<HTMLInputElement>) => setForm({ ...form, [k]: e.target.value });
  const close = () => {
    setErrors({});
    create.reset();
    props.onClose();
  };
  return (
    <Dialog open={props.open} title="Create cvlan" onClose={close}>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          setErrors({});
          create.mutate({
            cvlan: {
              name: form.name.trim(),
              description: form.description,
              ipv4Cidr: form.ipv4Cidr.trim(),
              ipv6Cidr: form.ipv6Cidr.trim(),
              dnsDomain: form.dnsDomain.trim(),
              dnsNameservers: splitList(form.dnsNameservers),
            },
          });
        }}
      >
        <Field label="Name" errors={pick(errors, "name")} hint="A DNS label: lowercase letters, digits and '-'.">
          {(p) => <input {...p} name="name" value={form.name} onChange={set("name")} required autoFocus />}
        </Field>
        <Field label="Description" errors={pick(errors, "description")}>
          {(p) => <input {...p} name="description" value={form.description} onChange={set("description")} />}
        </Field>
        <div className="row">
          <Field label="IPv4 range" errors={pick(errors, "ipv4_cidr")} hint="Empty means 100.64.0.0/10.">
            {(p) => <input {...p} name="ipv4" value={form.ipv4Cidr} onChange={set("ipv4Cidr")} placeholder="100.64.0.0/10" />}
          </Field>
          <Field label="IPv6 range" errors={pick(errors, "ipv6_cidr")} hint="Empty means a random ULA /48.">
            {(p) => <input {...p} name="ipv6" value={form.ipv6Cidr} onChange={set("ipv6Cidr")} placeholder="fd7a:…::/48" />}
          </Field>
        </div>
        <Field label="DNS domain" errors={pick(errors, "dns_domain")} hint="Empty means <cvlan>.<tenant domain>.">
          {(p) => <input {...p} name="dns" value={form.dnsDomain} onChange={set("dnsDomain")} />}
        </Field>
        <Field label="Upstream nameservers" errors={pick(errors, "dns_nameservers")} hint="IP addresses, separated by commas or spaces.">
          {(p) => <input {...p} name="nameservers" value={form.dnsNameservers} onChange={set("dnsNameservers")} />}
        </Field>
        <FormErrors errors={errors} placed={["name", "description", "ipv4_cidr", "ipv6_cidr", "dns_domain", "dns_nameservers"]} error={create.error} />
        <div className="dialog-actions">
          <button type="button" className="btn" onClick={close}>Cancel</button>
          <button type="submit" className="btn btn-primary" disabled={create.isPending}>
            {create.isPending ? "Creating…" : "Create"}
          </button>
        </div>
      </form>
    </Dialog>
  );
}
