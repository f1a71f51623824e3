import type { ConnectError } from "@connectrpc/connect";
import type { UseQueryResult } from "@tanstack/react-query";
import { useEffect, useId, useRef, useState, type ReactNode } from "react";
import { errorMessage, unplaced, type FieldErrors } from "../api/errors";

/** PageHeader is the title row of a page with its actions. */
export function PageHeader(props: { title: string; description?: string; actions?: ReactNode }) {
  return (
    <header className="page-header">
      <div>
        <h1>{props.title}</h1>
        {props.description && <p className="muted">{props.description}</p>}
      </div>
      {props.actions && <div className="actions">{props.actions}</div>}
    </header>
  );
}

/** Spinner announces loading to screen readers. */
export function Loading(props: { label?: string }) {
  return (
    <div className="state state-loading" role="status" aria-live="polite">
      <span className="spinner" aria-hidden="true" />
      {props.label ?? "Loading…"}
    </div>
  );
}

/** ErrorBanner shows a failed request and, when given, a way to retry. */
export function ErrorBanner(props: { error: unknown; onRetry?: () => void; title?: string }) {
  return (
    <div className="state state-error" role="alert">
      <strong>{props.title ?? "Something went wrong"}</strong>
      <span>{errorMessage(props.error)}</span>
      {props.onRetry && (
        <button type="button" className="btn btn-small" onClick={props.onRetry}>
          Retry
        </button>
      )}
    </div>
  );
}

/** Empty says a list has nothing in it, with a hint at what to do. */
export function Empty(props: { children: ReactNode }) {
  return <div className="state state-empty">{props.children}</div>;
}

/**
 * QueryView renders the loading, error and empty states of a query, and its data otherwise.
 */
export function QueryView<T>(props: {
  query: UseQueryResult<T, ConnectError>;
  isEmpty?: (data: T) => boolean;
  empty?: ReactNode;
  loadingLabel?: string;
  children: (data: T) => ReactNode;
}) {
  const { query } = props;
  if (query.isPending) return <Loading label={props.loadingLabel} />;
  if (query.isError) return <ErrorBanner error={query.error} onRetry={() => void query.refetch()} />;
  if (props.isEmpty?.(query.data)) return <Empty>{props.empty ?? "Nothing here yet."}</Empty>;
  return <>{props.children(query.data)}</>;
}

/** Tone is the colour family of a badge. */
export type Tone = "ok" | "warn" | "bad" | "info" | "neutral";

/** Badge is a small status pill. */
export function Badge(props: { tone: Tone; children: ReactNode; title?: string }) {
  return (
    <span className={`badge badge-${props.tone}`} title={props.title}>
      {props.children}
    </span>
  );
}

/** FieldProps are spread onto the control a Field labels. */
export type FieldProps = {
  id: string;
  "aria-describedby"?: string;
  "aria-invalid"?: boolean;
};

/**
 * Field labels one control and shows its hint and errors next to it, linked for screen readers
 * through aria-describedby.
 */
export function Field(props: {
  label: string;
  /** Read by screen readers before the label, e.g. "Rule 2 " before "ports" in a repeated form. */
  labelContext?: string;
  errors?: string[];
  hint?: string;
  className?: string;
  children: (p: FieldProps) => ReactNode;
}) {
  const id = useId();
  const hintId = `${id}-hint`;
  const errId = `${id}-err`;
  const hasErr = !!props.errors?.length;
  const describedBy = [props.hint ? hintId : "", hasErr ? errId : ""].filter(Boolean).join(" ");
  return (
    <div className={`field ${hasErr ? "field-invalid" : ""} ${props.className ?? ""}`}>
      <label htmlFor={id}>
        {props.labelContext ? (
          <>
            <span className="sr-only">{props.labelContext}</span>
            <span className="cap">{props.label}</span>
          </>
        ) : (
          props.label
        )}
      </label>
      {props.children({ id, "aria-describedby": describedBy || undefined, "aria-invalid": hasErr || undefined })}
      {props.hint && (
        <small id={hintId} className="hint">
          {props.hint}
        </small>
      )}
      {hasErr && (
        <small id={errId} className="field-error" role="alert">
          {props.errors!.join("; ")}
        </small>
      )}
    </div>
  );
}

/** Dialog is a modal built on <dialog>: focus is trapped and Escape closes it. */
export function Dialog(props: { open: boolean; title: string; onClose: () => void; children: ReactNode; wide?: boolean }) {
  const ref = useRef<HTMLDialogElement>(null);
  const titleId = useId();
  useEffect(() => {
    const d = ref.current;
    if (!d) return;
    if (props.open && !d.open) {
      if (typeof d.showModal === "function") d.showModal();
      else d.setAttribute("open", "");
    } else if (!props.open && d.open) {
      if (typeof d.close === "function") d.close();
      else d.removeAttribute("open");
    }
  }, [props.open]);
  return (
    <dialog
      ref={ref}
      className={`dialog ${props.wide ? "dialog-wide" : ""}`}
      aria-labelledby={titleId}
      onCancel={(e) => {
        e.preventDefault();
        props.onClose();
      }}
    >
      {props.open && (
        <>
          <div className="dialog-head">
            <h2 id={titleId}>{props.title}</h2>
            <button type="button" className="btn btn-ghost" aria-label="Close dialog" onClick={props.onClose}>
              ×
            </button>
          </div>
          <div className="dialog-body">{props.children}</div>
        </>
      )}
    </dialog>
  );
}

/** CopyButton copies text to the clipboard and confirms it. */
export function CopyButton(props: { text: string; label: string }) {
  const [state, setState] = useState<"idle" | "copied" | "failed">("idle");
  return (
    <button
      type="button"
      className="btn btn-small"
      aria-label={props.label}
      onClick={async () => {
        try {
          await navigator.clipboard.writeText(props.text);
          setState("copied");
        } catch {
          setState("failed");
        }
        setTimeout(() => setState("idle"), 2000);
      }}
    >
      {state === "copied" ? "Copied" : state === "failed" ? "Copy failed: select and copy" : "Copy"}
    </button>
  );
}

/**
 * ConfirmButton asks for a second, explicit click before a destructive action, without a
 * blocking browser prompt.
 */
export function ConfirmButton(props: {
  label: string;
  confirmLabel?: string;
  onConfirm: () => void;
  disabled?: boolean;
  danger?: boolean;
}) {
  const [asking, setAsking] = useState(false);
  if (!asking) {
    return (
      <button
        type="button"
        className={`btn btn-small ${props.danger ? "btn-danger-outline" : ""}`}
        disabled={props.disabled}
        onClick={() => setAsking(true)}
      >
        {props.label}
      </button>
    );
  }
  return (
    <span className="confirm" role="group" aria-label={`Confirm ${props.label.toLowerCase()}`}>
      <button
        type="button"
        className="btn btn-small btn-danger"
        autoFocus
        onClick={() => {
          setAsking(false);
          props.onConfirm();
        }}
      >
        {props.confirmLabel ?? `Yes, ${props.label.toLowerCase()}`}
      </button>
      <button type="button" className="btn btn-small" onClick={() => setAsking(false)}>
        Cancel
      </button>
    </span>
  );
}

/** MutationError shows a failed action inline. */
export function MutationError(props: { error: unknown }) {
  if (!props.error) return null;
  return <ErrorBanner error={props.error} title="The action failed" />;
}

/** splitList turns "a, b  c" into ["a","b","c"]. */
export function splitList(s: string): string[] {
  return s
    .split(/[\s,]+/)
    .map((x) => x.trim())
    .filter(Boolean);
}

/**
 * FormErrors shows what a form's fields cannot: violations of fields not on the form (or of the
 * request as a whole), and failures that carry no violations at all (e.g. ALREADY_EXISTS).
 */
export function FormErrors(props: { errors: FieldErrors; placed: string[]; error: unknown }) {
  const rest = unplaced(props.errors, props.placed);
  if (rest.length) {
    return (
      <div className="state state-error" role="alert">
        <strong>Please fix:</strong>
        <ul>
          {rest.map((m, i) => (
            <li key={i}>{m}</li>
          ))}
        </ul>
      </div>
    );
  }
  if (props.error && Object.keys(props.errors).length === 0) return <MutationError error={props.error} />;
  return null;
}
