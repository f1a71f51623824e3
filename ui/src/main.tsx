import { createRoot } from "react-dom/client";
import { App } from "./App";
import { sessionKeyStore } from "./api/session";
import { createTransport } from "./api/transport";
import "./styles.css";

const transport = createTransport(sessionKeyStore);
createRoot(document.getElementById("root")!).render(<App transport={transport} keyStore={sessionKeyStore} />);
