import { useMutation, useQuery } from "@connectrpc/connect-query";
import { Link, useNavigate, useParams } from "react-router";
import { PolicyService } from "../../../gen/ts/cloudvlan/v1/policy_pb";
import { formatTime } from "../api/format";
import { nameMap, useCvlans } from "../api/hooks";
import { PolicyEditor } from "../components/PolicyEditor";
import { Badge, ConfirmButton, Empty, MutationError, PageHeader, QueryView } from "../components/ui";

/** PoliciesPage lists policies in evaluation order. */
export function PoliciesPage() {
  const list = useQuery(PolicyService.method.listPolicies, { pageSize: 1000 });
  const cvlans = nameMap(useCvlans().data?.cvlans);
  const del = useMutation(PolicyService.method.deletePolicy);
  return (
    <>
      <PageHeader
        title="Policies"
        description="The mesh denies by default: nodes reach each other only where a rule allows it."
        actions={
          <Link className="btn btn-primary" to="/policies/new">
            Create policy
          </Link>
        }
      />
      <MutationError error={del.error} />
      <QueryView query={list} isEmpty={(d) => d.policies.length === 0} empty="No policies: no node can reach another yet.">
        {(d) => (
          <table className="table">
            <caption className="sr-only">Policies in evaluation order</caption>
            <thead>
              <tr>
                <th scope="col">Priority</th><th scope="col">Name</th><th scope="col">Scope</th><th scope="col">Rules</th>
                <th scope="col">State</th><th scope="col">Updated</th><th scope="col"><span className="sr-only">Actions</span></th>
              </tr>
            </thead>
            <tbody>
              {d.policies.map((p) => (
                <tr key={p.id}>
                  <td>{p.priority}</td>
                  <td>
                    <Link to={`/policies/${p.id}`}><strong>{p.name}</strong></Link>
                    {p.description && <div className="muted small">{p.description}</div>}
                  </td>
                  <td>{p.cvlanId ? cvlans.get(p.cvlanId) ?? p.cvlanId : "every cvlan"}</td>
                  <td>{p.rules.length}</td>
                  <td>{p.enabled ? <Badge tone="ok">enabled</Badge> : <Badge tone="neutral">disabled</Badge>}</td>
                  <td>{formatTime(p.updateTime)}</td>
                  <td className="row-actions">
                    <ConfirmButton label="Delete" danger onConfirm={() => del.mutate({ id: p.id, etag: p.etag })} />
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </QueryView>
    </>
  );
}

/** PolicyEditPage creates (/policies/new) or edits (/policies/:id) a policy. */
export function PolicyEditPage() {
  const { id } = useParams();
  const navigate = useNavigate();
  const existing = useQuery(PolicyService.method.getPolicy, { id: id ?? "" }, { enabled: !!id, staleTime: Infinity });
  const header = (
    <PageHeader
      title={id ? "Edit policy" : "New policy"}
      actions={
        <Link className="btn" to="/policies">
          All policies
        </Link>
      }
    />
  );
  if (!id) {
    return (
      <>
        {header}
        <PolicyEditor onSaved={(p) => navigate(`/policies/${p.id}`, { replace: true })} />
      </>
    );
  }
  return (
    <>
      {header}
      <QueryView query={existing} loadingLabel="Loading policy…">
        {(d) => (d.policy ? <PolicyEditor key={d.policy.id} policy={d.policy} /> : <Empty>Policy not found.</Empty>)}
      </QueryView>
    </>
  );
}
