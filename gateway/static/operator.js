// The operator page (gateway/operator.py): a trace's waterfall from GET /v1/admin/traces/{id}
// and the system analytics (GET /v1/analytics/system) as Chart.js charts. Every call carries the
// operator's access token, kept in this tab's sessionStorage only.
"use strict";

(function () {
  const TOKEN_KEY = "stylestudio.operator.token";
  const PALETTE = ["#2f5bd3", "#00897b", "#f57c00", "#8e24aa", "#6d4c41", "#3949ab", "#c0ca33", "#5e35b1"];
  const charts = {};
  const $ = (id) => document.getElementById(id);

  // --- calls -------------------------------------------------------------------------------

  class ApiFailure extends Error {
    constructor(status, body) {
      const error = (body && body.error) || {};
      super(error.message || `HTTP ${status}`);
      this.status = status;
      this.reason = error.reason || "";
    }
  }

  async function call(path, options) {
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    const init = Object.assign({ headers }, options || {});
    if (init.json !== undefined) {
      init.method = "POST";
      init.body = JSON.stringify(init.json);
      headers["Content-Type"] = "application/json";
    }
    const response = await fetch(path, init);
    let body = null;
    try {
      body = await response.json();
    } catch (ignored) {
      body = null;
    }
    if (!response.ok) throw new ApiFailure(response.status, body);
    return body;
  }

  function explain(failure) {
    if (failure.status === 401) return "Sign in again: the token is missing, expired or revoked.";
    if (failure.status === 403) return `Refused: ${failure.message} (this page needs an admin's access token).`;
    return failure.message;
  }

  // --- signing in ----------------------------------------------------------------------------

  async function signIn(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    $("sign-in-error").textContent = "";
    try {
      const me = await call("/v1/users/me");
      if (me.role !== "admin") throw new ApiFailure(403, { error: { message: "Admins only" } });
      $("who-label").textContent = `${me.name || me.id} (admin)`;
    } catch (failure) {
      sessionStorage.removeItem(TOKEN_KEY);
      $("sign-in-error").textContent = explain(failure);
      return;
    }
    showSignedIn(true);
    loadAnalytics();
    const wanted = new URLSearchParams(location.hash.slice(1)).get("trace");
    if (wanted) {
      $("trace-id").value = wanted;
      loadTrace(wanted);
    }
  }

  function signOut() {
    sessionStorage.removeItem(TOKEN_KEY);
    for (const name of Object.keys(charts)) {
      charts[name].destroy();
      delete charts[name];
    }
    $("waterfall").replaceChildren();
    $("trace-summary").replaceChildren();
    $("span-detail").replaceChildren();
    showSignedIn(false);
  }

  function showSignedIn(signedIn) {
    $("sign-in").hidden = signedIn;
    $("who").hidden = !signedIn;
    $("trace").hidden = !signedIn;
    $("analytics").hidden = !signedIn;
  }

  // --- the waterfall -------------------------------------------------------------------------

  // Parents before children, siblings by start: the order a waterfall reads in.
  function treeOrder(spans) {
    const ids = new Set(spans.map((span) => span.span_id));
    const children = new Map();
    const roots = [];
    for (const span of spans) {
      if (span.parent_span_id && ids.has(span.parent_span_id)) {
        if (!children.has(span.parent_span_id)) children.set(span.parent_span_id, []);
        children.get(span.parent_span_id).push(span);
      } else {
        roots.push(span);
      }
    }
    const byStart = (a, b) => Number(a.start_ns) - Number(b.start_ns);
    const ordered = [];
    const stack = roots.sort(byStart).reverse().map((span) => [span, 0]);
    while (stack.length) {
      const [span, depth] = stack.pop();
      ordered.push({ span, depth });
      const kids = (children.get(span.span_id) || []).sort(byStart).reverse();
      for (const kid of kids) stack.push([kid, depth + 1]);
    }
    return ordered;
  }

  function shortService(name) {
    return String(name || "?").replace(/^stylestudio-/, "");
  }

  // "/stylestudio.files.v1.FilesService/StoreFile" reads as "FilesService/StoreFile".
  function shortName(name) {
    return String(name || "").replace(/^\/[\w.]+\.v\d+\./, "");
  }

  function formatDuration(ms) {
    if (ms < 1) return `${(ms * 1000).toFixed(0)} µs`;
    if (ms < 1000) return `${ms.toFixed(1)} ms`;
    return `${(ms / 1000).toFixed(2)} s`;
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function renderTrace(document_) {
    const spans = document_.spans || [];
    const starts = spans.map((span) => Number(span.start_ns));
    const ends = spans.map((span) => Number(span.end_ns || span.start_ns));
    const t0 = Math.min(...starts);
    const total = Math.max(1, Math.max(...ends) - t0);
    const services = [...new Set(spans.map((span) => shortService(span.service)))];
    const colour = (service) => PALETTE[services.indexOf(service) % PALETTE.length];
    const errors = spans.filter((span) => span.status === "ERROR").length;

    const summary = $("trace-summary");
    summary.replaceChildren(
      element("span", "", "trace "),
      element("strong", "", document_.trace_id),
      element("span", "", ` · ${spans.length} spans · ${formatDuration(total / 1e6)} · ${errors} errors`)
    );
    const legend = element("div", "legend");
    for (const service of services) {
      const item = element("span");
      const swatch = element("i");
      swatch.style.background = colour(service);
      item.append(swatch, service);
      legend.append(item);
    }
    for (const [mark, label] of [["critical-mark", "critical path"], ["error-mark", "error"]]) {
      const item = element("span");
      item.append(element("i", mark), label);
      legend.append(item);
    }
    summary.append(legend);

    const rows = treeOrder(spans).map(({ span, depth }) => {
      const start = Number(span.start_ns) - t0;
      const duration = Number(span.end_ns || span.start_ns) - Number(span.start_ns);
      const service = shortService(span.service);
      const row = element("div", "span-row");
      row.dataset.spanId = span.span_id;
      if (span.critical) row.classList.add("critical");
      if (span.status === "ERROR") row.classList.add("error");

      const label = element("div", "span-label");
      label.style.paddingLeft = `${8 + depth * 14}px`;
      label.append(element("span", "service", service), element("span", "", shortName(span.name)));
      if (span.kind === "PRODUCER" || span.kind === "CONSUMER") {
        label.append(element("span", "kind", span.kind.toLowerCase()));
      }
      if (span.links && span.links.length) {
        label.append(element("span", "link", `↪ ${span.links.length} link${span.links.length > 1 ? "s" : ""}`));
      }
      label.title = `${service} ${span.name}${span.status_message ? ` — ${span.status_message}` : ""}`;

      const track = element("div", "span-track");
      const bar = element("div", "span-bar");
      bar.style.left = `${(start / total) * 100}%`;
      bar.style.width = `${Math.max((duration / total) * 100, 0.2)}%`;
      bar.style.background = colour(service);
      track.append(bar);

      row.append(label, track, element("div", "span-duration", formatDuration(duration / 1e6)));
      row.addEventListener("click", () => showSpan(row, span, start));
      return row;
    });
    $("waterfall").replaceChildren(...rows);
    $("span-detail").replaceChildren();
  }

  function showSpan(row, span, startNs) {
    for (const selected of document.querySelectorAll(".span-row.selected")) selected.classList.remove("selected");
    row.classList.add("selected");
    const table = element("table");
    const add = (key, value) => {
      const line = element("tr");
      line.append(element("td", "", key), element("td", "", typeof value === "string" ? value : JSON.stringify(value)));
      table.append(line);
    };
    add("span", `${shortService(span.service)} ${span.name} (${span.kind})`);
    add("span id", span.span_id);
    add("parent", span.parent_span_id || "(root)");
    add("starts at", `+${formatDuration(startNs / 1e6)}`);
    add("status", span.status + (span.status_message ? `: ${span.status_message}` : ""));
    for (const [key, value] of Object.entries(span.attributes || {})) add(key, value);
    for (const event of span.events || []) add("event", event);
    for (const link of span.links || []) add("link", link);
    $("span-detail").replaceChildren(table);
  }

  async function loadTrace(ident) {
    $("trace-error").textContent = "";
    try {
      renderTrace(await call(`/v1/admin/traces/${encodeURIComponent(ident)}`));
      history.replaceState(null, "", `#trace=${encodeURIComponent(ident)}`);
    } catch (failure) {
      $("waterfall").replaceChildren();
      $("trace-summary").replaceChildren();
      $("trace-error").textContent = explain(failure);
    }
  }

  // --- the charts ----------------------------------------------------------------------------

  function draw(name, config) {
    if (charts[name]) charts[name].destroy();
    config.options = Object.assign({ responsive: true, maintainAspectRatio: false, animation: false }, config.options);
    charts[name] = new Chart($(`chart-${name}`), config);
  }

  function renderAnalytics(system) {
    const trends = system.generationTrends || [];
    draw("trends", {
      type: "bar",
      data: {
        labels: trends.map((point) => point.day),
        datasets: [
          { label: "started", data: trends.map((point) => point.started), borderColor: PALETTE[0], backgroundColor: PALETTE[0] },
          { label: "completed", data: trends.map((point) => point.completed), borderColor: PALETTE[1], backgroundColor: PALETTE[1] },
          { label: "failed", data: trends.map((point) => point.failed), borderColor: "#c62828", backgroundColor: "#c62828" },
        ],
      },
      options: { scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } },
    });

    const errors = system.errorRates || [];
    draw("errors", {
      type: "bar",
      data: {
        labels: errors.map((entry) => entry.reason),
        datasets: [{ label: "failed generations", data: errors.map((entry) => entry.count), backgroundColor: "#c62828" }],
      },
      options: {
        indexAxis: "y",
        scales: { x: { beginAtZero: true, ticks: { precision: 0 } } },
        plugins: {
          tooltip: {
            callbacks: {
              afterLabel: (item) => `${((errors[item.dataIndex].rate || 0) * 100).toFixed(1)}% of finished generations`,
            },
          },
          subtitle: { display: errors.length === 0, text: "no failed generations in this window" },
        },
      },
    });

    const usage = system.tokenUsage || {};
    const kinds = ["purchased", "granted", "spent", "refunded"];
    draw("tokens", {
      type: "bar",
      data: {
        labels: kinds,
        datasets: [{ label: "tokens", data: kinds.map((kind) => Number(usage[kind] || 0)), backgroundColor: PALETTE.slice(0, 4) }],
      },
      options: { plugins: { legend: { display: false } }, scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } },
    });

    const models = system.popularModels || [];
    draw("models", {
      type: "doughnut",
      data: {
        labels: models.map((entry) => entry.model),
        datasets: [{ label: "generations", data: models.map((entry) => entry.count), backgroundColor: PALETTE }],
      },
      options: { plugins: { legend: { position: "right" } } },
    });
  }

  async function loadAnalytics() {
    $("analytics-error").textContent = "";
    try {
      renderAnalytics(await call(`/v1/analytics/system?window=${encodeURIComponent($("window").value)}`));
    } catch (failure) {
      $("analytics-error").textContent = explain(failure);
    }
  }

  // --- wiring --------------------------------------------------------------------------------

  function onSubmit(id, handler) {
    $(id).addEventListener("submit", (event) => {
      event.preventDefault();
      handler();
    });
  }

  onSubmit("login-form", async () => {
    $("sign-in-error").textContent = "";
    try {
      const answer = await call("/v1/auth/login", {
        json: { email: $("login-email").value, password: $("login-password").value },
      });
      $("login-password").value = "";
      await signIn(answer.accessToken);
    } catch (failure) {
      $("sign-in-error").textContent = explain(failure);
    }
  });
  onSubmit("token-form", () => {
    const token = $("token").value.trim();
    $("token").value = "";
    signIn(token);
  });
  onSubmit("trace-form", () => loadTrace($("trace-id").value.trim()));
  onSubmit("analytics-form", loadAnalytics);
  $("sign-out").addEventListener("click", signOut);

  const kept = sessionStorage.getItem(TOKEN_KEY);
  if (kept) signIn(kept);
  else showSignedIn(false);
})();
