import { useMutation, useQuery } from "@connectrpc/connect-query";
import { useState } from "react";
import { JoinTokenKindSchema, JoinTokenService, JoinTokenStatus } from "../../../gen/ts/cloudvlan/v1/join_token_pb";
import { enumLabel, formatTime, relativeTime } from "../api/format";
import { nameMap, useCvlans } from "../api/hooks";
import { TokenStatusBadge } from "../components/badges";
import { TokenDialog } from "../components/TokenDialog";
import { Badge, ConfirmButton, MutationError, PageHeader, QueryView } from "../components/ui";

/** JoinTokensPage lists enrollment tokens and issues new ones. */
export function JoinTokensPage() {
  const list = useQuery(JoinTokenService.method.listJoinTokens, { pageSize: 200 });
  const cvlans = nameMap(useCvlans().data?.cvlans);
  const revoke = useMutation(JoinTokenService.method.revokeJoinToken);
  const del = useMutation(JoinTokenService.method.deleteJoinToken);
  const [open, setOpen] = useState(false);
  return (
    <>
      <PageHeader
        title="Join tokens"
        description="One-time secrets with which machines enroll. The secret is shown once, when the token is created."
        actions={
          <button type="button" className="btn btn-primary" onClick={() => setOpen(true)}>
            Create join token
          </button>
        }
      />
      <MutationError error={revoke.error ?? del.error} />
      <QueryView query={list} isEmpty={(d) => d.joinTokens.length === 0} empty="No join tokens yet.">
        {(d) => (
          <table className="table">
            <caption className="sr-only">Join tokens</caption>
            <thead>
              <tr>
                <th scope="col">Token</th><th scope="col">Status</th><th scope="col">Enrolls</th><th scope="col">Uses</th>
                <th scope="col">Options</th><th scope="col">Expires</th><th scope="col"><span className="sr-only">Actions</span></th>
              </tr>
            </thead>
            <tbody>
              {d.joinTokens.map((t) => (
                <tr key={t.id}>
                  <td>
                    <strong>{t.name || <span className="muted">unnamed</span>}</strong>
                    <div><code className="small">{t.prefix}…</code></div>
                  </td>
                  <td><TokenStatusBadge status={t.status} /></td>
                  <td>{enumLabel(JoinTokenKindSchema, t.kind)}{t.cvlanId && <> in {cvlans.get(t.cvlanId) ?? t.cvlanId}</>}</td>
                  <td>{t.useCount}{t.reusable ? ` / ${t.maxUses || "∞"}` : " / 1"}</td>
                  <td>
                    {t.reusable && <Badge tone="info">reusable</Badge>} {t.ephemeral && <Badge tone="info">ephemeral</Badge>}{" "}
                    {t.tags.map((g) => <Badge key={g} tone="neutral">{g}</Badge>)}
                  </td>
                  <td title={formatTime(t.expireTime)}>{relativeTime(t.expireTime)}</td>
                  <td className="row-actions">
                    {t.status === JoinTokenStatus.ACTIVE && (
                      <ConfirmButton label="Revoke" danger onConfirm={() => revoke.mutate({ id: t.id, etag: t.etag })} />
                    )}
                    <ConfirmButton label="Delete" danger onConfirm={() => del.mutate({ id: t.id, etag: t.etag })} />
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </QueryView>
      <TokenDialog open={open} onClose={() => setOpen(false)} />
    </>
  );
}
