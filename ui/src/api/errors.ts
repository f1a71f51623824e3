import { Code, ConnectError } from "@connectrpc/connect";
import { ViolationsSchema, type FieldPath } from "../../../gen/ts/buf/validate/validate_pb";

/** FieldErrors maps a field path (e.g. "rules[0].sources[1].cidr") to its messages. */
export type FieldErrors = Record<string, string[]>;

/**
 * fieldPathString renders a protovalidate FieldPath as a dotted path with subscripts, using proto
 * field names: "policy.rules[0].sources[1].cidr".
 */
export function fieldPathString(path: FieldPath | undefined): string {
  if (!path) return "";
  let out = "";
  for (const el of path.elements) {
    out += out === "" ? el.fieldName : `.${el.fieldName}`;
    switch (el.subscript.case) {
      case "index":
      case "intKey":
      case "uintKey":
        out += `[${el.subscript.value.toString()}]`;
        break;
      case "boolKey":
        out += `[${String(el.subscript.value)}]`;
        break;
      case "stringKey":
        out += `[${JSON.stringify(el.subscript.value)}]`;
        break;
    }
  }
  return out;
}

/**
 * violationsOf extracts the protovalidate violations the server attached to an INVALID_ARGUMENT
 * error, keyed by field path. stripPrefix removes the request's wrapper field ("policy.") so the
 * paths match the editor's fields. A violation without a field is keyed "".
 */
export function violationsOf(err: unknown, stripPrefix = ""): FieldErrors {
  const out: FieldErrors = {};
  if (!(err instanceof ConnectError) || err.code !== Code.InvalidArgument) return out;
  for (const detail of err.findDetails(ViolationsSchema)) {
    for (const v of detail.violations) {
      let path = fieldPathString(v.field);
      if (stripPrefix && path.startsWith(stripPrefix)) path = path.slice(stripPrefix.length);
      else if (stripPrefix && `${path}.` === stripPrefix) path = "";
      (out[path] ??= []).push(v.message || v.ruleId);
    }
  }
  return out;
}

/** addError appends one message to a FieldErrors map (used for server-side dry-run results). */
export function addError(errs: FieldErrors, path: string, message: string): FieldErrors {
  (errs[path] ??= []).push(message);
  return errs;
}

/** errorMessage is a readable one-line description of any error for banners. */
export function errorMessage(err: unknown): string {
  if (err instanceof ConnectError) {
    const what: Partial<Record<Code, string>> = {
      [Code.Unauthenticated]: "You are not signed in or your session expired.",
      [Code.PermissionDenied]: "Your role does not allow this.",
      [Code.NotFound]: "Not found.",
      [Code.Aborted]: "Someone else changed this meanwhile: reload and try again.",
      [Code.Unavailable]: "The controller cannot be reached.",
      [Code.Unimplemented]: "The controller does not implement this yet.",
    };
    return err.rawMessage || what[err.code] || Code[err.code];
  }
  if (err instanceof Error) return err.message;
  return String(err);
}

/** isUnauthenticated tells whether the error means the credentials are missing or invalid. */
export function isUnauthenticated(err: unknown): boolean {
  return err instanceof ConnectError && err.code === Code.Unauthenticated;
}

/**
 * pick returns the messages for a field and everything below it ("rules[0]" picks
 * "rules[0].protocol" too), so a list field shows the errors of its items.
 */
export function pick(errs: FieldErrors, path: string): string[] | undefined {
  const out: string[] = [];
  for (const [k, msgs] of Object.entries(errs)) {
    if (k === path || k.startsWith(`${path}.`) || k.startsWith(`${path}[`)) out.push(...msgs);
  }
  return out.length ? out : undefined;
}

/** unplaced returns the messages whose field is not covered by any of the given paths. */
export function unplaced(errs: FieldErrors, placed: string[]): string[] {
  const out: string[] = [];
  for (const [k, msgs] of Object.entries(errs)) {
    const covered = placed.some((p) => k === p || k.startsWith(`${p}.`) || k.startsWith(`${p}[`));
    if (!covered) out.push(...msgs.map((m) => (k ? `${k}: ${m}` : m)));
  }
  return out;
}
