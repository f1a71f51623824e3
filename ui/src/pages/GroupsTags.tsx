import { useMutation, useQuery } from "@connectrpc/connect-query";
import { useState } from "react";
import { GroupService, type Group } from "../../../gen/ts/cloudvlan/v1/group_pb";
import { TagService } from "../../../gen/ts/cloudvlan/v1/tag_pb";
import { pick, violationsOf, type FieldErrors } from "../api/errors";
import { nameMap, useAllNodes, useGroups } from "../api/hooks";
import { Badge, ConfirmButton, Dialog, Field, FormErrors, MutationError, PageHeader, QueryView, splitList } from "../components/ui";

/** GroupsTagsPage manages groups (of users and nodes) and tags (of nodes), the subjects of policies. */
export function GroupsTagsPage() {
  return (
    <>
      <PageHeader title="Groups and tags" description="Policies select nodes by group membership and by tag." />
      <div className="grid-2">
        <Groups />
        <Tags />
      </div>
    </>
  );
}

function Groups() {
  const groups = useQuery(GroupService.method.listGroups, { pageSize: 1000 });
  const del = useMutation(GroupService.method.deleteGroup);
  const [open, setOpen] = useState(false);
  return (
    <section className="panel" aria-labelledby="groups">
      <div className="panel-head">
        <h2 id="groups">Groups</h2>
        <button type="button" className="btn btn-small btn-primary" onClick={() => setOpen(true)}>
          Create group
        </button>
      </div>
      <MutationError error={del.error} />
      <QueryView query={groups} isEmpty={(d) => d.groups.length === 0} empty="No groups yet.">
        {(d) => (
          <ul className="cards-list">
            {d.groups.map((g) => (
              <li key={g.id} className="card">
                <div className="panel-head">
                  <div>
                    <strong>{g.name}</strong> <span className="muted small">{g.memberCount} members</span>
                    {g.description && <div className="muted small">{g.description}</div>}
                    {g.idpGroupNames.length > 0 && <div className="small">IdP groups: {g.idpGroupNames.join(", ")}</div>}
                  </div>
                  <ConfirmButton label="Delete" danger onConfirm={() => del.mutate({ id: g.id, etag: g.etag })} />
                </div>
                <Members group={g} />
              </li>
            ))}
          </ul>
        )}
      </QueryView>
      <NamedDialog
        open={open}
        kind="group"
        extraLabel="IdP group names"
        extraHint="Members of these IdP groups join this group at sign-in (comma separated)."
        onClose={() => setOpen(false)}
      />
    </section>
  );
}

function Members({ group }: { group: Group }) {
  const nodes = useAllNodes();
  const names = nameMap(nodes.data?.nodes);
  const add = useMutation(GroupService.method.addGroupMembers);
  const remove = useMutation(GroupService.method.removeGroupMembers);
  const [nodeId, setNodeId] = useState("");
  return (
    <div className="members">
      <ul className="chips" aria-label={`Members of ${group.name}`}>
        {group.members.map((m) => (
          <li key={`${m.member.case}:${m.member.value}`}>
            <Badge tone="neutral">
              {m.member.case === "nodeId" ? `node ${names.get(m.member.value) ?? m.member.value}` : `user ${m.member.value}`}
            </Badge>
            <button
              type="button"
              className="btn btn-ghost btn-small"
              aria-label={`Remove member ${m.member.value}`}
              onClick={() => remove.mutate({ id: group.id, members: [m] })}
            >
              ×
            </button>
          </li>
        ))}
      </ul>
      <form
        className="inline-form"
        onSubmit={(e) => {
          e.preventDefault();
          if (nodeId) add.mutate({ id: group.id, members: [{ member: { case: "nodeId", value: nodeId } }] });
          setNodeId("");
        }}
      >
        <label>
          <span className="sr-only">Node to add to {group.name}</span>
          <select value={nodeId} onChange={(e) => setNodeId(e.target.value)}>
            <option value="">Add a node…</option>
            {nodes.data?.nodes.map((n) => (
              <option key={n.id} value={n.id}>
                {n.name}
              </option>
            ))}
          </select>
        </label>
        <button type="submit" className="btn btn-small" disabled={!nodeId}>
          Add
        </button>
      </form>
      <MutationError error={add.error ?? remove.error} />
    </div>
  );
}

function Tags() {
  const tags = useQuery(TagService.method.listTags, { pageSize: 1000 });
  const groups = nameMap(useGroups().data?.groups);
  const del = useMutation(TagService.method.deleteTag);
  const [open, setOpen] = useState(false);
  return (
    <section className="panel" aria-labelledby="tags">
      <div className="panel-head">
        <h2 id="tags">Tags</h2>
        <button type="button" className="btn btn-small btn-primary" onClick={() => setOpen(true)}>
          Create tag
        </button>
      </div>
      <MutationError error={del.error} />
      <QueryView query={tags} isEmpty={(d) => d.tags.length === 0} empty="No tags yet.">
        {(d) => (
          <table className="table">
            <thead>
              <tr><th scope="col">Tag</th><th scope="col">Nodes</th><th scope="col">Owners</th><th scope="col"><span className="sr-only">Actions</span></th></tr>
            </thead>
            <tbody>
              {d.tags.map((t) => (
                <tr key={t.id}>
                  <td><Badge tone="info">{t.name}</Badge>{t.description && <div className="muted small">{t.description}</div>}</td>
                  <td>{t.nodeCount}</td>
                  <td>{t.ownerGroupIds.map((g) => groups.get(g) ?? g).join(", ") || <span className="muted">admins</span>}</td>
                  <td className="row-actions"><ConfirmButton label="Delete" danger onConfirm={() => del.mutate({ id: t.id, etag: t.etag })} /></td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </QueryView>
      <NamedDialog open={open} kind="tag" extraLabel="Owner groups" extraHint="Group ids whose members may apply this tag (comma separated); empty means admins only." onClose={() => setOpen(false)} />
    </section>
  );
}

/** NamedDialog creates a group or a tag: a name, a description and one list field. */
function NamedDialog(props: { open: boolean; kind: "group" | "tag"; extraLabel: string; extraHint: string; onClose: () => void }) {
  const [name, setName] = useState("");
  const [description, setDescription] = useState("");
  const [extra, setExtra] = useState("");
  const [errors, setErrors] = useState<FieldErrors>({});
  const done = () => {
    setName("");
    setDescription("");
    setExtra("");
    setErrors({});
    props.onClose();
  };
  const createGroup = useMutation(GroupService.method.createGroup, { onSuccess: done, onError: (e) => setErrors(violationsOf(e, "group.")) });
  const createTag = useMutation(TagService.method.createTag, { onSuccess: done, onError: (e) => setErrors(violationsOf(e, "tag.")) });
  const extraField = props.kind === "group" ? "idp_group_names" : "owner_group_ids";
  const err = createGroup.error ?? createTag.error;
  return (
    <Dialog open={props.open} title={`Create ${props.kind}`} onClose={done}>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          setErrors({});
          if (props.kind === "group") createGroup.mutate({ group: { name: name.trim(), description, idpGroupNames: splitList(extra) } });
          else createTag.mutate({ tag: { name: name.trim(), description, ownerGroupIds: splitList(extra) } });
        }}
      >
        <Field label="Name" errors={pick(errors, "name")} hint="A DNS label.">
          {(p) => <input {...p} value={name} onChange={(e) => setName(e.target.value)} autoFocus />}
        </Field>
        <Field label="Description" errors={pick(errors, "description")}>
          {(p) => <input {...p} value={description} onChange={(e) => setDescription(e.target.value)} />}
        </Field>
        <Field label={props.extraLabel} errors={pick(errors, extraField)} hint={props.extraHint}>
          {(p) => <input {...p} value={extra} onChange={(e) => setExtra(e.target.value)} />}
        </Field>
        <FormErrors errors={errors} placed={["name", "description", extraField]} error={err} />
        <div className="dialog-actions">
          <button type="button" className="btn" onClick={done}>Cancel</button>
          <button type="submit" className="btn btn-primary">Create</button>
        </div>
      </form>
    </Dialog>
  );
}
