import { useMutation, useQuery } from "@connectrpc/connect-query";
import { Fragment, useState } from "react";
import { IkeVersion, IkeVersionSchema, VRouterService, type VRouter, type VRouterConnection } from "../../../gen/ts/cloudvlan/v1/vrouter_pb";
import { pick, violationsOf, type FieldErrors } from "../api/errors";
import { enumLabel, enumOptions, formatBytes, relativeTime } from "../api/format";
import { nameMap, useCvlans, useRegions } from "../api/hooks";
import { ConnectionStatusBadge, VRouterStatusBadge } from "../components/badges";
import { ConfirmButton, Dialog, Empty, Field, FormErrors, MutationError, PageHeader, QueryView, splitList } from "../components/ui";

/** VRoutersPage lists IPsec concentrators and their connections to legacy devices. */
export function VRoutersPage() {
  const list = useQuery(VRouterService.method.listVRouters, { pageSize: 1000 });
  const cvlans = nameMap(useCvlans().data?.cvlans);
  const regions = nameMap(useRegions().data?.regions);
  const del = useMutation(VRouterService.method.deleteVRouter);
  const [open, setOpen] = useState(false);
  const [expanded, setExpanded] = useState<string | null>(null);
  return (
    <>
      <PageHeader
        title="VRouters"
        description="Mesh nodes that also terminate IPsec from devices that cannot run the agent."
        actions={<button type="button" className="btn btn-primary" onClick={() => setOpen(true)}>Create vrouter</button>}
      />
      <MutationError error={del.error} />
      <QueryView query={list} isEmpty={(d) => d.vrouters.length === 0} empty="No vrouters.">
        {(d) => (
          <table className="table">
            <caption className="sr-only">VRouters</caption>
            <thead>
              <tr>
                <th scope="col">VRouter</th><th scope="col">Status</th><th scope="col">Cvlan</th><th scope="col">Region</th>
                <th scope="col">Connections up</th><th scope="col">Traffic in / out</th><th scope="col">Last seen</th><th scope="col"><span className="sr-only">Actions</span></th>
              </tr>
            </thead>
            <tbody>
              {d.vrouters.map((v) => (
                <Fragment key={v.id}>
                  <tr>
                    <td><strong>{v.name}</strong><div className="muted small">{v.publicAddress}</div></td>
                    <td><VRouterStatusBadge status={v.status} /></td>
                    <td>{cvlans.get(v.cvlanId) ?? "—"}</td>
                    <td>{regions.get(v.regionId) ?? "—"}</td>
                    <td>{v.stats?.connectionsUp ?? 0} / {v.connections.length}</td>
                    <td>{formatBytes(v.stats?.bytesIn ?? 0n)} / {formatBytes(v.stats?.bytesOut ?? 0n)}</td>
                    <td>{relativeTime(v.lastSeenTime)}</td>
                    <td className="row-actions">
                      <button
                        type="button"
                        className="btn btn-small"
                        aria-expanded={expanded === v.id}
                        aria-controls={`conn-${v.id}`}
                        onClick={() => setExpanded(expanded === v.id ? null : v.id)}
                      >
                        {expanded === v.id ? "Hide" : "Show"} connections
                      </button>
                      <ConfirmButton label="Delete" danger onConfirm={() => del.mutate({ id: v.id, etag: v.etag })} />
                    </td>
                  </tr>
                  {expanded === v.id && (
                    <tr id={`conn-${v.id}`}>
                      <td colSpan={8}>
                        <ConnectionsEditor vrouter={v} />
                        {v.connections.length === 0 ? (
                          <Empty>No IPsec connections configured.</Empty>
                        ) : (
                          <table className="table nested">
                            <caption>Connections of {v.name}</caption>
                            <thead>
                              <tr>
                                <th scope="col">Name</th><th scope="col">Remote</th><th scope="col">Subnets (local ⇄ remote)</th>
                                <th scope="col">IKE</th><th scope="col">Status</th><th scope="col">In / out</th><th scope="col">Changed</th>
                                <th scope="col"><span className="sr-only">Actions</span></th>
                              </tr>
                            </thead>
                            <tbody>
                              {v.connections.map((c) => (
                                <tr key={c.name}>
                                  <td>{c.name}</td>
                                  <td><code>{c.remoteAddress}</code></td>
                                  <td className="small">{c.localSubnets.join(", ")} ⇄ {c.remoteSubnets.join(", ")}</td>
                                  <td>{enumLabel(IkeVersionSchema, c.ikeVersion)}</td>
                                  <td><ConnectionStatusBadge status={c.status} />{c.error && <div className="field-error small">{c.error}</div>}</td>
                                  <td>{formatBytes(c.bytesIn)} / {formatBytes(c.bytesOut)}</td>
                                  <td>{relativeTime(c.lastChangeTime)}</td>
                                  <td className="row-actions">
                                    <RemoveConnection vrouter={v} name={c.name} />
                                  </td>
                                </tr>
                              ))}
                            </tbody>
                          </table>
                        )}
                      </td>
                    </tr>
                  )}
                </Fragment>
              ))}
            </tbody>
          </table>
        )}
      </QueryView>
      <CreateVRouterDialog open={open} onClose={() => setOpen(false)} />
    </>
  );
}

function CreateVRouterDialog(props: { open: boolean; onClose: () => void }) {
  const regions = useRegions();
  const cvlans = useCvlans();
  const [f, setF] = useState({ name: "", regionId: "", cvlanId: "" });
  const [errors, setErrors] = useState<FieldErrors>({});
  const done = () => {
    setF({ name: "", regionId: "", cvlanId: "" });
    setErrors({});
    create.reset();
    props.onClose();
  };
  const create = useMutation(VRouterService.method.createVRouter, { onSuccess: done, onError: (e) => setErrors(violationsOf(e, "vrouter.")) });
  const regionId = f.regionId || regions.data?.regions[0]?.id || "";
  const cvlanId = f.cvlanId || cvlans.data?.cvlans[0]?.id || "";
  return (
    <Dialog open={props.open} title="Create vrouter" onClose={done}>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          setErrors({});
          create.mutate({ vrouter: { name: f.name.trim(), regionId, cvlanId } });
        }}
      >
        <Field label="Name" errors={pick(errors, "name")}>{(p) => <input {...p} value={f.name} onChange={(e) => setF({ ...f, name: e.target.value })} autoFocus />}</Field>
        <Field label="Region" errors={pick(errors, "region_id")}>
          {(p) => (
            <select {...p} value={regionId} onChange={(e) => setF({ ...f, regionId: e.target.value })}>
              {regions.data?.regions.map((r) => <option key={r.id} value={r.id}>{r.name}</option>)}
            </select>
          )}
        </Field>
        <Field label="Cvlan" errors={pick(errors, "cvlan_id")}>
          {(p) => (
            <select {...p} value={cvlanId} onChange={(e) => setF({ ...f, cvlanId: e.target.value })}>
              {cvlans.data?.cvlans.map((c) => <option key={c.id} value={c.id}>{c.name}</option>)}
            </select>
          )}
        </Field>
        <FormErrors errors={errors} placed={["name", "region_id", "cvlan_id"]} error={create.error} />
        <div className="dialog-actions">
          <button type="button" className="btn" onClick={done}>Cancel</button>
          <button type="submit" className="btn btn-primary" disabled={create.isPending}>Create</button>
        </div>
      </form>
    </Dialog>
  );
}

// keep copies a connection for an update: only its configuration (the key stays empty, which
// keeps the stored one).
function keep(c: VRouterConnection) {
  return {
    name: c.name,
    remoteAddress: c.remoteAddress,
    localSubnets: c.localSubnets,
    remoteSubnets: c.remoteSubnets,
    ikeVersion: c.ikeVersion,
    remoteId: c.remoteId,
    ikeProposal: c.ikeProposal,
    espProposal: c.espProposal,
  };
}

function RemoveConnection(props: { vrouter: VRouter; name: string }) {
  const update = useMutation(VRouterService.method.updateVRouter);
  const v = props.vrouter;
  return (
    <>
      <ConfirmButton
        label="Remove"
        danger
        onConfirm={() =>
          update.mutate({
            vrouter: { id: v.id, etag: v.etag, connections: v.connections.filter((c) => c.name !== props.name).map(keep) },
            updateMask: { paths: ["connections"] },
          })
        }
      />
      <MutationError error={update.error} />
    </>
  );
}

const emptyConn = { name: "", remoteAddress: "", localSubnets: "", remoteSubnets: "", ikeVersion: IkeVersion.IKEV2, psk: "" };

/** ConnectionsEditor adds an IPsec connection to a vrouter (UpdateVRouter on "connections"). */
function ConnectionsEditor({ vrouter: v }: { vrouter: VRouter }) {
  const [f, setF] = useState(emptyConn);
  const [errors, setErrors] = useState<FieldErrors>({});
  const update = useMutation(VRouterService.method.updateVRouter, {
    onSuccess: () => {
      setF(emptyConn);
      setErrors({});
    },
    onError: (e) => setErrors(violationsOf(e, "vrouter.")),
  });
  const n = v.connections.length;
  const at = (field: string) => pick(errors, `connections[${n}].${field}`);
  return (
    <details className="add-connection">
      <summary>Add a connection</summary>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          setErrors({});
          update.mutate({
            vrouter: {
              id: v.id,
              etag: v.etag,
              connections: [
                ...v.connections.map(keep),
                {
                  name: f.name.trim(),
                  remoteAddress: f.remoteAddress.trim(),
                  localSubnets: splitList(f.localSubnets),
                  remoteSubnets: splitList(f.remoteSubnets),
                  ikeVersion: f.ikeVersion,
                  preSharedKey: f.psk,
                },
              ],
            },
            updateMask: { paths: ["connections"] },
          });
        }}
      >
        <div className="row">
          <Field label="Connection name" errors={at("name")}>
            {(p) => <input {...p} value={f.name} onChange={(e) => setF({ ...f, name: e.target.value })} />}
          </Field>
          <Field label="Remote address" errors={at("remote_address")} hint="The device's public IP or name.">
            {(p) => <input {...p} value={f.remoteAddress} onChange={(e) => setF({ ...f, remoteAddress: e.target.value })} />}
          </Field>
          <Field label="IKE version" errors={at("ike_version")}>
            {(p) => (
              <select {...p} value={f.ikeVersion} onChange={(e) => setF({ ...f, ikeVersion: Number(e.target.value) as IkeVersion })}>
                {enumOptions(IkeVersionSchema).map((o) => <option key={o.value} value={o.value}>{o.label}</option>)}
              </select>
            )}
          </Field>
        </div>
        <div className="row">
          <Field label="Local subnets" errors={at("local_subnets")} hint="Mesh side, CIDRs separated by commas.">
            {(p) => <input {...p} value={f.localSubnets} onChange={(e) => setF({ ...f, localSubnets: e.target.value })} />}
          </Field>
          <Field label="Remote subnets" errors={at("remote_subnets")} hint="Behind the device.">
            {(p) => <input {...p} value={f.remoteSubnets} onChange={(e) => setF({ ...f, remoteSubnets: e.target.value })} />}
          </Field>
          <Field label="Pre-shared key" errors={at("pre_shared_key")} hint="16 to 256 characters; never shown again.">
            {(p) => <input {...p} type="password" autoComplete="new-password" value={f.psk} onChange={(e) => setF({ ...f, psk: e.target.value })} />}
          </Field>
        </div>
        <FormErrors
          errors={errors}
          placed={["name", "remote_address", "ike_version", "local_subnets", "remote_subnets", "pre_shared_key"].map((x) => `connections[${n}].${x}`)}
          error={update.error}
        />
        <button type="submit" className="btn btn-primary" disabled={update.isPending}>
          Add connection
        </button>
      </form>
    </details>
  );
}
