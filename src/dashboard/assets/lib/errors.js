// Loaded first, on its own: records every uncaught error, unhandled rejection, failed
// resource and console.error into window.__dashboardErrors (read by the browser tests and
// shown by nothing else), then lets the browser report them as usual.
const errors = (window.__dashboardErrors = window.__dashboardErrors || []);

function record(kind, text) {
  errors.push({ kind, text: String(text), at: new Date().toISOString(), page: location.hash });
}

window.addEventListener(
  "error",
  (event) => {
    if (event.target && event.target !== window) {
      // A <script>, <link> or <img> that failed to load (does not bubble: caught here).
      const target = event.target;
      record("resource", `${target.tagName} ${target.src || target.href || ""} failed to load`);
      return;
    }
    const where = event.filename ? ` (${event.filename}:${event.lineno}:${event.colno})` : "";
    record("error", (event.error && event.error.stack) || `${event.message}${where}`);
  },
  true,
);

window.addEventListener("unhandledrejection", (event) => {
  const reason = event.reason;
  record("unhandledrejection", (reason && (reason.stack || reason.message)) || reason);
});

const originalError = console.error.bind(console);
console.error = (...args) => {
  record(
    "console.error",
    args
      .map((a) => (a instanceof Error ? a.stack || a.message : typeof a === "string" ? a : JSON.stringify(a)))
      .join(" "),
  );
  originalError(...args);
};
