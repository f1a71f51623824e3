import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { useInfiniteQuery, useTransport } from "@connectrpc/connect-query";
import { useState } from "react";
import { ActorType, ActorTypeSchema, AuditLogService, ExportFormat } from "../../../gen/ts/cloudvlan/v1/audit_log_pb";
import { ResourceType, ResourceTypeSchema } from "../../../gen/ts/cloudvlan/v1/common_pb";
import { errorMessage } from "../api/errors";
import { enumLabel, enumOptions, formatTime, shortId } from "../api/format";
import { Empty, ErrorBanner, Loading, PageHeader } from "../components/ui";

type Filters = { actorType: ActorType; resourceType: ResourceType; action: string; from: string; to: string };

/** AuditLogPage lists every recorded change with filters, and exports them as JSON lines or CSV. */
export function AuditLogPage() {
  const [f, setF] = useState<Filters>({ actorType: ActorType.UNSPECIFIED, resourceType: ResourceType.UNSPECIFIED, action: "", from: "", to: "" });
  const filterInput = {
    actorType: f.actorType,
    resourceType: f.resourceType,
    action: f.action.trim(),
    startTime: f.from ? timestampFromDate(new Date(f.from)) : undefined,
    endTime: f.to ? timestampFromDate(new Date(f.to)) : undefined,
  };
  const logs = useInfiniteQuery(
    AuditLogService.method.listAuditLogs,
    { pageSize: 50, pageToken: "", ...filterInput },
    { pageParamKey: "pageToken", getNextPageParam: (l) => l.nextPageToken || undefined },
  );
  const transport = useTransport();
  const [exporting, setExporting] = useState<ExportFormat | null>(null);
  const [exportError, setExportError] = useState<string | null>(null);

  const doExport = async (format: ExportFormat) => {
    setExporting(format);
    setExportError(null);
    try {
      const chunks: Uint8Array[] = [];
      for await (const res of createClient(AuditLogService, transport).exportAuditLogs({ format, ...filterInput })) {
        chunks.push(res.data);
      }
      const csv = format === ExportFormat.CSV;
      const blob = new Blob(chunks as BlobPart[], { type: csv ? "text/csv" : "application/x-ndjson" });
      const a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = `cloudvlan-audit-${new Date().toISOString().slice(0, 19).replace(/:/g, "")}.${csv ? "csv" : "jsonl"}`;
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
    } catch (err) {
      setExportError(errorMessage(err));
    } finally {
      setExporting(null);
    }
  };

  const entries = logs.data?.pages.flatMap((p) => p.auditLogs) ?? [];
  return (
    <>
      <PageHeader
        title="Audit log"
        description="Every change, who made it and what it was before and after."
        actions={
          <>
            <button type="button" className="btn" disabled={exporting !== null} onClick={() => void doExport(ExportFormat.JSONL)}>
              {exporting === ExportFormat.JSONL ? "Exporting…" : "Export JSON lines"}
            </button>
            <button type="button" className="btn" disabled={exporting !== null} onClick={() => void doExport(ExportFormat.CSV)}>
              {exporting === ExportFormat.CSV ? "Exporting…" : "Export CSV"}
            </button>
          </>
        }
      />
      {exportError && <ErrorBanner error={exportError} title="Export failed" />}
      <form className="filters" role="search" aria-label="Filter the audit log" onSubmit={(e) => e.preventDefault()}>
        <label>
          Actor
          <select value={f.actorType} onChange={(e) => setF({ ...f, actorType: Number(e.target.value) as ActorType })}>
            <option value={ActorType.UNSPECIFIED}>Any</option>
            {enumOptions(ActorTypeSchema).map((o) => <option key={o.value} value={o.value}>{o.label}</option>)}
          </select>
        </label>
        <label>
          Resource
          <select value={f.resourceType} onChange={(e) => setF({ ...f, resourceType: Number(e.target.value) as ResourceType })}>
            <option value={ResourceType.UNSPECIFIED}>Any</option>
            {enumOptions(ResourceTypeSchema).map((o) => <option key={o.value} value={o.value}>{o.label}</option>)}
          </select>
        </label>
        <label>
          Action
          <input value={f.action} onChange={(e) => setF({ ...f, action: e.target.value })} placeholder="e.g. node.* or policy.create" />
        </label>
        <label>
          From
          <input type="datetime-local" value={f.from} onChange={(e) => setF({ ...f, from: e.target.value })} />
        </label>
        <label>
          To
          <input type="datetime-local" value={f.to} onChange={(e) => setF({ ...f, to: e.target.value })} />
        </label>
      </form>
      {logs.isPending ? (
        <Loading label="Loading the audit log…" />
      ) : logs.isError ? (
        <ErrorBanner error={logs.error} onRetry={() => void logs.refetch()} />
      ) : entries.length === 0 ? (
        <Empty>No entries match.</Empty>
      ) : (
        <>
          <table className="table audit">
            <caption className="sr-only">Audit log entries, newest first</caption>
            <thead>
              <tr><th scope="col">Time</th><th scope="col">Actor</th><th scope="col">Action</th><th scope="col">Resource</th><th scope="col">Details</th></tr>
            </thead>
            <tbody>
              {entries.map((a) => (
                <tr key={a.id}>
                  <td>{formatTime(a.eventTime)}</td>
                  <td>{a.actorName || "system"} <span className="muted small">({enumLabel(ActorTypeSchema, a.actorType)})</span></td>
                  <td><code>{a.action}</code></td>
                  <td>
                    {enumLabel(ResourceTypeSchema, a.resourceType)} <strong>{resourceName(a.after ?? a.before)}</strong>{" "}
                    <code className="small muted" title={a.resourceId}>
                      {shortId(a.resourceId)}
                    </code>
                  </td>
                  <td>
                    <details>
                      <summary>Show</summary>
                      <div className="small">
                        {a.procedure} · {a.peerAddress} · request {a.requestId}
                      </div>
                      <div className="diff">
                        <div><h4>Before</h4><pre>{a.before ? JSON.stringify(a.before, null, 2) : "—"}</pre></div>
                        <div><h4>After</h4><pre>{a.after ? JSON.stringify(a.after, null, 2) : "—"}</pre></div>
                      </div>
                    </details>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
          {logs.hasNextPage && (
            <button type="button" className="btn" onClick={() => void logs.fetchNextPage()} disabled={logs.isFetchingNextPage}>
              {logs.isFetchingNextPage ? "Loading…" : "Load older entries"}
            </button>
          )}
        </>
      )}
    </>
  );
}

/** resourceName reads the name recorded in an audit snapshot, when it has one. */
function resourceName(snapshot: { [k: string]: unknown } | undefined): string {
  const name = snapshot?.["name"];
  return typeof name === "string" ? name : "";
}
