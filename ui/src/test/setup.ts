import { cleanup, configure } from "@testing-library/react";
import { afterEach } from "vitest";

// Unmount what each test rendered (vitest runs without globals, so RTL cannot do it itself).
afterEach(() => cleanup());

// findBy/waitFor poll up to 10 s instead of 1 s: on a loaded machine a render can take longer,
// and a failing assertion still fails (only later).
configure({ asyncUtilTimeout: 10_000 });
