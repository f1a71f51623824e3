import { useMutation, useQuery } from "@connectrpc/connect-query";
import { Fragment, useState } from "react";
import { IkeVersionSchema, VRouterService } from "../../../gen/ts/cloudvlan/v1/vrouter_pb";
import { pick, violationsOf, type FieldErrors } from "../api/errors";
import { enumLabel, formatBytes, relativeTime } from "../api/format";
import { nameMap, useCvlans, useRegions } from "../api/hooks";
import { ConnectionStatusBadge, VRouterStatusBadge } from "../components/badges";
import { ConfirmButton, Dialog, Empty, Field, FormErrors, MutationError, PageHeader, QueryView } from "../components/ui";

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
                        {v.connections.length === 0 ? (
                          <Empty>No IPsec connections configured.</Empty>
                        ) : (
                          <table className="table nested">
                            <caption>Connections of {v.name}</caption>
                            <thead>
                              <tr>
                                <th scope="col">Name</th><th scope="col">Remote</th><th scope="col">Subnets (local ⇄ remote)</th>
                                <th scope="col">IKE</th><th scope="col">Status</th><th scope="col">In / out</th><th scope="col">Changed</th>
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
