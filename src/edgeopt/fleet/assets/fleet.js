// The fleet page: polls /fleet.json (the session cookie goes with it) and redraws in place.
// Every value from the server is written as text, never as HTML.
"use strict";

(function () {
  const body = document.body;
  const refreshMs = Math.max(1000, Number(body.dataset.refreshMs) || 10000);
  const query = { offset: 0, limit: 50, sort: "health", order: "asc", q: "", health: "all", channel: "" };
  const $ = (id) => document.getElementById(id);
  let timer = null;
  let asked = 0;
  let stopped = false;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "title") node.title = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === null || child === undefined || child === "") continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  const number = (n) => n.toLocaleString("en-US");
  const fixed = (v, digits) => (typeof v === "number" ? v.toFixed(digits) : "-");
  const share = (v) => (typeof v === "number" ? `${(v * 100).toFixed(v < 0.1 ? 1 : 0)} %` : "-");
  const signed = (v, digits) => (v > 0 ? "+" : v < 0 ? "\u2212" : "\u00b1") + Math.abs(v).toFixed(digits);

  function age(seconds) {
    if (seconds === null || seconds === undefined) return "never";
    if (seconds < 0) seconds = 0;
    for (const [unit, size] of [["d", 86400], ["h", 3600], ["min", 60]]) {
      if (seconds >= size) return `${Math.floor(seconds / size)} ${unit} ago`;
    }
    return `${seconds} s ago`;
  }

  function duration(seconds) {
    seconds = Math.round(seconds);
    const parts = [];
    for (const [unit, size] of [["h", 3600], ["min", 60], ["s", 1]]) {
      if (seconds >= size || (unit === "s" && !parts.length)) {
        parts.push(`${Math.floor(seconds / size)} ${unit}`);
        seconds %= size;
      }
    }
    return parts.slice(0, 2).join(" ");
  }

  const when = (iso) => iso.replace("T", " ").replace("Z", " UTC");

  function url() {
    const params = new URLSearchParams({ offset: query.offset, limit: query.limit, sort: query.sort, order: query.order,
                                         health: query.health });
    if (query.q) params.set("q", query.q);
    if (query.channel) params.set("channel", query.channel);
    return `/fleet.json?${params}`;
  }

  function banner(text) {
    $("banner").hidden = !text;
    $("banner").textContent = text || "";
  }

  async function refresh() {
    clearTimeout(timer);
    if (document.hidden) return;  // a tab in the background asks nothing; it asks again when shown
    const mine = ++asked;
    try {
      const answer = await fetch(url(), { credentials: "same-origin", cache: "no-store",
                                          headers: { Accept: "application/json" } });
      if (mine !== asked) return;  // a newer request (the operator changed the view) answers instead
      if (answer.status === 401) {
        stopped = true;
        banner("");
        $("banner").hidden = false;
        $("banner").append("Your session ended (it expired, you signed out elsewhere, or your token was revoked). ",
                           el("a", { href: "/fleet/login" }, "Sign in again"), ".");
        $("status").textContent = "signed out";
        return;
      }
      const data = await answer.json();
      if (!answer.ok) throw new Error(data.error || `the server answered ${answer.status}`);
      render(data);
      banner("");
      body.dataset.refreshes = String(Number(body.dataset.refreshes) + 1);
      $("status").textContent = `updated ${new Date().toLocaleTimeString("en-GB")} \u00b7 refreshes every ${refreshMs / 1000} s`;
    } catch (error) {
      if (mine !== asked) return;
      banner(`Could not refresh: ${error.message}. Retrying.`);
    } finally {
      if (mine === asked && !stopped) timer = setTimeout(refresh, refreshMs);
    }
  }

  function render(data) {
    renderSummary(data.summary);
    renderRollouts(data.rollouts, data.summary.channels);
    renderDevices(data);
    const warnings = data.warnings || [];
    $("warnings").hidden = warnings.length === 0;
    $("warnings").textContent = warnings.join(" ");
  }

  function renderSummary(summary) {
    const tiles = [el("div", { class: "tile total" }, el("span", { class: "count" }, number(summary.devices)), "devices")];
    for (const [level, count] of Object.entries(summary.levels)) {
      const tile = el("button", { type: "button", class: `tile level-${level}${query.health === level ? " chosen" : ""}`,
                                  "data-level": level, title: `show the ${level} devices` },
                      el("span", { class: "count" }, number(count)), level);
      tile.addEventListener("click", () => setQuery({ health: query.health === level ? "all" : level }));
      tiles.push(tile);
    }
    $("levels").replaceChildren(...tiles);
    const select = $("channel");
    const names = Object.keys(summary.channels);
    const have = Array.from(select.options).map((o) => o.value).slice(1);
    if (names.join("\n") !== have.join("\n")) {
      select.replaceChildren(el("option", { value: "" }, "all"), ...names.map((n) => el("option", { value: n }, n)));
      select.value = query.channel;
    }
  }

  function stageBar(rollout) {
    const bar = el("ol", { class: "stages" });
    rollout.stages.forEach((label, i) => {
      const state = i + 1 < rollout.stage ? "done" : i + 1 === rollout.stage ? "current" : "todo";
      bar.append(el("li", { class: `stage ${state}`, title: `stage ${i + 1}: ${label} of devices` }, label));
    });
    return bar;
  }

  function stats(s) {
    const parts = [`${s.population} devices in the stage: ${s.attempted} tried, ${s.failed} failed, ` +
                   `${s.running} run it, ${s.healthy} healthy`];
    if (s.paired) {
      const deltas = [];
      if (s.confidence_drop !== null) deltas.push(`mean confidence ${signed(-s.confidence_drop, 3)}`);
      if (s.low_confidence_rise !== null) deltas.push(`low-confidence share ${signed(s.low_confidence_rise, 3)}`);
      if (s.latency_ratio !== null) deltas.push(`p90 latency \u00d7${s.latency_ratio.toFixed(2)}`);
      parts.push(`${s.paired} paired with the model before` + (deltas.length ? `: ${deltas.join(", ")}` : ""));
    }
    return parts.join("; ");
  }

  function renderRollouts(rollouts, channels) {
    const cards = rollouts.map((r) => {
      const card = el("article", { class: `rollout status-${r.status}`, "data-channel": r.channel },
        el("h3", {}, `${r.channel}: release ${r.release} `, el("span", { class: `badge status-${r.status}` }, r.status)),
        stageBar(r));
      let where = `Stage ${r.stage} of ${r.stages.length}: ${r.share} of devices`;
      if (r.soak_left_s !== null) {
        where += r.soak_left_s > 0 ? ` \u00b7 soaks ${duration(r.soak_left_s)} more (of ${duration(r.soak_s)})`
                                   : ` \u00b7 soaked (${duration(r.soak_s)})`;
      }
      card.append(el("p", { class: "where" }, where));
      const lastHalt = r.halts.length ? r.halts[r.halts.length - 1].reason : null;
      if (r.reason && r.reason !== lastHalt) {
        card.append(el("p", { class: "why" }, el("strong", {}, r.next ? `Next: ${r.next}. ` : "Why: "), r.reason));
      }
      if (r.stats) card.append(el("p", { class: "stats" }, stats(r.stats)));
      if (r.stats && r.stats.failed_devices.length) {
        card.append(el("p", { class: "stats" }, `failed on: ${r.stats.failed_devices.join(", ")}`));
      }
      for (const halt of r.halts) {
        card.append(el("p", { class: "halt" }, el("strong", {}, `${halt.event} ${when(halt.time)}, stage ${halt.stage}: `),
                       halt.reason));
      }
      const history = el("details", {}, el("summary", {}, `history (${r.history.length} latest events)`));
      const list = el("ul", { class: "history" });
      for (const event of r.history) {
        list.append(el("li", {}, el("span", { class: "when" }, when(event.time)),
                       ` ${event.event} (stage ${event.stage}): ${event.reason}`));
      }
      history.append(list);
      card.append(history);
      return card;
    });
    for (const [name, channel] of Object.entries(channels)) {
      if (rollouts.some((r) => r.channel === name)) continue;
      cards.push(el("article", { class: "rollout status-none", "data-channel": name },
                    el("h3", {}, `${name} `, el("span", { class: "badge" }, "no rollout")),
                    el("p", { class: "where" }, releases(channel))));
    }
    for (const card of cards) {
      const channel = channels[card.dataset.channel];
      if (channel && !card.classList.contains("status-none")) card.append(el("p", { class: "muted" }, releases(channel)));
    }
    $("rollouts").replaceChildren(...(cards.length ? cards : [el("p", { class: "muted" }, "No channel has a rollout or a reporting device yet.")]));
  }

  function releases(channel) {
    const shown = channel.releases.slice(0, 4).map(([release, n]) => `release ${release === null ? "none" : release} on ${number(n)}`);
    const more = channel.releases.length > 4 ? `, ${channel.releases.length - 4} more` : "";
    const devices = channel.devices === 1 ? "1 device reports" : `${number(channel.devices)} devices report`;
    return `${devices} on this channel: ${shown.join(", ")}${more}`;
  }

  function cell(content, attrs) {
    return el("td", attrs || {}, content);
  }

  function deviceRow(d) {
    const h = d.health;
    const health = el("td", { class: "health" }, el("span", { class: `badge level-${h.level}` }, h.level));
    if (h.problems.length) health.append(el("div", { class: "problems" }, h.problems.join("; ")));
    const release = d.release === null ? "-" : String(d.release) + (d.previous_release !== null ? ` (was ${d.previous_release})` : "");
    const install = d.install ? `${d.install.result} (${d.install.release})` : "-";
    const installBad = d.install && !["activated"].includes(d.install.result);
    const now = d.service || {};
    const before = d.previous_service || {};
    const latency = d.service ? `${fixed(now.latency_p50_ms, 1)} / ${fixed(now.latency_p90_ms, 1)}` : "-";
    const confidence = el("td", {}, fixed(now.mean_confidence, 2));
    if (h.confidence_delta !== null) {
      const tone = h.confidence_delta <= -0.05 ? "worse" : h.confidence_delta >= 0.05 ? "better" : "muted";
      confidence.append(" ", el("span", { class: tone, title: "against the model before on this device" },
                                `(${signed(h.confidence_delta, 2)})`));
    }
    const low = d.service ? share(now.low_confidence_share) + (d.previous_service ? ` (${share(before.low_confidence_share)})` : "") : "-";
    const counters = d.rollbacks === null && d.restarts === null ? "-" : `${d.rollbacks ?? "-"} / ${d.restarts ?? "-"}`;
    const refusals = cell(String(d.refusals), d.last_refusal ? { title: `${d.last_refusal.time}: ${d.last_refusal.what}` } : {});
    const error = cell(d.last_error || "-", { class: d.last_error ? "error-cell" : null });
    return el("tr", { class: `level-${h.level}`, "data-device": d.device_id },
              health, el("td", { class: "device" }, el("strong", {}, d.device_id), el("div", { class: "muted" }, d.device_class || "class unknown")),
              cell(d.channel || "-"),
              cell(release), cell(age(d.report_age_s), { title: d.reported || "never reported" }),
              cell(install, installBad ? { class: "worse" } : {}), cell(latency), confidence, cell(low),
              cell(counters), refusals, error);
  }

  function renderDevices(data) {
    const rows = data.devices.map(deviceRow);
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "12", class: "muted" }, "No device matches.")));
    document.querySelector("#devices tbody").replaceChildren(...rows);
    const first = data.total ? data.offset + 1 : 0;
    const last = data.offset + data.devices.length;
    $("range").textContent = `${number(first)}\u2013${number(last)} of ${number(data.total)}`;
    $("prev").disabled = data.offset === 0;
    $("next").disabled = last >= data.total;
    for (const th of document.querySelectorAll("#devices th[data-sort]")) {
      th.classList.toggle("sorted", th.dataset.sort === query.sort);
      th.dataset.order = th.dataset.sort === query.sort ? query.order : "";
    }
    if (data.total && data.offset >= data.total) setQuery({ offset: Math.max(0, data.total - query.limit) });
  }

  function setQuery(changes) {
    Object.assign(query, "offset" in changes ? {} : { offset: 0 }, changes);
    $("health").value = query.health;
    refresh();
  }

  let typing = null;
  $("q").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => setQuery({ q: $("q").value.trim() }), 300);
  });
  $("health").addEventListener("change", () => setQuery({ health: $("health").value }));
  $("channel").addEventListener("change", () => setQuery({ channel: $("channel").value }));
  $("limit").addEventListener("change", () => setQuery({ limit: Number($("limit").value) }));
  $("prev").addEventListener("click", () => setQuery({ offset: Math.max(0, query.offset - query.limit) }));
  $("next").addEventListener("click", () => setQuery({ offset: query.offset + query.limit }));
  for (const th of document.querySelectorAll("#devices th[data-sort]")) {
    th.addEventListener("click", () => {
      const key = th.dataset.sort;
      setQuery({ sort: key, order: query.sort === key && query.order === "asc" ? "desc" : "asc" });
    });
  }
  document.addEventListener("visibilitychange", () => { if (!document.hidden && !stopped) refresh(); });
  refresh();
})();
