#!/usr/bin/env node
// End-to-end test of the web console in a real browser (`npm run e2e`).
//
// It starts the built cvlan-controller (with the console embedded) on free loopback ports with a
// throw-away data dir, reads the bootstrap admin key it prints on first start, and drives Debian's
// Chromium through playwright-core (never a downloaded browser): sign in, create a cvlan, create a
// join token, enroll a real cvlan-agent in netstack mode with it and see the node come online
// without reloading the page, write a policy, find its audit entry, open the topology view.
// A screenshot of every page goes to e2e/screenshots/.
//
// Environment:
//   CLOUDVLAN_BIN      directory with cvlan-controller and cvlan-agent (default ../bin)
//   CHROMIUM_PATH      the browser (default /usr/bin/chromium)
//   E2E_TIMEOUT_MS     hard limit for the whole run (default 240000)
//   E2E_HEADED=1       show the browser (needs a display)
//   E2E_SKIP=enroll    skip named steps (comma separated: enroll); the run then reports itself
//                      INCOMPLETE and exits 3, so CI never mistakes it for a pass
import { spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const uiDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const binDir = path.resolve(uiDir, process.env.CLOUDVLAN_BIN ?? "../bin");
const chromiumPath = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const shotsDir = path.join(uiDir, "e2e", "screenshots");
const totalTimeout = Number(process.env.E2E_TIMEOUT_MS ?? 240_000);
const stepTimeout = 30_000;

const BOOTSTRAP_RE = /bootstrap admin API key\b[^\n]*?(cvk_[A-Za-z0-9_-]+)/i;

/** freePort asks the kernel for an unused loopback port. */
async function freePort() {
  const srv = net.createServer();
  srv.listen(0, "127.0.0.1");
  await once(srv, "listening");
  const { port } = srv.address();
  srv.close();
  await once(srv, "close");
  return port;
}

/** waitForPort resolves once something accepts TCP connections on the port. */
async function waitForPort(port, timeoutMs, proc) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (proc.exited) throw new Error(`${proc.name} exited (${proc.exited}) before listening on ${port}`);
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, "127.0.0.1");
      s.once("connect", () => {
        s.destroy();
        resolve(true);
      });
      s.once("error", () => resolve(false));
    });
    if (ok) return;
    await sleep(100);
  }
  throw new Error(`nothing listens on 127.0.0.1:${port} after ${timeoutMs} ms`);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Proc is a child process whose output is kept (for matching lines and for failure reports). */
class Proc {
  constructor(name, cmd, args, opts = {}) {
    this.name = name;
    this.output = "";
    this.exited = null;
    this.waiters = [];
    this.child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], ...opts });
    const onData = (d) => {
      this.output += d.toString();
      if (this.output.length > 2_000_000) this.output = this.output.slice(-1_000_000);
      for (const w of [...this.waiters]) w();
    };
    this.child.stdout.on("data", onData);
    this.child.stderr.on("data", onData);
    this.child.on("exit", (code, sig) => {
      this.exited = sig ?? `code ${code}`;
      for (const w of [...this.waiters]) w();
    });
    this.child.on("error", (err) => {
      this.exited = `spawn error: ${err.message}`;
      for (const w of [...this.waiters]) w();
    });
  }

  /** waitFor resolves with the first match of re in the output. */
  waitFor(re, timeoutMs) {
    return new Promise((resolve, reject) => {
      const check = () => {
        const m = re.exec(this.output);
        if (m) return done(() => resolve(m));
        if (this.exited) return done(() => reject(new Error(`${this.name} exited (${this.exited}) before printing ${re}`)));
      };
      const timer = setTimeout(() => done(() => reject(new Error(`${this.name} did not print ${re} within ${timeoutMs} ms`))), timeoutMs);
      const done = (f) => {
        clearTimeout(timer);
        this.waiters = this.waiters.filter((w) => w !== check);
        f();
      };
      this.waiters.push(check);
      check();
    });
  }

  /** stop sends SIGTERM, then SIGKILL if the process is still there after 5 s. */
  async stop() {
    if (this.exited) return;
    this.child.kill("SIGTERM");
    const t = setTimeout(() => this.child.kill("SIGKILL"), 5000);
    await Promise.race([once(this.child, "exit"), sleep(6000)]);
    clearTimeout(t);
  }

  tail(lines = 40) {
    return this.output.trimEnd().split("\n").slice(-lines).join("\n");
  }
}

/**
 * agentArgs is how the test runs cvlan-agent: with the console's token, in netstack mode (no root),
 * against the controller's node port, trusting the controller's embedded CA. E2E_AGENT_ARGS
 * replaces it (placeholders {node} {api} {token} {name} {state} {ca} {admin}).
 */
function agentArgs({ nodeAddr, apiOrigin, token, name, stateDir, caFile, adminAddr }) {
  const fill = (a) =>
    a
      .replaceAll("{node}", nodeAddr)
      .replaceAll("{api}", apiOrigin)
      .replaceAll("{token}", token)
      .replaceAll("{state}", stateDir)
      .replaceAll("{ca}", caFile)
      .replaceAll("{admin}", adminAddr)
      .replaceAll("{name}", name);
  const tmpl =
    process.env.E2E_AGENT_ARGS ??
    "up --controller https://{node} --controller-ca {ca} --token {token} --state-dir {state} --netstack --name {name} --admin-addr {admin} --log-level debug";
  return tmpl.split(/\s+/).filter(Boolean).map(fill);
}

async function main() {
  for (const [what, p] of [
    ["controller", path.join(binDir, "cvlan-controller")],
    ["agent", path.join(binDir, "cvlan-agent")],
    ["chromium", chromiumPath],
  ]) {
    if (!existsSync(p)) throw new Error(`${what} not found at ${p} (build with make build; chromium from Debian's package)`);
  }
  rmSync(shotsDir, { recursive: true, force: true });
  mkdirSync(shotsDir, { recursive: true });
  const tmp = mkdtempSync(path.join(os.tmpdir(), "cloudvlan-e2e-"));
  const procs = [];
  let browser;
  const results = [];
  let failed = null;

  const hardStop = setTimeout(() => {
    console.error(`e2e: the whole run exceeded ${totalTimeout} ms; stopping`);
    for (const p of procs) p.child.kill("SIGKILL");
    process.exit(2);
  }, totalTimeout);

  try {
    const [apiPort, nodePort, metricsPort] = [await freePort(), await freePort(), await freePort()];
    const apiOrigin = `https://127.0.0.1:${apiPort}`;
    const nodeAddr = `127.0.0.1:${nodePort}`;
    const controller = new Proc("cvlan-controller", path.join(binDir, "cvlan-controller"), [
      "--data-dir",
      path.join(tmp, "controller"),
      "--api-addr",
      `127.0.0.1:${apiPort}`,
      "--node-addr",
      nodeAddr,
      "--metrics-addr",
      `127.0.0.1:${metricsPort}`,
    ]);
    procs.push(controller);
    await waitForPort(apiPort, stepTimeout, controller);

    const userDataDir = path.join(tmp, "chromium-profile");
    browser = await chromium.launchPersistentContext(userDataDir, {
      executablePath: chromiumPath,
      headless: process.env.E2E_HEADED !== "1",
      ignoreHTTPSErrors: true, // the API port's certificate is self-signed
      viewport: { width: 1360, height: 900 },
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
      ],
    });
    const page = browser.pages()[0] ?? (await browser.newPage());
    page.setDefaultTimeout(stepTimeout);
    const consoleErrors = [];
    page.on("console", (m) => m.type() === "error" && consoleErrors.push(m.text()));
    page.on("pageerror", (e) => consoleErrors.push(String(e)));
    let navigations = 0;
    page.on("framenavigated", (f) => f === page.mainFrame() && navigations++);

    // unlabelled lists form controls without an accessible name, and buttons without text.
    const unlabelled = () =>
      page.evaluate(() =>
        [...document.querySelectorAll("input, select, textarea, button")]
          .filter((el) => !(el.closest("[aria-hidden=true]")))
          .filter((el) => {
            if (el.getAttribute("aria-label") || el.getAttribute("aria-labelledby") || el.getAttribute("title")) return false;
            if (el.tagName === "BUTTON") return (el.textContent ?? "").trim() === "";
            return !(el.labels && el.labels.length > 0 && [...el.labels].some((l) => (l.textContent ?? "").trim() !== ""));
          })
          .map((el) => el.outerHTML.slice(0, 120)),
      );
    const shot = async (name) => {
      await page.waitForTimeout(250); // let transitions settle
      const bad = await unlabelled();
      if (bad.length) throw new Error(`controls without a label on ${name}: ${bad.join(" | ")}`);
      await page.screenshot({ path: path.join(shotsDir, `${name}.png`), fullPage: true });
    };
    // go navigates inside the single-page app (a client-side link click, no reload).
    const go = async (label) => {
      await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: label, exact: true }).click();
    };
    const skip = new Set((process.env.E2E_SKIP ?? "").split(",").filter(Boolean));
    const step = async (name, fn, key) => {
      if (key && skip.has(key)) {
        results.push({ name, ok: false, skipped: true });
        console.log(`  SKIP ${name} (E2E_SKIP=${key})`);
        return;
      }
      const t0 = Date.now();
      try {
        await fn();
        results.push({ name, ok: true, ms: Date.now() - t0 });
        console.log(`  ok   ${name} (${Date.now() - t0} ms)`);
      } catch (err) {
        results.push({ name, ok: false, ms: Date.now() - t0, err });
        console.log(`  FAIL ${name}: ${err.message.split("\n")[0]}`);
        await page.screenshot({ path: path.join(shotsDir, `FAILED-${name.replace(/\W+/g, "-")}.png`), fullPage: true }).catch(() => {});
        throw Object.assign(err, { step: name });
      }
    };

    let bootstrapKey;
    await step("console is served by the controller", async () => {
      const res = await page.goto(apiOrigin + "/");
      const text = await page.textContent("body");
      if (res?.status() === 503 || text.includes("UI not built")) throw new Error("the controller was built without the console: run make ui before go build");
      await page.getByRole("heading", { name: "Sign in to the console" }).waitFor();
      await shot("01-sign-in");
    });

    await step("controller prints the bootstrap admin key", async () => {
      const m = await controller.waitFor(BOOTSTRAP_RE, stepTimeout);
      bootstrapKey = m[1];
    });

    await step("sign in with the bootstrap key", async () => {
      await page.getByLabel("API key", { exact: true }).fill("cvk_not-a-real-key");
      await page.getByRole("button", { name: "Sign in with API key" }).click();
      await page.getByRole("alert").filter({ hasText: /./ }).first().waitFor(); // a wrong key is refused
      // Keyboard only this time: type the key and submit with Enter.
      await page.getByLabel("API key", { exact: true }).focus();
      await page.keyboard.press("Control+A");
      await page.keyboard.type(bootstrapKey);
      await page.keyboard.press("Enter");
      await page.getByRole("heading", { name: "Dashboard", level: 1 }).waitFor();
      await shot("02-dashboard");
    });

    await step("create a cvlan", async () => {
      await go("Cvlans");
      await page.getByRole("heading", { name: "Cvlans", level: 1 }).waitFor();
      await page.getByRole("button", { name: "Create cvlan" }).click();
      const dialog = page.getByRole("dialog", { name: "Create cvlan" });
      await dialog.getByLabel("Name", { exact: true }).fill("Bad Name");
      await dialog.getByRole("button", { name: "Create" }).click();
      // protovalidate's violation appears on the field itself.
      await dialog.locator(".field-invalid").getByText(/name|pattern|match/i).first().waitFor();
      await dialog.getByLabel("Name", { exact: true }).fill("office");
      await dialog.getByLabel("Description").fill("Head office machines");
      await dialog.getByRole("button", { name: "Create" }).click();
      await dialog.waitFor({ state: "hidden" });
      await page.getByRole("cell", { name: /office/ }).first().waitFor();
      await shot("03-cvlans");
    });

    await step("create a tag (join tokens and policies refer to it)", async () => {
      await go("Groups & tags");
      await page.getByRole("button", { name: "Create tag" }).click();
      const dialog = page.getByRole("dialog", { name: "Create tag" });
      await dialog.getByLabel("Name", { exact: true }).fill("e2e");
      await dialog.getByLabel("Description").fill("Machines enrolled by the end-to-end test");
      await dialog.getByRole("button", { name: "Create" }).click();
      await dialog.waitFor({ state: "hidden" });
      await page.getByRole("cell", { name: /e2e/ }).first().waitFor();
    });

    let secret;
    await step("create a join token", async () => {
      await go("Join tokens");
      await page.getByRole("button", { name: "Create join token" }).click();
      const dialog = page.getByRole("dialog", { name: "Create join token" });
      await dialog.getByLabel("Name", { exact: true }).fill("e2e-agent");
      await dialog.getByLabel("Tags for enrolled nodes").fill("e2e");
      // Two machines enroll with it, so that the topology has a link to show.
      await dialog.getByLabel("Reusable (more than one machine)").check();
      await dialog.getByLabel("Maximum uses").fill("2");
      await shot("04-join-token-dialog");
      await dialog.getByRole("button", { name: "Create token" }).click();
      const done = page.getByRole("dialog", { name: "Join token created" });
      secret = await done.getByLabel("Secret", { exact: true }).inputValue();
      if (!/^cvj_/.test(secret)) throw new Error(`unexpected secret ${secret}`);
      const cmd = await done.getByLabel("Run on the machine to enroll").inputValue();
      // The command names the node port (default 8444) of this host and the root CA linked beside it.
      const want = `cvlan-agent up --controller https://127.0.0.1:8444 --controller-ca cloudvlan-root.pem --token ${secret}`;
      if (cmd !== want) throw new Error(`command is ${JSON.stringify(cmd)}, want ${JSON.stringify(want)}`);
      const caHref = await done.getByRole("link", { name: "download the root CA" }).getAttribute("href");
      const served = await page.evaluate(async (href) => (await fetch(href)).text(), caHref);
      const onDisk = readFileSync(path.join(tmp, "controller", "ca", "root_ca.crt"), "utf8");
      if (served.trim() !== onDisk.trim()) throw new Error("the root CA served beside the command is not the controller's root");
      await shot("05-join-token-secret");
      await done.getByRole("button", { name: "Done" }).click();
      // The new token is listed (by its tag: the list never shows the secret).
      await page.locator("tbody tr", { hasText: "e2e" }).first().waitFor();
      await shot("06-join-tokens");
    });

    await step("enroll an agent and see it online without reload", async () => {
      await go("Nodes");
      await page.getByRole("heading", { name: "Nodes", level: 1 }).waitFor();
      await page.getByText(/No nodes match/).waitFor();
      const before = navigations;
      const agents = [];
      for (const name of ["e2e-agent-1", "e2e-agent-2"]) {
        const agent = new Proc(
          name,
          path.join(binDir, "cvlan-agent"),
          agentArgs({
            nodeAddr,
            apiOrigin,
            token: secret,
            name,
            stateDir: path.join(tmp, name),
            caFile: path.join(tmp, "controller", "ca", "root_ca.crt"),
            adminAddr: `127.0.0.1:${await freePort()}`,
          }),
        );
        procs.push(agent);
        agents.push(agent);
      }
      const online = page.locator("tbody tr", { hasText: "online" });
      try {
        await page.waitForFunction(() => document.querySelectorAll("tbody tr[data-node-name]").length === 2, null, { timeout: 60_000 });
        await online.nth(1).waitFor({ timeout: 60_000 });
      } catch (err) {
        throw new Error(`${err.message.split("\n")[0]}\n${agents.map((a) => `--- ${a.name} output ---\n${a.tail()}`).join("\n")}`);
      }
      if (navigations !== before) throw new Error("the page navigated: the nodes should appear through WatchEvents, not a reload");
      const row = online;
      await shot("07-nodes");
      await row.first().getByRole("link").first().click();
      await page.getByRole("heading", { name: "Summary" }).waitFor();
      await shot("08-node-detail");
    }, "enroll");

    await step("write a policy (the server's validation errors show on the field)", async () => {
      await go("Policies");
      await page.getByRole("link", { name: "Create policy" }).click();
      await page.getByLabel("Name", { exact: true }).fill("e2e-web");
      await page.getByLabel("Rule 1 protocol").selectOption({ label: "tcp" });
      await page.getByLabel("Rule 1 ports").fill("80, 443");
      await page.getByLabel("Rule 1 source 1 type").selectOption({ label: "CIDR" });
      await page.getByLabel("Rule 1 source 1 value").fill("10.0.0.0/33");
      await page.getByRole("button", { name: "Create policy" }).click();
      // protovalidate's violation on policy.rules[0].sources[0].cidr, shown next to that input.
      const value = page.getByLabel("Rule 1 source 1 value");
      await page.waitForFunction((el) => el.getAttribute("aria-invalid") === "true", await value.elementHandle());
      await shot("09-policy-validation-error");
      await page.getByLabel("Rule 1 source 1 type").selectOption({ label: "Tag" });
      await page.getByLabel("Rule 1 source 1 value").fill("e2e");
      await page.getByRole("button", { name: "Create policy" }).click();
      await page.waitForURL(/\/policies\/[0-9a-f-]{36}$/);
      await page.getByRole("button", { name: "Save policy" }).waitFor();
      await shot("10-policy-editor");
      await go("Policies");
      await page.getByRole("link", { name: "e2e-web" }).waitFor();
      await shot("11-policies");
    });

    await step("see the audit entry", async () => {
      await go("Audit log");
      await page.getByRole("cell", { name: "policy.create" }).first().waitFor();
      await shot("12-audit-log");
      // Export streams ExportAuditLogs into a file download.
      const [download] = await Promise.all([page.waitForEvent("download"), page.getByRole("button", { name: "Export CSV" }).click()]);
      const file = path.join(tmp, download.suggestedFilename());
      await download.saveAs(file);
      const csv = readFileSync(file, "utf8");
      if (!csv.includes("policy.create") || !csv.includes("cvlan.create")) throw new Error(`the CSV export lacks the entries: ${csv.slice(0, 300)}`);
    });

    await step("open the topology view", async () => {
      await go("Topology");
      if (skip.has("enroll")) await page.getByText(/No nodes yet/).waitFor();
      else {
        await page.locator(".react-flow__node").nth(1).waitFor();
        // The agents report their peer paths once WireGuard has a handshake between them.
        await page.locator(".react-flow__edge").first().waitFor({ timeout: 60_000 });
      }
      await shot("13-topology");
    });

    await step("every other page renders", async () => {
      for (const [label, heading, file] of [
        ["Dashboard", "Dashboard", "14-dashboard-after"],
        ["Groups & tags", "Groups and tags", "15-groups-tags"],
        ["Relays", "Relays", "16-relays"],
        ["VRouters", "VRouters", "17-vrouters"],
        ["API keys", "API keys", "18-api-keys"],
        ["Tenants", "Tenants", "19-tenants"],
      ]) {
        await go(label);
        await page.getByRole("heading", { name: heading, level: 1 }).waitFor();
        await page.locator(".state-loading").first().waitFor({ state: "detached" });
        await shot(file);
      }
    });

    if (consoleErrors.length) console.log(`  note: browser console errors:\n    ${consoleErrors.slice(0, 10).join("\n    ")}`);
  } catch (err) {
    failed = err;
  } finally {
    clearTimeout(hardStop);
    await browser?.close().catch(() => {});
    for (const p of procs.reverse()) await p.stop();
    writeFileSync(path.join(tmp, "controller.log"), procs.find((p) => p.name === "cvlan-controller")?.output ?? "");
  }

  if (failed) {
    console.error(`\ne2e FAILED${failed.step ? ` at step "${failed.step}"` : ""}: ${failed.message}`);
    const c = procs.find((p) => p.name === "cvlan-controller");
    if (c) console.error(`--- cvlan-controller output (last lines; full log in ${tmp}/controller.log) ---\n${c.tail()}`);
    console.error(`screenshots: ${shotsDir}`);
    process.exit(1);
  }
  rmSync(tmp, { recursive: true, force: true });
  const skipped = results.filter((r) => r.skipped);
  if (skipped.length) {
    console.log(`\ne2e INCOMPLETE: skipped ${skipped.map((r) => `"${r.name}"`).join(", ")}; screenshots in ${shotsDir}`);
    process.exit(3);
  }
  console.log(`\ne2e passed: ${results.length} steps; screenshots in ${shotsDir}`);
}

main().catch((err) => {
  console.error(`e2e: ${err.stack ?? err}`);
  process.exit(1);
});
