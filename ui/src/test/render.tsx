import type { Transport } from "@connectrpc/connect";
import { TransportProvider } from "@connectrpc/connect-query";
import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { render } from "@testing-library/react";
import type { ReactElement } from "react";

/** renderWithApi renders ui against a transport (usually createRouterTransport) with a fresh cache. */
export function renderWithApi(ui: ReactElement, transport: Transport) {
  const qc = new QueryClient({ defaultOptions: { queries: { retry: false }, mutations: { retry: false } } });
  return render(
    <TransportProvider transport={transport}>
      <QueryClientProvider client={qc}>{ui}</QueryClientProvider>
    </TransportProvider>,
  );
}

/** describedText returns the text of the elements that describe a control (hint and errors). */
export function describedText(el: HTMLElement): string {
  const ids = (el.getAttribute("aria-describedby") ?? "").split(/\s+/).filter(Boolean);
  return ids.map((id) => document.getElementById(id)?.textContent ?? "").join(" ");
}
