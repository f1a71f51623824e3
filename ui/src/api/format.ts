import type { DescEnum } from "@bufbuild/protobuf";
import { timestampDate, type Duration, type Timestamp } from "@bufbuild/protobuf/wkt";

/** enumLabel turns NODE_STATUS_ONLINE into "online" using the enum's descriptor. */
export function enumLabel(desc: DescEnum, value: number): string {
  const v = desc.values.find((x) => x.number === value);
  if (!v || v.number === 0) return "—";
  return v.localName.toLowerCase().replace(/_/g, " ");
}

/** enumOptions lists an enum's values except UNSPECIFIED, for selects. */
export function enumOptions(desc: DescEnum): { value: number; label: string }[] {
  return desc.values
    .filter((v) => v.number !== 0)
    .map((v) => ({ value: v.number, label: v.localName.toLowerCase().replace(/_/g, " ") }));
}

/** formatTime renders a timestamp in the browser's locale, or a dash. */
export function formatTime(ts: Timestamp | undefined): string {
  if (!ts) return "—";
  return timestampDate(ts).toLocaleString();
}

/** relativeTime says how long ago a timestamp was, e.g. "3 min ago". */
export function relativeTime(ts: Timestamp | undefined, now = Date.now()): string {
  if (!ts) return "never";
  const s = Math.round((now - timestampDate(ts).getTime()) / 1000);
  if (s < 0) return `in ${humanSeconds(-s)}`;
  if (s < 5) return "just now";
  return `${humanSeconds(s)} ago`;
}

function humanSeconds(s: number): string {
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  if (s < 86400) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}

/** formatBytes renders a byte count with binary units. */
export function formatBytes(n: bigint | number): string {
  let v = Number(n);
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

/** formatDuration renders a protobuf Duration in milliseconds. */
export function formatDuration(d: Duration | undefined): string {
  if (!d) return "—";
  const ms = Number(d.seconds) * 1000 + d.nanos / 1e6;
  return ms < 1000 ? `${ms.toFixed(1)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

/**
 * shortId shows the last 8 hex digits of a UUID: enough to tell ids apart in tables (the first
 * ones of time-ordered UUIDs are the same for everything created in the same minute).
 */
export function shortId(id: string): string {
  return id ? `…${id.replace(/-/g, "").slice(-8)}` : "—";
}
