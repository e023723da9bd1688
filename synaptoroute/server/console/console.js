// synaptoroute console: plain JavaScript, no dependencies, no build step.
//
// Every text that comes from the service is put on the page with textContent (through
// el() below), never parsed as HTML. The API key lives in sessionStorage (this tab
// only) and travels only in the Authorization header of same-origin requests.
"use strict";

(function () {
  const KEY_STORE = "synaptoroute-api-key";
  const LIVE_EVERY_MS = 2000;
  const DECIDED_BY = { head: "the fitted head", threshold: "the threshold", negative_example: "a negative example (routes nowhere)" };
  const state = { access: "token", readsNeedKey: false, overview: null, route: null, lastQuery: null, liveTimer: null, map: null, notice: null };

  // -- helpers ------------------------------------------------------------------------
  function $(id) {
    return document.getElementById(id);
  }

  // Build an element; string and number children become text nodes (never HTML).
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = String(value);
      else if (name === "onclick") node.addEventListener("click", value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // Each cell names its column, so narrow screens can show a row as a stack of fields.
  function labelCells(table) {
    const heads = [...table.querySelectorAll("thead th")].map((th) => th.textContent);
    for (const row of table.querySelectorAll("tbody tr")) {
      [...row.cells].forEach((cell, i) => cell.setAttribute("data-label", heads[i] || ""));
    }
    return table;
  }

  function clear(node) {
    node.replaceChildren();
    return node;
  }

  function fmt(value, digits = 3) {
    return value === null || value === undefined ? "—" : Number(value).toFixed(digits);
  }

  function pct(value) {
    return value === null || value === undefined ? "—" : (100 * value).toFixed(1) + " %";
  }

  function routeLabel(name) {
    return name === null || name === undefined ? "(no route)" : name;
  }

  function token() {
    return sessionStorage.getItem(KEY_STORE);
  }

  function canEdit() {
    return state.access === "open" || (state.access === "token" && token() !== null);
  }

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  function detailText(data) {
    if (data && typeof data === "object" && "detail" in data) {
      const d = data.detail;
      if (Array.isArray(d)) return d.map((e) => (e.loc ? e.loc.join(".") + ": " : "") + e.msg).join("; ");
      return String(d);
    }
    return typeof data === "string" ? data : "request failed";
  }

  // Same-origin requests only (relative paths); the key goes in the header, never a URL.
  async function api(method, path, body, options = {}) {
    const headers = { Accept: "application/json" };
    let payload;
    if (options.raw !== undefined) {
      headers["Content-Type"] = "application/x-ndjson";
      payload = options.raw;
    } else if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(body);
    }
    const key = options.key !== undefined ? options.key : token();
    if (key) headers.Authorization = "Bearer " + key;
    const response = await fetch(path, {
      method,
      headers,
      body: payload,
      credentials: "same-origin",
      cache: "no-store",
      redirect: "error",
    });
    const text = await response.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (_) {
        data = text;
      }
    }
    if (!response.ok) throw new ApiError(response.status, detailText(data));
    return data;
  }

  function routePath(name, sub) {
    return "../routes/" + encodeURIComponent(name) + (sub ? "/" + sub : "");
  }

  function showError(error) {
    const box = $("message");
    box.textContent = error instanceof ApiError ? `Error ${error.status}: ${error.message}` : String(error.message || error);
    box.hidden = false;
    $("notice").hidden = true;
  }

  function showNotice(text) {
    const box = $("notice");
    box.textContent = text;
    box.hidden = false;
    $("message").hidden = true;
  }

  function clearMessages() {
    $("message").hidden = true;
    $("notice").hidden = true;
  }

  // Run an action; its errors are shown instead of thrown. What an earlier action
  // said is cleared first: an old error stayed beside the next action's result.
  function guarded(action) {
    return async (event) => {
      if (event && event.preventDefault) event.preventDefault();
      clearMessages();
      try {
        await action(event);
      } catch (error) {
        showError(error);
      }
    };
  }

  // -- access --------------------------------------------------------------------------
  function renderAccess() {
    const status = $("access-status");
    const keyForm = $("key-form");
    const forget = $("key-forget");
    keyForm.hidden = !(state.access === "token" && token() === null);
    // A key unlocks reads on a read-only service too: it can be dropped there as well.
    forget.hidden = state.access === "open" || token() === null;
    if (state.access === "read_only") status.textContent = "Read-only service: route changes are disabled.";
    else if (state.access === "open") status.textContent = "Changes are open: this service has no API key.";
    else if (token() === null) status.textContent = "Read-only: enter the API key to change routes.";
    else status.textContent = "Changes enabled with your key (kept in this tab only).";
    if (state.readsNeedKey && token() === null) status.textContent = "This service needs the API key to read: enter it.";
    // A route's controls act on state.route: none while no route has loaded.
    for (const node of document.querySelectorAll(".edit")) {
      node.hidden = !canEdit() || (node.closest("#view-route") !== null && state.route === null);
    }
  }

  async function useKey(event) {
    const input = $("key-input");
    const key = input.value.trim();
    if (!key) return;
    try {
      await api("GET", "api/access", undefined, { key });
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) throw new Error("The API key was refused.");
      throw error;
    }
    sessionStorage.setItem(KEY_STORE, key);
    input.value = "";
    renderAccess();
    showNotice("Key accepted.");
    await render();
  }

  function forgetKey() {
    sessionStorage.removeItem(KEY_STORE);
    renderAccess();
    showNotice("Key forgotten.");
    render();
  }

  // -- routes --------------------------------------------------------------------------
  async function loadOverview() {
    try {
      state.overview = await api("GET", "api/overview");
    } catch (error) {
      // --auth-reads without a key (or with a stale one): show the key form, or
      // "Forget key", which only renderAccess reveals, so the page can be unlocked.
      if (error instanceof ApiError && error.status === 401) {
        state.access = "token";
        state.readsNeedKey = true;
        renderAccess();
      }
      throw error;
    }
    state.access = state.overview.access;
    state.readsNeedKey = false;
    renderAccess();
    return state.overview;
  }

  function changedText(stamp) {
    return stamp === null || stamp === undefined ? "earlier" : new Date(stamp * 1000).toLocaleString();
  }

  function thresholdText(route) {
    return route.threshold === null ? `${fmt(route.effective_threshold, 2)} (default)` : fmt(route.threshold, 2);
  }

  async function showRoutes() {
    const overview = await loadOverview();
    const total = overview.routes.reduce((sum, r) => sum + r.utterances, 0);
    $("routes-summary").textContent = `${overview.routes.length} routes, ${total} utterances; default threshold ${fmt(overview.threshold, 2)}${overview.head ? "; a fitted head decides" : ""}.`;
    const body = clear($("routes-table").tBodies[0]);
    for (const route of overview.routes) {
      body.append(
        el(
          "tr",
          {},
          el("td", {}, el("a", { href: "#/route/" + encodeURIComponent(route.name), text: route.name })),
          el("td", { text: route.utterances }),
          el("td", { text: thresholdText(route) }),
          el("td", { text: changedText(route.changed_at) })
        )
      );
    }
    labelCells($("routes-table"));
  }

  async function createRoute() {
    const name = $("new-route-name").value.trim();
    const utterances = $("new-route-utterances").value.split("\n").map((u) => u.trim()).filter(Boolean);
    await api("POST", "../routes", { name, utterances });
    $("new-route-name").value = "";
    $("new-route-utterances").value = "";
    state.notice = `Route ${name} created.`; // shown once the new view has rendered
    location.hash = "#/route/" + encodeURIComponent(name);
  }

  async function showRoute(name) {
    // Nothing of the route shown before stays while this one loads: a failed load
    // (a route deleted meanwhile) must leave no controls acting on the previous one.
    state.route = null;
    $("route-title").textContent = "";
    clear($("route-info"));
    clear($("utterance-list"));
    renderAccess();
    await loadOverview();
    const route = await api("GET", "api/routes/" + encodeURIComponent(name));
    state.route = route.name;
    renderAccess();
    $("route-title").textContent = route.name;
    const info = clear($("route-info"));
    info.append(
      el("dt", { text: "Utterances" }), el("dd", { text: route.utterances.length }),
      el("dt", { text: "Threshold" }), el("dd", { text: thresholdText(route) }),
      el("dt", { text: "Description" }), el("dd", { text: route.description || "—" }),
      el("dt", { text: "Last change" }), el("dd", { text: changedText(route.changed_at) })
    );
    $("threshold-input").value = route.threshold === null ? "" : String(route.threshold);
    $("delete-route-confirm").hidden = true;
    const list = clear($("utterance-list"));
    for (const text of route.utterances) list.append(utteranceItem(route.name, text));
  }

  function utteranceItem(name, text) {
    const item = el("li", {}, el("span", { class: "utterance", text }));
    if (!canEdit()) return item;
    item.append(
      el("button", { type: "button", class: "secondary", "aria-label": "Edit: " + text, text: "Edit", onclick: () => editUtterance(item, name, text) }),
      el("button", { type: "button", class: "secondary", "aria-label": "Delete: " + text, text: "Delete", onclick: guarded(() => deleteUtterance(name, text)) })
    );
    return item;
  }

  function editUtterance(item, name, text) {
    const input = el("input", { "aria-label": "Edit utterance", value: text, required: true });
    const form = el(
      "form",
      { class: "inline" },
      input,
      el("button", { type: "submit", text: "Save" }),
      el("button", { type: "button", class: "secondary", text: "Cancel", onclick: () => item.replaceWith(utteranceItem(name, text)) })
    );
    form.addEventListener(
      "submit",
      guarded(async () => {
        const fresh = input.value.trim();
        if (!fresh || fresh === text) return;
        // Add first: if the delete then fails, nothing is lost.
        await api("POST", routePath(name, "utterances"), { utterances: [fresh] });
        await api("DELETE", routePath(name, "utterances"), { utterances: [text] });
        showNotice("Utterance changed.");
        await showRoute(name);
        $("add-utterance-input").focus(); // the edited item was rebuilt: focus was lost
      })
    );
    clear(item).append(form);
    input.focus();
  }

  async function deleteUtterance(name, text) {
    await api("DELETE", routePath(name, "utterances"), { utterances: [text] });
    showNotice("Utterance deleted.");
    await showRoute(name);
    $("add-utterance-input").focus(); // its item is gone: focus was lost with it
  }

  function shownRoute() {
    if (state.route === null) throw new Error("No route is shown: open one from the list.");
    return state.route;
  }

  async function addUtterance() {
    const name = shownRoute();
    const input = $("add-utterance-input");
    const text = input.value.trim();
    if (!text) return;
    const answer = await api("POST", routePath(name, "utterances"), { utterances: [text] });
    input.value = "";
    showNotice(answer.added.length ? "Utterance added." : "That utterance was already there.");
    await showRoute(name);
    $("add-utterance-input").focus();
  }

  async function setThreshold() {
    const name = shownRoute();
    const raw = $("threshold-input").value.trim();
    const threshold = raw === "" ? null : Number(raw);
    await api("PUT", routePath(name, "threshold"), { threshold });
    showNotice("Threshold set.");
    await showRoute(name);
    $("threshold-input").focus();
  }

  async function deleteRoute() {
    const name = shownRoute();
    await api("DELETE", routePath(name));
    state.notice = `Route ${name} deleted.`;
    location.hash = "#/routes";
  }

  // -- try it --------------------------------------------------------------------------
  // A score from 0 to 1 as a bar, with the route's threshold as a vertical line. Sizes
  // are set through the CSSOM, which the policy allows (no inline style attributes).
  function scoreBar(score, threshold, passed) {
    const clamp = (v) => Math.max(0, Math.min(1, v)) * 100 + "%";
    const fill = el("span", { class: passed ? "fill passed-fill" : "fill" });
    fill.style.width = clamp(score);
    const line = el("span", { class: "line" });
    line.style.left = clamp(threshold === null ? 0 : threshold);
    return el("span", { class: "bar", "aria-hidden": "true" }, fill, line);
  }

  async function tryQuery() {
    const query = $("try-input").value;
    clear($("try-result")); // a failed query leaves no earlier answer under its error
    const answer = await api("POST", "api/try", { query, k: 5, nearest: 3 });
    state.lastQuery = query;
    const d = answer.decision;
    const out = clear($("try-result"));
    out.append(
      el(
        "p",
        { id: "try-decision", class: d.route === null ? "decision none" : "decision" },
        "Decision: ",
        el("strong", { id: "try-route", text: routeLabel(d.route) }),
        ` (${d.reason.replace(/_/g, " ")})`
      ),
      el(
        "dl",
        { class: "figures" },
        el("dt", { text: "Best route" }), el("dd", { text: routeLabel(d.candidate) }),
        el("dt", { text: "Score" }), el("dd", { text: fmt(d.score) }),
        el("dt", { text: "Threshold" }), el("dd", { text: fmt(d.threshold) }),
        el("dt", { text: "Margin to runner-up" }), el("dd", { text: answer.margin === null ? "—" : `${fmt(answer.margin)} (${routeLabel(d.runner_up)})` }),
        el("dt", { text: "Decided by" }), el("dd", { id: "try-decided-by", text: DECIDED_BY[answer.decided_by] || answer.decided_by }),
        answer.lexical_weight === null ? null : [el("dt", { text: "Lexical signal" }), el("dd", { text: `weight ${fmt(answer.lexical_weight)} in the head` })],
        answer.ngram_features === null ? null : [el("dt", { text: "N-gram features" }), el("dd", { text: `${answer.ngram_features} in the head's vocabulary` })],
        d.confidence === null ? null : [el("dt", { text: "Confidence" }), el("dd", { text: fmt(d.confidence) })]
      )
    );
    const rows = answer.top.map((m) =>
      el(
        "tr",
        {},
        el("td", {}, el("a", { href: "#/route/" + encodeURIComponent(m.route), text: m.route })),
        el("td", {}, scoreBar(m.score, m.threshold, m.passed), " ", fmt(m.score)),
        el("td", { text: fmt(m.threshold), class: m.passed ? "passed" : "failed" }, m.passed ? " ✓ passes" : " ✗ below"),
        el("td", {}, el("ul", { class: "nearest" }, m.nearest.map((n) => el("li", {}, `${fmt(n.score)} `, el("span", { text: n.text })))))
      )
    );
    out.append(
      el("h3", { text: "Top routes" }),
      el(
        "div",
        { class: "scroll" },
        labelCells(el(
          "table",
          { id: "try-top", class: "stack" },
          el("thead", {}, el("tr", {}, ["Route", "Score (red line: threshold)", "Threshold", "Nearest utterances"].map((h) => el("th", { scope: "col", text: h })))),
          el("tbody", {}, rows)
        ))
      )
    );
  }

  // -- evaluate ------------------------------------------------------------------------
  async function evaluate() {
    const file = $("eval-file").files[0];
    const raw = file ? await file.text() : $("eval-text").value;
    clear($("eval-result")); // a failed upload leaves no earlier report under its error
    if (!raw.trim()) throw new Error("Choose a file or paste labelled rows first.");
    const report = await api("POST", "api/evaluate", undefined, { raw });
    const out = clear($("eval-result"));
    out.append(
      el(
        "dl",
        { class: "figures", id: "eval-figures" },
        el("dt", { text: "Rows" }), el("dd", { text: `${report.rows} (in scope ${report.in_scope}, out of scope ${report.out_of_scope})` }),
        el("dt", { text: "In-scope accuracy" }), el("dd", { text: pct(report.in_scope_accuracy) }),
        el("dt", { text: "Out-of-scope recall" }), el("dd", { text: pct(report.oos_recall) }),
        el("dt", { text: "Accuracy" }), el("dd", { text: pct(report.accuracy) }),
        el("dt", { text: "Macro-F1" }), el("dd", { text: fmt(report.macro_f1) })
      ),
      el("h3", { text: "Most confused" }),
      report.confused_pairs.length
        ? el(
            "ol",
            { id: "confused-pairs" },
            report.confused_pairs.map((p) => el("li", {}, `${p.label === null ? "(out of scope)" : p.label} → ${routeLabel(p.predicted)}: ${p.count}`))
          )
        : el("p", { id: "confused-pairs", text: "Nothing was confused." }),
      el("h3", { text: `Misrouted rows (${report.misrouted_total})` }),
      report.misrouted.length < report.misrouted_total
        ? el("p", { id: "misrouted-shown", text: `Showing the first ${report.misrouted.length} of ${report.misrouted_total}.` })
        : null
    );
    if (!report.misrouted.length) return;
    const rows = report.misrouted.map((m) => {
      const action = el("td");
      if (canEdit() && m.label !== null) {
        const button = el("button", { type: "button", class: "secondary", text: `Add to ${m.label}` });
        button.addEventListener(
          "click",
          guarded(async () => {
            await api("POST", routePath(m.label, "utterances"), { utterances: [m.text] });
            button.textContent = `Added to ${m.label}`;
            button.disabled = true;
            showNotice(`Added as an utterance of ${m.label}.`);
          })
        );
        action.append(button);
      }
      return el(
        "tr",
        {},
        el("td", { text: m.text }),
        el("td", { text: m.label === null ? "(out of scope)" : m.label }),
        el("td", { text: routeLabel(m.predicted) }),
        el("td", { text: fmt(m.score) }),
        action
      );
    });
    out.append(
      el(
        "div",
        { class: "scroll" },
        labelCells(el(
          "table",
          { id: "misrouted", class: "stack" },
          el("thead", {}, el("tr", {}, ["Text", "Label", "Routed to", "Score", ""].map((h) => el("th", { scope: "col", text: h })))),
          el("tbody", {}, rows)
        ))
      )
    );
  }

  // -- map -----------------------------------------------------------------------------
  function colour(i) {
    return `hsl(${(i * 137.508) % 360}, 65%, 45%)`;
  }

  async function showMap() {
    const data = await api("POST", "api/map", state.lastQuery ? { query: state.lastQuery } : {});
    state.map = { data, highlight: null, screen: [] };
    const n = data.x.length;
    $("map-info").textContent = n
      ? `${n} utterances of ${data.routes.length} routes; the axes explain ${pct(data.explained[0])} and ${pct(data.explained[1])} of the variance.` +
        (data.query ? " The last tried query is the black cross." : " Try a query to place it here.")
      : "No utterances yet.";
    const legend = clear($("map-legend"));
    data.routes.forEach((name, i) => {
      const swatch = el("span", { class: "swatch", "aria-hidden": "true" });
      swatch.style.backgroundColor = colour(i);
      const button = el("button", { type: "button", "aria-pressed": "false" }, swatch, el("span", { text: name }));
      button.addEventListener("click", () => {
        state.map.highlight = state.map.highlight === i ? null : i;
        for (const b of legend.querySelectorAll("button")) b.setAttribute("aria-pressed", "false");
        if (state.map.highlight !== null) button.setAttribute("aria-pressed", "true");
        drawMap();
      });
      legend.append(el("li", {}, button));
    });
    const pairs = clear($("map-pairs"));
    for (const p of data.closest_pairs) pairs.append(el("li", {}, `${p.a} and ${p.b}: centroid similarity ${fmt(p.similarity)}`));
    drawMap();
  }

  function drawMap() {
    const canvas = $("map-canvas");
    const { data, highlight } = state.map;
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(canvas.clientWidth, 200);
    const height = Math.round(width * 0.65);
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const xs = data.query ? data.x.concat([data.query.x]) : data.x;
    const ys = data.query ? data.y.concat([data.query.y]) : data.y;
    if (!xs.length) return;
    // One pass: Math.min(...xs) passes every point as an argument, past the engine's
    // limit (about 125,000 in V8) for a large store.
    let [x0, x1, y0, y1] = [Infinity, -Infinity, Infinity, -Infinity];
    for (let i = 0; i < xs.length; i++) {
      x0 = Math.min(x0, xs[i]);
      x1 = Math.max(x1, xs[i]);
      y0 = Math.min(y0, ys[i]);
      y1 = Math.max(y1, ys[i]);
    }
    const pad = 12;
    const sx = (width - 2 * pad) / (x1 - x0 || 1);
    const sy = (height - 2 * pad) / (y1 - y0 || 1);
    const screen = new Float32Array(2 * data.x.length);
    for (let i = 0; i < data.x.length; i++) {
      const px = pad + (data.x[i] - x0) * sx;
      const py = height - pad - (data.y[i] - y0) * sy;
      screen[2 * i] = px;
      screen[2 * i + 1] = py;
      const r = data.route[i];
      ctx.globalAlpha = highlight === null || highlight === r ? 0.8 : 0.08;
      ctx.fillStyle = colour(r);
      ctx.fillRect(px - 2, py - 2, 4, 4);
    }
    state.map.screen = screen;
    ctx.globalAlpha = 1;
    if (data.query) {
      const qx = pad + (data.query.x - x0) * sx;
      const qy = height - pad - (data.query.y - y0) * sy;
      ctx.strokeStyle = "#000";
      ctx.lineWidth = 3;
      ctx.beginPath();
      ctx.moveTo(qx - 8, qy - 8);
      ctx.lineTo(qx + 8, qy + 8);
      ctx.moveTo(qx + 8, qy - 8);
      ctx.lineTo(qx - 8, qy + 8);
      ctx.stroke();
    }
  }

  function hoverMap(event) {
    if (!state.map || !state.map.data.texts) return;
    const rect = event.target.getBoundingClientRect();
    const x = event.clientX - rect.left;
    const y = event.clientY - rect.top;
    const screen = state.map.screen;
    let best = -1;
    let bestDistance = 64; // within 8 px
    for (let i = 0; i < screen.length / 2; i++) {
      const d = (screen[2 * i] - x) ** 2 + (screen[2 * i + 1] - y) ** 2;
      if (d < bestDistance) {
        best = i;
        bestDistance = d;
      }
    }
    const data = state.map.data;
    $("map-hover").textContent = best < 0 ? "" : `${data.routes[data.route[best]]}: ${data.texts[best]}`;
  }

  // -- live ----------------------------------------------------------------------------
  async function refreshLive() {
    const s = await api("GET", "api/stats");
    const box = clear($("live-figures"));
    box.append(
      el("dt", { text: "Requests per second" }), el("dd", { id: "live-rps", text: fmt(s.requests_per_s, 1) }),
      el("dt", { text: "p50 latency" }), el("dd", { id: "live-p50", text: s.p50_ms === null ? "—" : fmt(s.p50_ms, 2) + " ms" }),
      el("dt", { text: "p99 latency" }), el("dd", { id: "live-p99", text: s.p99_ms === null ? "—" : fmt(s.p99_ms, 2) + " ms" }),
      el("dt", { text: "Queue depth" }), el("dd", { id: "live-queue", text: s.queue_depth }),
      el("dt", { text: "Requests in flight" }), el("dd", { text: s.in_flight }),
      el("dt", { text: "Routes" }), el("dd", { text: s.routes }),
      el("dt", { text: "Utterances" }), el("dd", { text: s.utterances }),
      el("dt", { text: "Window" }), el("dd", { text: fmt(s.window_s, 1) + " s" })
    );
  }

  function stopLive() {
    if (state.liveTimer !== null) clearTimeout(state.liveTimer);
    state.liveTimer = null;
  }

  async function liveLoop() {
    try {
      await refreshLive();
    } catch (error) {
      showError(error);
    }
    if (currentView() === "live") state.liveTimer = setTimeout(liveLoop, LIVE_EVERY_MS);
  }

  // -- navigation ----------------------------------------------------------------------
  function currentView() {
    const hash = location.hash || "#/routes";
    const view = hash.slice(2).split("/")[0];
    return ["routes", "route", "try", "evaluate", "map", "live"].includes(view) ? view : "routes";
  }

  async function render() {
    stopLive();
    const view = currentView();
    for (const section of document.querySelectorAll("main > section")) section.hidden = section.id !== "view-" + view;
    for (const link of document.querySelectorAll("nav a")) {
      const active = link.dataset.nav === view || (view === "route" && link.dataset.nav === "routes");
      if (active) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    try {
      if (view === "routes") await showRoutes();
      else if (view === "route") await showRoute(decodeURIComponent(location.hash.slice("#/route/".length)));
      else if (view === "map") await showMap();
      else if (view === "live") await liveLoop();
      else await loadOverview();
    } catch (error) {
      showError(error);
    }
    // Marks for tests and benchmarks: which view has rendered, and when the first did.
    if (!document.body.dataset.readyAt) document.body.dataset.readyAt = String(performance.now());
    document.body.dataset.ready = view;
  }

  function start() {
    $("key-form").addEventListener("submit", guarded(useKey));
    $("key-forget").addEventListener("click", forgetKey);
    $("new-route-form").addEventListener("submit", guarded(createRoute));
    $("add-utterance-form").addEventListener("submit", guarded(addUtterance));
    $("threshold-form").addEventListener("submit", guarded(setThreshold));
    $("delete-route").addEventListener("click", () => {
      $("delete-route-confirm").hidden = false;
      $("delete-route-confirm").focus();
    });
    $("delete-route-confirm").addEventListener("click", guarded(deleteRoute));
    $("try-form").addEventListener("submit", guarded(tryQuery));
    $("eval-form").addEventListener("submit", guarded(evaluate));
    $("map-canvas").addEventListener("mousemove", hoverMap);
    window.addEventListener("resize", () => state.map && currentView() === "map" && drawMap());
    window.addEventListener("hashchange", async () => {
      clearMessages();
      await render();
      if (state.notice) {
        // After a change that left the view (a route created or deleted): focus goes
        // to the new view's heading, not back to the top of the page.
        showNotice(state.notice);
        const heading = document.querySelector("main > section:not([hidden]) h2");
        if (heading) {
          heading.tabIndex = -1;
          heading.focus();
        }
      }
      state.notice = null;
    });
    render();
  }

  start();
})();
