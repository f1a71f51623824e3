import { useMutation, useQuery } from "@connectrpc/connect-query";
import { Code, ConnectError } from "@connectrpc/connect";
import { useState } from "react";
import { Protocol, ProtocolSchema } from "../../../gen/ts/cloudvlan/v1/common_pb";
import { PolicyAction, PolicyActionSchema, PolicyService, type Policy } from "../../../gen/ts/cloudvlan/v1/policy_pb";
import { UserService } from "../../../gen/ts/cloudvlan/v1/user_pb";
import { addError, pick, violationsOf, type FieldErrors } from "../api/errors";
import { enumOptions } from "../api/format";
import { useAllNodes, useCvlans, useGroups, useTags } from "../api/hooks";
import {
  emptyPolicy,
  fromPolicy,
  newRule,
  targetField,
  toPolicy,
  type EditorState,
  type RuleState,
  type TargetKind,
  type TargetState,
} from "./policyModel";
import { Field, FormErrors } from "./ui";

const kindLabels: Record<TargetKind, string> = {
  any: "Any node",
  tag: "Tag",
  groupId: "Group",
  userId: "User",
  nodeId: "Node",
  cidr: "CIDR",
};

/**
 * PolicyEditor edits a policy's rules and shows the server's validation errors next to the field
 * they concern: protovalidate violations from Create/UpdatePolicy, and ValidatePolicy's dry-run
 * findings (unknown groups, tags, nodes...).
 */
export function PolicyEditor(props: { policy?: Policy; onSaved?: (p: Policy) => void }) {
  const [state, setState] = useState<EditorState>(() => (props.policy ? fromPolicy(props.policy) : emptyPolicy()));
  const [errors, setErrors] = useState<FieldErrors>({});
  const [checked, setChecked] = useState<"valid" | null>(null);
  const isNew = !state.id;

  const validate = useMutation(PolicyService.method.validatePolicy);
  const onSaveError = async (err: ConnectError, policy: ReturnType<typeof toPolicy>["policy"]) => {
    const v = violationsOf(err, "policy.");
    if (Object.keys(v).length === 0 && err.code === Code.InvalidArgument) {
      // The rules are well-formed but refer to something that does not exist: ask the server
      // which fields, so they can be marked.
      try {
        const res = await validate.mutateAsync({ policy });
        for (const pv of res.violations) addError(v, pv.field, pv.message);
      } catch {
        // Keep the save error itself, shown below.
      }
    }
    setErrors(v);
  };
  const create = useMutation(PolicyService.method.createPolicy, {
    onSuccess: (res) => res.policy && saved(res.policy),
  });
  const update = useMutation(PolicyService.method.updatePolicy, {
    onSuccess: (res) => res.policy && saved(res.policy),
  });
  const saved = (p: Policy) => {
    setErrors({});
    setState(fromPolicy(p));
    props.onSaved?.(p);
  };
  const saving = create.isPending || update.isPending;
  const saveError = create.error ?? update.error;

  const build = () => {
    setChecked(null);
    const { policy, localErrors } = toPolicy(state);
    setErrors(localErrors);
    return Object.keys(localErrors).length ? null : policy;
  };
  const save = () => {
    const policy = build();
    if (!policy) return;
    if (isNew) create.mutate({ policy }, { onError: (e) => void onSaveError(e, policy) });
    else
      update.mutate(
        { policy, updateMask: { paths: ["name", "description", "cvlan_id", "enabled", "priority", "rules"] } },
        { onError: (e) => void onSaveError(e, policy) },
      );
  };
  const check = async () => {
    const policy = build();
    if (!policy) return;
    try {
      const res = await validate.mutateAsync({ policy });
      const v: FieldErrors = {};
      for (const pv of res.violations) addError(v, pv.field, pv.message);
      setErrors(v);
      setChecked(res.violations.length === 0 ? "valid" : null);
    } catch (err) {
      setErrors(violationsOf(err, "policy."));
    }
  };

  const patch = (p: Partial<EditorState>) => setState((s) => ({ ...s, ...p }));
  const patchRule = (i: number, p: Partial<RuleState>) =>
    setState((s) => ({ ...s, rules: s.rules.map((r, j) => (j === i ? { ...r, ...p } : r)) }));
  const moveRule = (i: number, d: -1 | 1) =>
    setState((s) => {
      const rules = [...s.rules];
      const [r] = rules.splice(i, 1);
      rules.splice(i + d, 0, r);
      return { ...s, rules };
    });

  const cvlans = useCvlans();
  return (
    <form
      className="policy-editor"
      aria-label={isNew ? "New policy" : `Policy ${state.name}`}
      onSubmit={(e) => {
        e.preventDefault();
        save();
      }}
      noValidate
    >
      <div className="row">
        <Field label="Name" errors={pick(errors, "name")} hint="A DNS label, unique in the tenant.">
          {(p) => <input {...p} value={state.name} onChange={(e) => patch({ name: e.target.value })} />}
        </Field>
        <Field label="Priority" errors={pick(errors, "priority")} hint="0–10000; lower applies first.">
          {(p) => <input {...p} inputMode="numeric" value={state.priority} onChange={(e) => patch({ priority: e.target.value })} />}
        </Field>
        <Field label="Applies to" errors={pick(errors, "cvlan_id")}>
          {(p) => (
            <select {...p} value={state.cvlanId} onChange={(e) => patch({ cvlanId: e.target.value })}>
              <option value="">Every cvlan</option>
              {cvlans.data?.cvlans.map((c) => (
                <option key={c.id} value={c.id}>
                  {c.name}
                </option>
              ))}
            </select>
          )}
        </Field>
      </div>
      <Field label="Description" errors={pick(errors, "description")}>
        {(p) => <input {...p} value={state.description} onChange={(e) => patch({ description: e.target.value })} />}
      </Field>
      <label className="check">
        <input type="checkbox" checked={state.enabled} onChange={(e) => patch({ enabled: e.target.checked })} />
        Enabled (enforced as soon as it is saved)
      </label>

      <h2>Rules</h2>
      <p className="muted small">The first rule that matches decides; traffic no rule allows is denied.</p>
      {errors["rules"] && <p className="field-error" role="alert">{errors["rules"].join("; ")}</p>}
      <ol className="rules">
        {state.rules.map((r, i) => (
          <RuleEditor
            key={r.key}
            index={i}
            rule={r}
            count={state.rules.length}
            errors={errors}
            onChange={(p) => patchRule(i, p)}
            onMove={(d) => moveRule(i, d)}
            onRemove={() => setState((s) => ({ ...s, rules: s.rules.filter((_, j) => j !== i) }))}
          />
        ))}
      </ol>
      <button type="button" className="btn" onClick={() => setState((s) => ({ ...s, rules: [...s.rules, newRule()] }))}>
        Add rule
      </button>

      <FormErrors errors={errors} placed={["name", "description", "priority", "cvlan_id", "enabled", "rules"]} error={saveError} />
      {checked === "valid" && (
        <p className="ok-text" role="status">
          The policy is valid.
        </p>
      )}
      <div className="form-actions">
        <button type="button" className="btn" onClick={() => void check()} disabled={validate.isPending}>
          {validate.isPending ? "Checking…" : "Check"}
        </button>
        <button type="submit" className="btn btn-primary" disabled={saving}>
          {saving ? "Saving…" : isNew ? "Create policy" : "Save policy"}
        </button>
      </div>
    </form>
  );
}

function RuleEditor(props: {
  index: number;
  rule: RuleState;
  count: number;
  errors: FieldErrors;
  onChange: (p: Partial<RuleState>) => void;
  onMove: (d: -1 | 1) => void;
  onRemove: () => void;
}) {
  const { index: i, rule: r, errors } = props;
  const base = `rules[${i}]`;
  const n = i + 1;
  const portsAllowed = r.protocol === Protocol.TCP || r.protocol === Protocol.UDP;
  const ruleLevel = errors[base];
  return (
    <li className="rule" aria-label={`Rule ${n}`}>
      <div className="rule-head">
        <strong>Rule {n}</strong>
        <div className="actions">
          <button type="button" className="btn btn-small" aria-label={`Move rule ${n} up`} disabled={i === 0} onClick={() => props.onMove(-1)}>
            ↑
          </button>
          <button type="button" className="btn btn-small" aria-label={`Move rule ${n} down`} disabled={i === props.count - 1} onClick={() => props.onMove(1)}>
            ↓
          </button>
          <button type="button" className="btn btn-small btn-danger-outline" aria-label={`Remove rule ${n}`} onClick={props.onRemove}>
            Remove
          </button>
        </div>
      </div>
      {ruleLevel && <p className="field-error" role="alert">{ruleLevel.join("; ")}</p>}
      <div className="row">
        <Field labelContext={`Rule ${n} `} label="name" errors={pick(errors, `${base}.name`)}>
          {(p) => <input {...p} value={r.name} onChange={(e) => props.onChange({ name: e.target.value })} placeholder="optional" />}
        </Field>
        <Field labelContext={`Rule ${n} `} label="action" errors={pick(errors, `${base}.action`)}>
          {(p) => (
            <select {...p} value={r.action} onChange={(e) => props.onChange({ action: Number(e.target.value) as PolicyAction })}>
              {enumOptions(PolicyActionSchema).map((o) => (
                <option key={o.value} value={o.value}>
                  {o.label}
                </option>
              ))}
            </select>
          )}
        </Field>
        <Field labelContext={`Rule ${n} `} label="protocol" errors={pick(errors, `${base}.protocol`)}>
          {(p) => (
            <select {...p} value={r.protocol} onChange={(e) => props.onChange({ protocol: Number(e.target.value) as Protocol })}>
              {enumOptions(ProtocolSchema).map((o) => (
                <option key={o.value} value={o.value}>
                  {o.label}
                </option>
              ))}
            </select>
          )}
        </Field>
        <Field
          labelContext={`Rule ${n} `} label="ports"
          errors={pick(errors, `${base}.ports`)}
          hint={portsAllowed ? "e.g. 22, 8000-8080; empty means all" : "Only for TCP and UDP"}
        >
          {(p) => <input {...p} value={r.ports} onChange={(e) => props.onChange({ ports: e.target.value })} />}
        </Field>
      </div>
      <div className="row targets">
        <TargetList
          title="Sources"
          label={`Rule ${n} source`}
          path={`${base}.sources`}
          items={r.sources}
          errors={errors}
          onChange={(sources) => props.onChange({ sources })}
        />
        <TargetList
          title="Destinations"
          label={`Rule ${n} destination`}
          path={`${base}.destinations`}
          items={r.destinations}
          errors={errors}
          onChange={(destinations) => props.onChange({ destinations })}
        />
      </div>
    </li>
  );
}

function TargetList(props: {
  title: string;
  label: string;
  path: string;
  items: TargetState[];
  errors: FieldErrors;
  onChange: (t: TargetState[]) => void;
}) {
  const listErr = props.errors[props.path];
  const set = (j: number, t: TargetState) => props.onChange(props.items.map((x, k) => (k === j ? t : x)));
  return (
    <fieldset className="target-list">
      <legend>{props.title}</legend>
      {listErr && <p className="field-error" role="alert">{listErr.join("; ")}</p>}
      {props.items.map((t, j) => (
        <TargetRow
          key={j}
          label={`${props.label} ${j + 1}`}
          target={t}
          errors={pick(props.errors, `${props.path}[${j}]`)}
          valueErrors={pick(props.errors, `${props.path}[${j}].${targetField[t.kind]}`)}
          onChange={(nt) => set(j, nt)}
          onRemove={props.items.length > 1 ? () => props.onChange(props.items.filter((_, k) => k !== j)) : undefined}
        />
      ))}
      <button type="button" className="btn btn-small" onClick={() => props.onChange([...props.items, { kind: "tag", value: "" }])}>
        Add {props.title.toLowerCase().replace(/s$/, "")}
      </button>
    </fieldset>
  );
}

function TargetRow(props: {
  label: string;
  target: TargetState;
  errors?: string[];
  valueErrors?: string[];
  onChange: (t: TargetState) => void;
  onRemove?: () => void;
}) {
  const { target: t } = props;
  // Errors of the row that are not about its value (e.g. "one of target is required").
  const rowOnly = props.errors?.filter((m) => !props.valueErrors?.includes(m));
  return (
    <div className="target-row">
      <Field labelContext={`${props.label} `} label="type" className="target-kind" errors={rowOnly?.length ? rowOnly : undefined}>
        {(p) => (
          <select {...p} value={t.kind} onChange={(e) => props.onChange({ kind: e.target.value as TargetKind, value: "" })}>
            {(Object.keys(kindLabels) as TargetKind[]).map((k) => (
              <option key={k} value={k}>
                {kindLabels[k]}
              </option>
            ))}
          </select>
        )}
      </Field>
      {t.kind !== "any" && (
        <Field labelContext={`${props.label} `} label="value" className="target-value" errors={props.valueErrors}>
          {(p) => <TargetValue fieldProps={p} target={t} onChange={(value) => props.onChange({ ...t, value })} />}
        </Field>
      )}
      {props.onRemove && (
        <button type="button" className="btn btn-small btn-ghost" aria-label={`Remove ${props.label.toLowerCase()}`} onClick={props.onRemove}>
          ×
        </button>
      )}
    </div>
  );
}

function TargetValue(props: { fieldProps: React.ComponentProps<"input">; target: TargetState; onChange: (v: string) => void }) {
  const { target: t, fieldProps } = props;
  const groups = useGroups();
  const tags = useTags();
  const nodes = useAllNodes();
  const users = useQuery(UserService.method.listUsers, { pageSize: 1000 }, { enabled: t.kind === "userId" });
  const options =
    t.kind === "groupId"
      ? groups.data?.groups.map((g) => ({ id: g.id, name: g.name }))
      : t.kind === "nodeId"
        ? nodes.data?.nodes.map((n) => ({ id: n.id, name: n.name }))
        : t.kind === "userId"
          ? users.data?.users.map((u) => ({ id: u.id, name: u.email || u.name }))
          : undefined;
  if (t.kind === "tag") {
    const listId = `${fieldProps.id}-tags`;
    return (
      <>
        <input {...fieldProps} list={listId} value={t.value} onChange={(e) => props.onChange(e.target.value)} placeholder="tag name" />
        <datalist id={listId}>
          {tags.data?.tags.map((g) => <option key={g.id} value={g.name} />)}
        </datalist>
      </>
    );
  }
  if (t.kind === "cidr") {
    return <input {...fieldProps} value={t.value} onChange={(e) => props.onChange(e.target.value)} placeholder="10.1.0.0/16" />;
  }
  const { id, ...aria } = fieldProps;
  return (
    <select id={id} {...(aria as object)} value={t.value} onChange={(e) => props.onChange(e.target.value)}>
      <option value="">Choose…</option>
      {options?.map((o) => (
        <option key={o.id} value={o.id}>
          {o.name}
        </option>
      ))}
      {t.value && !options?.some((o) => o.id === t.value) && <option value={t.value}>{t.value}</option>}
    </select>
  );
}
