import { useMutation, useQuery } from "@connectrpc/connect-query";
import { useState } from "react";
import { RegionService } from "../../../gen/ts/cloudvlan/v1/region_pb";
import { RelayService } from "../../../gen/ts/cloudvlan/v1/relay_pb";
import { pick, violationsOf, type FieldErrors } from "../api/errors";
import { formatBytes, relativeTime } from "../api/format";
import { nameMap, useRegions, useRelays } from "../api/hooks";
import { RelayStatusBadge } from "../components/badges";
import { ConfirmButton, Dialog, Field, FormErrors, MutationError, PageHeader, QueryView, splitList } from "../components/ui";

/** RelaysPage lists relays with their live statistics (refreshed by the event stream). */
export function RelaysPage() {
  const list = useQuery(RelayService.method.listRelays, { pageSize: 1000 });
  const regions = nameMap(useRegions().data?.regions);
  const del = useMutation(RelayService.method.deleteRelay);
  const [open, setOpen] = useState(false);
  return (
    <>
      <PageHeader
        title="Relays"
        description="Relays carry WireGuard traffic between nodes that cannot reach each other directly. Statistics update live."
        actions={<button type="button" className="btn btn-primary" onClick={() => setOpen(true)}>Create relay</button>}
      />
      <MutationError error={del.error} />
      <QueryView query={list} isEmpty={(d) => d.relays.length === 0} empty="No relays. Nodes can then only talk directly.">
        {(d) => (
          <table className="table">
            <caption className="sr-only">Relays</caption>
            <thead>
              <tr>
                <th scope="col">Relay</th><th scope="col">Status</th><th scope="col">Region</th><th scope="col">Clients</th>
                <th scope="col">Forwarded</th><th scope="col">Packets</th><th scope="col">Drops</th><th scope="col">Mesh peers</th>
                <th scope="col">Updated</th><th scope="col"><span className="sr-only">Actions</span></th>
              </tr>
            </thead>
            <tbody>
              {d.relays.map((r) => {
                const drops = Object.entries(r.stats?.drops ?? {});
                return (
                  <tr key={r.id}>
                    <td><strong>{r.name}</strong><div className="muted small">{r.hostname} {r.version && `· ${r.version}`}</div></td>
                    <td><RelayStatusBadge status={r.status} /></td>
                    <td>{regions.get(r.regionId) ?? "—"}</td>
                    <td>{r.stats?.connectedClients ?? 0}</td>
                    <td>{formatBytes(r.stats?.bytesForwarded ?? 0n)}</td>
                    <td>{(r.stats?.packetsForwarded ?? 0n).toLocaleString()}</td>
                    <td title={drops.map(([k, v]) => `${k}: ${v}`).join(", ")}>{drops.reduce((a, [, v]) => a + v, 0n).toLocaleString()}</td>
                    <td>{r.stats?.meshPeers ?? 0}</td>
                    <td>{relativeTime(r.stats?.updateTime ?? r.lastSeenTime)}</td>
                    <td className="row-actions"><ConfirmButton label="Delete" danger onConfirm={() => del.mutate({ id: r.id, etag: r.etag })} /></td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        )}
      </QueryView>
      <CreateRelayDialog open={open} onClose={() => setOpen(false)} />
      <Regions />
    </>
  );
}

/** Regions lists the deployment's regions (relays and vrouters are placed in one). */
function Regions() {
  const regions = useRegions();
  const relays = useRelays();
  const del = useMutation(RegionService.method.deleteRegion);
  const [f, setF] = useState({ name: "", code: "" });
  const [errors, setErrors] = useState<FieldErrors>({});
  const create = useMutation(RegionService.method.createRegion, {
    onSuccess: () => {
      setF({ name: "", code: "" });
      setErrors({});
    },
    onError: (e) => setErrors(violationsOf(e, "region.")),
  });
  return (
    <section className="panel" aria-labelledby="regions">
      <h2 id="regions">Regions</h2>
      <MutationError error={del.error} />
      <QueryView query={regions} isEmpty={(d) => d.regions.length === 0} empty="No regions yet: create one before adding relays or vrouters.">
        {(d) => (
          <table className="table">
            <thead>
              <tr><th scope="col">Region</th><th scope="col">Code</th><th scope="col">Relays</th><th scope="col"><span className="sr-only">Actions</span></th></tr>
            </thead>
            <tbody>
              {d.regions.map((r) => (
                <tr key={r.id}>
                  <td><strong>{r.name}</strong>{r.description && <div className="muted small">{r.description}</div>}</td>
                  <td><code>{r.code}</code></td>
                  <td>{relays.data ? relays.data.relays.filter((x) => x.regionId === r.id).length : "…"}</td>
                  <td className="row-actions"><ConfirmButton label="Delete" danger onConfirm={() => del.mutate({ id: r.id, etag: r.etag })} /></td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </QueryView>
      <form
        className="inline-form"
        aria-label="Create region"
        onSubmit={(e) => {
          e.preventDefault();
          setErrors({});
          create.mutate({ region: { name: f.name.trim(), code: f.code.trim() } });
        }}
      >
        <Field label="Region name" errors={pick(errors, "name")}>
          {(p) => <input {...p} value={f.name} onChange={(e) => setF({ ...f, name: e.target.value })} placeholder="eu-west" />}
        </Field>
        <Field label="Code" errors={pick(errors, "code")}>
          {(p) => <input {...p} value={f.code} onChange={(e) => setF({ ...f, code: e.target.value })} placeholder="ams" />}
        </Field>
        <button type="submit" className="btn" disabled={create.isPending || !f.name.trim()}>
          Create region
        </button>
      </form>
      <FormErrors errors={errors} placed={["name", "code"]} error={create.error} />
    </section>
  );
}

function CreateRelayDialog(props: { open: boolean; onClose: () => void }) {
  const regions = useRegions();
  const [f, setF] = useState({ name: "", regionId: "", hostname: "", addresses: "", stunAddress: "" });
  const [errors, setErrors] = useState<FieldErrors>({});
  const done = () => {
    setF({ name: "", regionId: "", hostname: "", addresses: "", stunAddress: "" });
    setErrors({});
    create.reset();
    props.onClose();
  };
  const create = useMutation(RelayService.method.createRelay, { onSuccess: done, onError: (e) => setErrors(violationsOf(e, "relay.")) });
  const regionId = f.regionId || regions.data?.regions[0]?.id || "";
  return (
    <Dialog open={props.open} title="Create relay" onClose={done}>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          setErrors({});
          create.mutate({ relay: { name: f.name.trim(), regionId, hostname: f.hostname.trim(), addresses: splitList(f.addresses), stunAddress: f.stunAddress.trim() } });
        }}
      >
        <Field label="Name" errors={pick(errors, "name")}>{(p) => <input {...p} value={f.name} onChange={(e) => setF({ ...f, name: e.target.value })} autoFocus />}</Field>
        <Field label="Region" errors={pick(errors, "region_id")}>
          {(p) => (
            <select {...p} value={regionId} onChange={(e) => setF({ ...f, regionId: e.target.value })}>
              {regions.data?.regions.length === 0 && <option value="">No region defined</option>}
              {regions.data?.regions.map((r) => <option key={r.id} value={r.id}>{r.name}</option>)}
            </select>
          )}
        </Field>
        <Field label="Hostname" errors={pick(errors, "hostname")} hint="The name in the relay's TLS certificate.">
          {(p) => <input {...p} value={f.hostname} onChange={(e) => setF({ ...f, hostname: e.target.value })} />}
        </Field>
        <Field label="Addresses" errors={pick(errors, "addresses")} hint="host:port, comma separated.">
          {(p) => <input {...p} value={f.addresses} onChange={(e) => setF({ ...f, addresses: e.target.value })} />}
        </Field>
        <Field label="STUN address" errors={pick(errors, "stun_address")}>
          {(p) => <input {...p} value={f.stunAddress} onChange={(e) => setF({ ...f, stunAddress: e.target.value })} />}
        </Field>
        <FormErrors errors={errors} placed={["name", "region_id", "hostname", "addresses", "stun_address"]} error={create.error} />
        <div className="dialog-actions">
          <button type="button" className="btn" onClick={done}>Cancel</button>
          <button type="submit" className="btn btn-primary" disabled={create.isPending}>Create</button>
        </div>
      </form>
    </Dialog>
  );
}
