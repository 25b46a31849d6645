/* txc dashboard: plain JavaScript, no build step, nothing loaded from elsewhere.
 *
 * Data arrives on one server-sent-event stream (/dashboard/events), read with fetch() rather
 * than EventSource because EventSource cannot send the Authorization header. Every `snapshot`
 * event is complete, so the page is right after any reconnect; `metrics` events carry the
 * leader's per-second activity, all of it first and then only the new seconds.
 *
 * Every text that comes from the system (labels, errors, names) goes into the page through
 * textContent, never as HTML.
 */
"use strict";

(() => {
  // -- named bounds and intervals ---------------------------------------------------------
  const TOKEN_KEY = "txc.dashboard.token"; // sessionStorage: gone when the tab closes
  const STUCK_AFTER_KEY = "txc.dashboard.stuckAfterS"; // localStorage: an operator's choice
  const DEFAULT_STUCK_AFTER_S = 30;
  const MAX_STUCK_AFTER_S = 86400;
  const RECONNECT_MIN_MS = 500;
  const RECONNECT_MAX_MS = 10000;
  const STALE_AFTER_MS = 4000; // no event for this long: the live marker turns amber
  const TICK_MS = 1000; // ages and the live marker are redrawn this often
  const DETAIL_REFRESH_MS = 1500; // an open transaction page is re-read this often
  const RATE_WINDOW_S = 60; // the cards' rates cover this many seconds
  const ABORT_BUCKET_S = 10; // the abort-rate chart's bars
  const CHART_POINTS = 120; // the charts average seconds into about this many points
  const CHART_TICKS_S = { 60: 15, 300: 60, 600: 120 }; // x-axis labels for each window
  const CHART_SPAN_KEY = "txc.dashboard.chartSpanS";
  const SERIES_SPAN_S = 600; // the server keeps ten minutes of seconds
  const MAX_TIMELINE_ROWS = 500; // a transaction page lists at most this many timeline rows
  const TOAST_MS = 7000;
  const ERROR_PREVIEW = 220; // characters of an error shown in a table cell
  const LAG_WARN_ENTRIES = 100; // a follower this far behind the leader is shown lagging
  const PREFIX_SEARCH_MIN = 6; // a search this long that matches nothing offers "open by id"
  const ACTION_BANNER_MS = 15000; // a refused action's banner stays this long
  const AUDIT_REFRESH_MS = 5000; // the audit tab is re-read this often while open
  const AUDIT_ROWS = 100;
  const HISTORY_PAGE = 50; // forgotten transactions read per page of the history view
  const MAX_HISTORY_ROWS = 1000; // "Load older" stops here: narrow the filters instead

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || "",
    authRequired: null,
    authProblem: null, // {status, message}: the stream itself is refused
    actionProblem: null, // {status, message, until}: an action was refused
    role: null, // the signed-in token's role ("admin" may act)
    audit: { items: null, error: null, timer: null },
    // This node's history of forgotten transactions (GET /v1/transactions?finished=true) and
    // its retention figures (GET /v1/cluster/retention): read on open and on Refresh, never polled
    // (they are counted in the database). `seq` drops the answer of a superseded request.
    history: { items: null, cursor: null, error: null, seq: 0, loading: false, at: null, filters: { state: "", label: "", participant: "" } },
    retention: { data: null, error: null, seq: 0, loading: false, at: null, fetches: 0 },
    view: null, // the view shown last (opening one reads what it needs once)
    snap: null,
    skewMs: 0, // browser clock minus the node's
    lastEventAt: 0,
    streamUp: false,
    streamError: null,
    since: null,
    source: null,
    series: { source: null, nodeId: null, points: [], error: null, recentLatency: null },
    participants: [],
    loginWaiters: [],
    streamCtrl: null,
    filters: { q: "", state: "", stuckOnly: false },
    stuckAfterS: clampThreshold(Number(localStorage.getItem(STUCK_AFTER_KEY)) || DEFAULT_STUCK_AFTER_S),
    detail: { txid: null, tx: null, timeline: null, error: null, timer: null, busy: false, version: 0, shown: null },
    chartSpanS: CHART_TICKS_S[Number(localStorage.getItem(CHART_SPAN_KEY))] ? Number(localStorage.getItem(CHART_SPAN_KEY)) : SERIES_SPAN_S,
    renderQueued: false,
    holding: false, // a pointer is pressed: rebuilding now could swallow the click
    keys: {}, // what each table was last built from: unchanged data is not rebuilt
  };

  function clampThreshold(v) {
    return Math.min(MAX_STUCK_AFTER_S, Math.max(1, Math.round(v)));
  }

  // -- small DOM helpers ------------------------------------------------------------------
  const $ = (id) => document.getElementById(id);

  function h(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function pill(cls, text, title) {
    return h("span", { class: "pill " + cls, title }, text);
  }

  const SVG_NS = "http://www.w3.org/2000/svg";
  function s(tag, attrs, ...children) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return e;
  }

  // -- formatting -------------------------------------------------------------------------
  const serverNowS = () => (Date.now() - state.skewMs) / 1000;
  const epoch = (iso) => (iso ? Date.parse(iso) / 1000 : null);

  function fmtAge(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
    const sec = Math.max(0, seconds);
    if (sec < 10) return sec.toFixed(1) + " s";
    if (sec < 90) return Math.round(sec) + " s";
    if (sec < 3600) return Math.floor(sec / 60) + " min " + String(Math.round(sec % 60)).padStart(2, "0") + " s";
    if (sec < 86400) return Math.floor(sec / 3600) + " h " + String(Math.floor((sec % 3600) / 60)).padStart(2, "0") + " min";
    return Math.floor(sec / 86400) + " d " + Math.floor((sec % 86400) / 3600) + " h";
  }

  function fmtLatency(v) {
    if (v === null || v === undefined) return "–";
    if (v === 0) return "0";
    if (v < 0.001) return (v * 1e6).toFixed(0) + " µs";
    if (v < 1) return (v * 1000).toFixed(v < 0.01 ? 1 : 0) + " ms";
    return v.toFixed(2) + " s";
  }

  /* The time of day; with the date in front when it is not today's (the history holds
     transactions of days ago). */
  function fmtClock(iso, withMs) {
    if (!iso) return "–";
    const d = new Date(iso);
    let t = d.toLocaleTimeString([], { hour12: false });
    if (withMs) t += "." + String(d.getMilliseconds()).padStart(3, "0");
    if (d.toDateString() !== new Date().toDateString()) t = d.toLocaleDateString([], { year: "numeric", month: "short", day: "numeric" }) + " " + t;
    return t;
  }

  function fmtWhen(tsSeconds) {
    if (!tsSeconds) return "never";
    return fmtAge(serverNowS() - tsSeconds) + " ago";
  }

  const fmtNum = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString());
  const fmtPct = (r) => (r === null || r === undefined ? "–" : (r * 100).toFixed(r < 0.995 && r > 0.005 ? 1 : 0) + " %");

  // -- API calls --------------------------------------------------------------------------
  class ApiFailure extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function authHeaders() {
    return state.token ? { Authorization: "Bearer " + state.token } : {};
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json", ...authHeaders() };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let r;
    try {
      r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store" });
    } catch (e) {
      throw new ApiFailure(0, "unreachable", "this node did not answer (" + e.message + ")");
    }
    let data = null;
    try {
      data = await r.json();
    } catch (_e) {
      data = null;
    }
    if (r.status === 401) noteAuthProblem(r.status, data);
    if (!r.ok) {
      const err = (data && data.error) || {};
      throw new ApiFailure(r.status, err.code || "http_" + r.status, err.message || r.statusText || "request failed");
    }
    return data;
  }

  function noteAuthProblem(status, data) {
    const msg = data && data.error && data.error.message;
    state.authProblem = { status, message: msg || (status === 401 ? "missing bearer token" : "token refused") };
    scheduleRender();
    if (!state.token) $("token-input").focus();
  }

  // -- the event stream -------------------------------------------------------------------
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const waitForLogin = () => new Promise((r) => state.loginWaiters.push(r));

  async function streamLoop() {
    let delay = RECONNECT_MIN_MS;
    for (;;) {
      const ctrl = new AbortController();
      state.streamCtrl = ctrl;
      const params = new URLSearchParams();
      if (state.source && state.since !== null) {
        params.set("since", String(state.since));
        params.set("source", state.source);
      }
      try {
        const r = await fetch("/dashboard/events?" + params, { headers: authHeaders(), signal: ctrl.signal, cache: "no-store" });
        if (r.status === 401 || r.status === 403) {
          let data = null;
          try {
            data = await r.json();
          } catch (_e) {
            data = null;
          }
          noteAuthProblem(r.status, data);
          setStream(false, null);
          await waitForLogin();
          continue;
        }
        if (!r.ok || !r.body) throw new Error("HTTP " + r.status);
        if (state.authProblem && state.authProblem.status) state.authProblem = null;
        setStream(true, null);
        if (state.role === null) loadRole();
        await readEvents(r.body.getReader());
        delay = RECONNECT_MIN_MS; // a stream that ended normally: reconnect at once
        continue;
      } catch (e) {
        if (ctrl.signal.aborted) continue; // the token changed: reconnect with the new one
        setStream(false, e.message || String(e));
      }
      await sleep(delay);
      delay = Math.min(delay * 2, RECONNECT_MAX_MS);
    }
  }

  async function readEvents(reader) {
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        let event = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (data.length) onEvent(event, JSON.parse(data.join("\n")));
      }
    }
  }

  function setStream(up, error) {
    state.streamUp = up;
    state.streamError = error;
    renderChrome();
  }

  function onEvent(event, data) {
    state.lastEventAt = Date.now();
    if (event === "snapshot") {
      state.snap = data;
      state.skewMs = Date.now() - data.now * 1000;
      scheduleRender();
    } else if (event === "metrics") {
      const sr = state.series;
      if (data.full || data.source !== sr.source) sr.points = [];
      sr.points.push(...data.points);
      const last = sr.points.length ? sr.points[sr.points.length - 1].t : null;
      const span = data.span_s || 600;
      if (last !== null) sr.points = sr.points.filter((p) => p.t > last - span);
      sr.source = data.source;
      sr.nodeId = data.node_id;
      sr.error = data.error;
      sr.recentLatency = data.recent_latency || null;
      state.participants = data.participants || [];
      state.source = data.source;
      state.since = last;
      scheduleRender();
    }
  }

  // -- login ------------------------------------------------------------------------------
  async function loadRole() {
    try {
      const me = await api("GET", "/dashboard/api/whoami");
      state.role = me.role;
      state.fingerprint = me.fingerprint;
    } catch (_e) {
      state.role = null;
    }
    state.keys = {};
    scheduleRender();
  }

  const isAdmin = () => state.role === "admin";

  function setToken(token) {
    state.role = null;
    state.keys = {};
    state.token = token;
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
    state.authProblem = null;
    if (state.streamCtrl) state.streamCtrl.abort();
    const waiters = state.loginWaiters.splice(0);
    waiters.forEach((w) => w());
    renderChrome();
    if (state.detail.txid) loadDetail();
    const view = currentRoute().view;
    if (view === "history") loadHistory(false);
    if (view === "cluster") loadRetention();
  }

  // -- stuck and attention ----------------------------------------------------------------
  function ageOf(row) {
    return serverNowS() - epoch(row.created_at);
  }

  function attention(row) {
    const reasons = [...row.flags];
    if (ageOf(row) > state.stuckAfterS) reasons.push("old");
    return reasons;
  }

  const ATTENTION_TEXT = {
    heuristic: ["heuristic", "a participant's own outcome contradicts (or may contradict) the decision"],
    retrying: ["retrying", "phase 2 failed for a participant and is being retried"],
    expired: ["expired", "undecided past its deadline"],
    old: ["stuck", "older than the stuck threshold"],
  };

  function attentionPills(reasons) {
    return reasons.map((r) => pill("f-" + r, ATTENTION_TEXT[r] ? ATTENTION_TEXT[r][0] : r, ATTENTION_TEXT[r] && ATTENTION_TEXT[r][1]));
  }

  // -- rendering: chrome (top bar, banners, cards) -----------------------------------------
  function scheduleRender() {
    if (state.renderQueued) return;
    state.renderQueued = true;
    requestAnimationFrame(() => {
      state.renderQueued = false;
      render();
    });
  }

  function selecting() {
    const sel = window.getSelection();
    return Boolean(sel && !sel.isCollapsed && sel.toString().trim());
  }

  /* Rebuild a table only when what it shows changed, and not while the operator presses a
     button or selects text in it (copying a txid or an error at 3 a.m. must work). */
  function changed(name, key) {
    if (state.keys[name] === key) return false;
    if (selecting()) return false;
    state.keys[name] = key;
    return true;
  }

  function updateAges() {
    for (const cell of document.querySelectorAll("[data-created]")) {
      const age = serverNowS() - epoch(cell.dataset.created);
      cell.textContent = fmtAge(age);
      cell.classList.toggle("old", age > state.stuckAfterS);
    }
  }

  function render() {
    if (state.holding) return; // redrawn on release
    renderChrome();
    renderCards();
    const route = currentRoute();
    const d = state.detail;
    // A forgotten transaction's page belongs with the history it was found in.
    const tab = route.view === "tx" && d.tx && d.tx.txid === route.txid && d.tx.forgotten_at ? "history" : route.tab;
    for (const t of document.querySelectorAll("#tabs a")) t.classList.toggle("active", t.dataset.tab === tab);
    for (const v of ["transactions", "history", "tx", "cluster", "participants", "activity", "audit"]) $("view-" + v).hidden = route.view !== v;
    if (route.view === "transactions") renderTransactions();
    else if (route.view === "history") renderHistory();
    else if (route.view === "tx") renderDetail();
    else if (route.view === "cluster") renderCluster();
    else if (route.view === "participants") renderParticipants();
    else if (route.view === "activity") renderActivity();
    else if (route.view === "audit") renderAudit();
  }

  function renderChrome() {
    const snap = state.snap;
    if (snap) {
      const st = snap.cluster.status;
      $("fact-node").textContent = snap.node.node_id;
      const role = snap.node.role || "leader";
      const rp = $("fact-role");
      rp.className = "pill " + role;
      rp.textContent = role;
      $("fact-leader").textContent = st.leader || "none";
      $("fact-term").textContent = st.term !== undefined ? st.term : "–";
    }
    // live marker
    const live = $("live");
    const since = Date.now() - state.lastEventAt;
    let mode = "connecting";
    let text = "connecting…";
    if (state.authProblem && !state.streamUp) {
      mode = "auth";
      text = "not signed in";
    } else if (state.streamError && !state.streamUp) {
      mode = "down";
      text = "disconnected – retrying";
    } else if (state.lastEventAt && since > STALE_AFTER_MS) {
      mode = "stale";
      text = "no update for " + fmtAge(since / 1000);
    } else if (state.lastEventAt) {
      mode = "live";
      text = "live";
    }
    live.dataset.state = mode;
    $("live-text").textContent = text;
    // auth box
    const signedIn = Boolean(state.token);
    $("token-input").hidden = signedIn;
    $("sign-in").hidden = signedIn;
    $("sign-out").hidden = !signedIn;
    let who = "";
    if (state.authRequired === false) who = "open access (no tokens configured)";
    else if (state.role) who = "signed in · " + state.role + (state.role === "admin" ? "" : " (view only)");
    else if (signedIn) who = "signed in";
    $("auth-state").textContent = who;
    renderBanners();
  }

  function renderBanners() {
    const box = $("banners");
    box.replaceChildren();
    const p = state.authProblem;
    if (p) {
      let title = "403 · Forbidden";
      let what = "This token may not view the dashboard (" + p.message + "). Sign out and sign in with a read or admin token.";
      if (p.status === 401 && !state.token) {
        title = "401 · Not signed in";
        what = "This node requires an API token. Enter it above and sign in.";
      } else if (p.status === 401) {
        title = "401 · Token refused";
        what = "This node does not know the token (" + p.message + "). Sign out and sign in with a valid token.";
      }
      box.append(h("div", { class: "banner error", id: "auth-banner", role: "alert" }, h("b", {}, title), h("span", {}, what)));
    }
    const ap = state.actionProblem;
    if (ap && ap.until > Date.now()) {
      box.append(h("div", { class: "banner error", id: "action-banner", role: "alert" }, h("b", {}, ap.status + " · Action refused"), h("span", {}, ap.message)));
    }
    if (state.streamError && !state.streamUp && !p) {
      box.append(h("div", { class: "banner error" }, h("b", {}, "Disconnected"), h("span", {}, "The live stream from this node broke (" + state.streamError + "); reconnecting. What you see may be out of date.")));
    }
    const snap = state.snap;
    if (snap && snap.cluster.status.mode === "raft" && !snap.cluster.status.leader) {
      box.append(h("div", { class: "banner warn" }, h("b", {}, "No leader"), h("span", {}, "The group has no leader right now (election in progress or no quorum): nothing commits until one is elected.")));
    }
    if (snap && snap.recent && snap.recent.error) {
      box.append(h("div", { class: "banner warn" }, h("b", {}, "Storage"), h("span", {}, "This node could not read its transactions table: " + snap.recent.error)));
    }
  }

  function windowPoints(seconds) {
    const pts = state.series.points;
    if (!pts.length) return [];
    const last = pts[pts.length - 1].t;
    return pts.filter((p) => p.t > last - seconds);
  }

  function sum(pts, key) {
    return pts.reduce((a, p) => a + (p[key] || 0), 0);
  }

  function renderCards() {
    const snap = state.snap;
    if (!snap) return;
    const inf = snap.inflight;
    $("v-inflight").textContent = fmtNum(inf.total);
    $("n-inflight").textContent = Object.entries(inf.by_state)
      .map(([k, v]) => v + " " + k)
      .join(" · ");
    const rows = inf.rows;
    const stuck = rows.filter((r) => attention(r).length).length;
    $("v-stuck").textContent = fmtNum(stuck);
    $("n-stuck").textContent = stuck ? "retrying, heuristic or older than " + state.stuckAfterS + " s" : "none older than " + state.stuckAfterS + " s";
    $("card-stuck").classList.toggle("bad", stuck > 0);
    $("tab-count").textContent = inf.total ? String(inf.total) : "";
    $("tab-count").classList.toggle("bad", stuck > 0);
    const heur = heuristicRows().length;
    $("v-heuristic").textContent = fmtNum(heur);
    $("card-heuristic").classList.toggle("heur", heur > 0);
    const pts = windowPoints(RATE_WINDOW_S);
    const secs = Math.max(1, pts.length);
    const committed = sum(pts, "committed");
    const aborted = sum(pts, "aborted");
    $("v-commits").textContent = pts.length ? (committed / secs).toFixed(committed / secs < 10 ? 1 : 0) : "–";
    const decided = committed + aborted;
    const rate = decided ? aborted / decided : null;
    $("v-abort").textContent = fmtPct(rate);
    $("n-abort").textContent = decided ? aborted + " of " + decided + " decisions, last 60 s" : "no decision in the last 60 s";
    $("card-abort").classList.toggle("warn", rate !== null && rate > 0.1);
    const lat = state.series.recentLatency;
    $("v-latency").textContent = lat && lat.p95 !== null ? fmtLatency(lat.p95) : "–";
    $("n-latency").textContent = lat && lat.n ? lat.n + " commits, last 60 s (max " + fmtLatency(lat.max) + ")" : "no commit in the last 60 s";
  }

  function heuristicRows() {
    const snap = state.snap;
    if (!snap) return [];
    const seen = new Set();
    const out = [];
    for (const r of [...snap.inflight.rows, ...(snap.recent.rows || [])]) {
      if (r.heuristic && !r.heuristic_acknowledged && !seen.has(r.txid)) {
        seen.add(r.txid);
        out.push(r);
      }
    }
    return out;
  }

  // -- transactions -----------------------------------------------------------------------
  function matches(row, q) {
    if (!q) return true;
    const hay = [row.txid, row.state, row.decision_reason || ""];
    for (const [k, v] of Object.entries(row.labels || {})) hay.push(k + ":" + v, k + "=" + v);
    for (const p of row.participants) hay.push(p.name, p.url, p.last_error || "", p.vote_reason || "");
    return hay.some((x) => x.toLowerCase().includes(q));
  }

  function labelChips(labels) {
    const entries = Object.entries(labels || {});
    if (!entries.length) return null;
    return h("div", { class: "labels" }, entries.map(([k, v]) => h("span", { class: "label" }, k + " ", h("b", {}, v))));
  }

  function txLink(txid) {
    return h("a", { class: "txid", href: "#/tx/" + encodeURIComponent(txid), title: txid }, txid);
  }

  function participantLines(parts) {
    if (!parts.length) return h("span", { class: "muted" }, "none enlisted");
    return h(
      "div",
      { class: "plist" },
      parts.map((p) =>
        h(
          "div",
          { class: "pline", title: p.url },
          h("span", { class: "pname" }, p.name),
          pill("v-" + (p.vote || "none"), p.vote ? "vote " + p.vote : "no vote", p.vote_reason || undefined),
          pill("p-" + p.phase2, p.phase2.replace("_", " ")),
          h("span", { class: "attempts" + (p.attempts > 1 ? " many" : "") }, "×" + p.attempts),
        ),
      ),
    );
  }

  function lastErrors(parts) {
    const errs = parts.filter((p) => p.last_error);
    if (!errs.length) return h("span", { class: "muted" }, "–");
    return h(
      "div",
      {},
      errs.map((p) => {
        const text = p.last_error.length > ERROR_PREVIEW ? p.last_error.slice(0, ERROR_PREVIEW) + "…" : p.last_error;
        return h("div", { class: "err", title: p.last_error }, h("span", { class: "who" }, p.name + ": "), text);
      }),
    );
  }

  function renderTransactions() {
    const snap = state.snap;
    const body = $("live-body");
    const empty = $("live-empty");
    if (!snap) {
      body.replaceChildren();
      empty.hidden = false;
      empty.className = "empty";
      empty.textContent = state.authProblem ? "Sign in to see transactions." : "Waiting for the first update…";
      return;
    }
    const q = state.filters.q.trim().toLowerCase();
    const rows = snap.inflight.rows.filter(
      (r) => matches(r, q) && (!state.filters.state || r.state === state.filters.state) && (!state.filters.stuckOnly || attention(r).length),
    );
    const key = JSON.stringify(rows.map((r) => [r.txid, r.state, r.labels, r.participants, r.heuristic, r.heuristic_acknowledged, attention(r)]));
    if (!changed("live", key + "|" + q)) {
      updateAges();
      renderLiveNote(snap);
      renderRecent(q);
      return;
    }
    body.replaceChildren(
      ...rows.map((r) => {
        const reasons = attention(r);
        const age = ageOf(r);
        const cls = [reasons.length ? "stuck" : "", reasons.includes("heuristic") ? "heuristic" : ""].join(" ").trim();
        return h(
          "tr",
          { class: cls || null, "data-txid": r.txid, "data-attention": reasons.join(" ") },
          h("td", {}, txLink(r.txid), labelChips(r.labels)),
          h("td", {}, pill("s-" + r.state, r.state)),
          h("td", { class: "age" + (age > state.stuckAfterS ? " old" : ""), "data-created": r.created_at }, fmtAge(age)),
          h("td", {}, participantLines(r.participants)),
          h("td", {}, lastErrors(r.participants)),
          h("td", {}, reasons.length ? attentionPills(reasons) : h("span", { class: "muted" }, "–")),
          h("td", {}, h("a", { href: "#/tx/" + encodeURIComponent(r.txid) }, "details →")),
        );
      }),
    );
    empty.hidden = rows.length > 0;
    if (!rows.length) {
      const filtered = q || state.filters.state || state.filters.stuckOnly;
      empty.className = filtered ? "empty" : "empty ok";
      empty.replaceChildren(filtered ? "No in-flight transaction matches." : "No transaction in flight.");
      if (q.length >= PREFIX_SEARCH_MIN) {
        empty.append(" ", h("a", { href: "#/tx/" + encodeURIComponent(state.filters.q.trim()) }, "Open transaction “" + state.filters.q.trim() + "” →"));
      }
    }
    renderLiveNote(snap);
    renderRecent(q);
  }

  function renderLiveNote(snap) {
    const inf = snap.inflight;
    $("live-note").textContent = inf.truncated
      ? "showing " + inf.rows.length + " of " + inf.total + " in flight (flagged first, then oldest)"
      : "node " + snap.node.node_id + "'s applied state · applied index " + fmtNum(snap.cluster.status.applied_index);
  }

  function renderRecent(q) {
    const snap = state.snap;
    const rows = (snap.recent.rows || []).filter((r) => (r.state === "committed" || r.state === "aborted") && matches(r, q));
    if (!changed("recent", JSON.stringify([rows.map((r) => [r.txid, r.state, r.heuristic_acknowledged]), q]))) return;
    $("recent-body").replaceChildren(
      ...rows.map((r) => {
        const took = r.completed_at && r.created_at ? epoch(r.completed_at) - epoch(r.created_at) : null;
        const heur = r.heuristic && !r.heuristic_acknowledged;
        return h(
          "tr",
          { class: heur ? "heuristic" : null, "data-txid": r.txid },
          h("td", {}, txLink(r.txid)),
          h("td", {}, pill("o-" + (r.outcome || "none"), r.outcome || "–"), heur ? [" ", pill("heuristic", "heuristic " + r.heuristic)] : null),
          h("td", {}, labelChips(r.labels)),
          h("td", {}, r.participants.map((p) => p.name).join(", ") || h("span", { class: "muted" }, "none")),
          h("td", { class: "age", title: r.created_at }, fmtClock(r.created_at)),
          h("td", { class: "age" }, took === null ? "–" : fmtAge(took)),
          h("td", { class: "muted" }, r.decision_reason || ""),
        );
      }),
    );
    $("recent-empty").hidden = rows.length > 0;
    $("recent-note").textContent = "newest " + (snap.recent.rows || []).length + " transactions, finished ones shown";
  }

  // -- history: forgotten transactions ----------------------------------------------------
  /* The node whose history the page shows: each node keeps its own, and a follower passes
     every /v1 request to its leader, so a follower's page shows the leader's. */
  function answeringNode() {
    const snap = state.snap;
    if (!snap) return "the answering node";
    const st = snap.cluster.status;
    if (st.mode === "raft" && snap.node.role !== "leader") return st.leader || "the leader";
    return snap.node.node_id;
  }

  async function loadHistory(more) {
    const hs = state.history;
    if (more && (!hs.cursor || hs.loading)) return;
    const seq = ++hs.seq;
    const params = new URLSearchParams({ finished: "true", limit: String(HISTORY_PAGE) });
    const f = hs.filters;
    if (f.state) params.set("state", f.state);
    if (f.label.trim()) params.set("label", f.label.trim());
    if (f.participant.trim()) params.set("participant", f.participant.trim());
    if (more) params.set("cursor", hs.cursor);
    hs.loading = true;
    if (!more) hs.error = null;
    scheduleRender();
    try {
      const r = await api("GET", "/v1/transactions?" + params);
      if (seq !== hs.seq) return;
      if (r.source !== "history") throw new ApiFailure(0, "no_history", "this node does not list a history of forgotten transactions");
      hs.items = more ? [...(hs.items || []), ...r.items] : r.items;
      hs.cursor = hs.items.length < MAX_HISTORY_ROWS ? r.next_cursor : null;
      hs.truncated = Boolean(r.next_cursor) && hs.items.length >= MAX_HISTORY_ROWS;
      hs.error = null;
      hs.at = Date.now();
    } catch (e) {
      if (seq !== hs.seq) return;
      hs.error = e;
      if (!more) hs.items = null;
    } finally {
      if (seq === hs.seq) hs.loading = false;
    }
    scheduleRender();
  }

  function renderHistory() {
    const hs = state.history;
    const items = hs.items || [];
    const f = hs.filters;
    const filtered = Boolean(f.state || f.label.trim() || f.participant.trim());
    const err = hs.error ? hs.error.status + " " + hs.error.message : null;
    const node = answeringNode();
    $("history-more").hidden = !hs.cursor;
    $("history-more").disabled = hs.loading;
    $("history-refresh").disabled = hs.loading;
    $("history-note").textContent = hs.loading
      ? "reading…"
      : hs.at
        ? node + "'s history · " + items.length + (hs.cursor ? "+" : "") + " shown · read at " + new Date(hs.at).toLocaleTimeString([], { hour12: false }) + (hs.truncated ? " · narrow the filters to see older ones" : "")
        : "";
    if (!changed("history", JSON.stringify([items.map((r) => r.txid), err, hs.items === null, filtered]))) return;
    $("history-body").replaceChildren(
      ...items.map((r) => {
        const took = r.completed_at && r.created_at ? epoch(r.completed_at) - epoch(r.created_at) : null;
        const heur = r.heuristic && !r.heuristic_acknowledged;
        return h(
          "tr",
          { class: heur ? "heuristic" : null, "data-txid": r.txid },
          h("td", {}, txLink(r.txid)),
          h("td", {}, pill("o-" + (r.outcome || "none"), r.outcome || "–"), r.heuristic ? [" ", pill("heuristic", "heuristic " + r.heuristic + (r.heuristic_acknowledged ? " (acknowledged)" : ""))] : null),
          h("td", {}, labelChips(r.labels)),
          h("td", {}, r.participants.map((p) => p.name).join(", ") || h("span", { class: "muted" }, "none")),
          h("td", { class: "age", title: r.created_at }, fmtClock(r.created_at)),
          h("td", { class: "age" }, took === null ? "–" : fmtAge(took)),
          h("td", { class: "age forgotten", title: r.forgotten_at }, fmtClock(r.forgotten_at), h("div", { class: "muted small" }, fmtWhen(epoch(r.forgotten_at)))),
          h("td", { class: "muted" }, r.decision_reason || ""),
        );
      }),
    );
    const empty = $("history-empty");
    empty.hidden = items.length > 0 && !err;
    empty.className = "empty";
    if (err) empty.textContent = "Could not read the history: " + (hs.error.status ? "HTTP " + err : hs.error.message);
    else if (hs.items === null) empty.textContent = state.authProblem ? "Sign in to see the history." : "Loading…";
    else if (!items.length) empty.textContent = filtered ? "No forgotten transaction in " + node + "'s history matches." : "No forgotten transaction in " + node + "'s history yet: finished transactions stay in the live view until retention forgets them.";
  }

  // -- one transaction --------------------------------------------------------------------
  async function loadDetail() {
    const d = state.detail;
    const txid = d.txid;
    if (!txid || d.busy) return;
    d.busy = true;
    try {
      const enc = encodeURIComponent(txid);
      const [tx, tl] = await Promise.all([api("GET", "/v1/transactions/" + enc), api("GET", "/v1/transactions/" + enc + "/timeline")]);
      if (d.txid !== txid) return;
      if (JSON.stringify([tx, tl.events]) !== JSON.stringify([d.tx, d.timeline]) || d.error) d.version += 1;
      d.tx = tx;
      d.timeline = tl.events;
      d.error = null;
    } catch (e) {
      if (d.txid !== txid) return;
      d.error = e;
      d.version += 1;
    } finally {
      d.busy = false;
    }
    scheduleRender();
  }

  function openDetail(txid) {
    const d = state.detail;
    if (d.txid === txid) return;
    closeDetail();
    d.txid = txid;
    d.tx = null;
    d.timeline = null;
    d.error = null;
    d.version += 1;
    loadDetail();
    d.timer = setInterval(() => {
      if (!d.tx || !["committed", "aborted"].includes(d.tx.state) || d.tx.heuristic) loadDetail();
    }, DETAIL_REFRESH_MS);
  }

  function closeDetail() {
    const d = state.detail;
    if (d.timer) clearInterval(d.timer);
    d.timer = null;
    d.txid = null;
  }

  function fact(label, value, wide) {
    return [h("div", { class: wide ? "wide" : null }, h("dt", {}, label), h("dd", {}, value === null || value === undefined || value === "" ? "–" : value))];
  }

  const ADMIN_ONLY = "admin only: sign in with an admin token";

  function renderDetail() {
    const d = state.detail;
    const key = d.version + "|" + state.role;
    if (d.shown === key || (d.shown !== null && selecting())) {
      updateAges();
      return;
    }
    d.shown = key;
    const box = $("tx-content");
    if (d.error) {
      const e = d.error;
      box.replaceChildren(
        h("div", { class: "banner error" }, h("b", {}, e.status ? "HTTP " + e.status : "Error"), h("span", {}, e.status === 404 ? "No transaction " + d.txid + " is known to the group: never recorded, or forgotten longer ago than its tombstone and " + answeringNode() + "'s history are kept." : e.message)),
      );
      return;
    }
    const t = d.tx;
    if (!t) {
      box.replaceChildren(h("p", { class: "muted" }, "Loading " + d.txid + "…"));
      return;
    }
    const created = epoch(t.created_at);
    const end = epoch(t.completed_at) || serverNowS();
    const undecided = t.outcome === null;
    const inPhase2 = t.state === "committing" || t.state === "aborting";
    const heurOpen = Boolean(t.heuristic) && !t.heuristic_acknowledged;
    const admin = isAdmin();
    const head = h(
      "div",
      { class: "tx-head" },
      h("span", { class: "txid", id: "tx-id" }, t.txid),
      pill("s-" + t.state, t.state),
      t.outcome ? pill("o-" + t.outcome, "outcome " + t.outcome) : pill("muted", "undecided"),
      t.heuristic ? pill("heuristic", "heuristic " + t.heuristic + (t.heuristic_acknowledged ? " (acknowledged)" : "")) : null,
      t.source === "history" ? pill("src-history", "forgotten · from history", "the replicated state forgot it; this is this node's history") : null,
      t.source === "tombstone" ? pill("src-tombstone", "tombstone only", "only the decision is kept") : null,
    );
    const source = sourceNote(t);
    const facts = h(
      "dl",
      { class: "facts" },
      fact("Began", fmtClock(t.created_at, true)),
      fact("Expires", fmtClock(t.expires_at, true)),
      fact("Prepare started", t.prepare_started_at ? fmtClock(t.prepare_started_at, true) : null),
      fact("Decided", t.decided_at ? fmtClock(t.decided_at, true) : null),
      fact("Completed", t.completed_at ? fmtClock(t.completed_at, true) : null),
      t.forgotten_at ? fact("Forgotten", h("span", { id: "tx-forgotten", title: t.forgotten_at }, fmtClock(t.forgotten_at, true))) : null,
      fact(t.completed_at ? "Took" : "Age", t.completed_at ? fmtAge(end - created) : h("span", { "data-created": t.created_at }, fmtAge(end - created))),
      t.source === "tombstone" ? null : fact("Timeout", t.timeout_s + " s"),
      fact("Idempotency key", t.idempotency_key),
      fact("Labels", labelChips(t.labels), true),
    );
    const actions = h(
      "div",
      { class: "actions" },
      h("button", { class: "btn danger", id: "act-abort", disabled: !undecided || !admin, title: !admin ? ADMIN_ONLY : undecided ? "Decide ABORT now" : "Already decided: " + t.outcome, onclick: () => runAction("abort", t) }, "Abort transaction"),
      h("button", { class: "btn warn", id: "act-retry", disabled: !inPhase2 || !admin, title: !admin ? ADMIN_ONLY : inPhase2 ? "Send the outcome to waiting participants now" : "Nothing to retry", onclick: () => runAction("retry", t) }, "Retry phase 2 now"),
      h("button", { class: "btn ghost", id: "act-ack", disabled: !heurOpen || !admin, title: !admin ? ADMIN_ONLY : heurOpen ? "Record that an operator has dealt with it" : "No open heuristic report", onclick: () => runAction("ack", t) }, "Acknowledge heuristic"),
      h("span", { class: "hint" }, (admin ? "" : "Actions need an admin token. ") + "There is no “force commit”: COMMIT needs every participant's YES (rule 2)."),
    );
    const reason = t.decision_reason ? h("div", { class: "reason " + (t.outcome === "abort" ? "abort" : "") }, h("b", {}, "Decision reason: "), t.decision_reason) : null;
    const parts = h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { class: "grid", id: "tx-participants" },
        h("thead", {}, h("tr", {}, ["Participant", "Vote", "Phase 2", "Attempts", "Last attempt", "Acknowledged", "Last error / heuristic", "URL"].map((x) => h("th", {}, x)))),
        h(
          "tbody",
          {},
          t.participants.map((p) =>
            h(
              "tr",
              { class: p.phase2 === "pending" && p.last_error ? "stuck" : p.heuristic ? "heuristic" : null, "data-participant": p.name },
              h("td", { class: "pname" }, p.name),
              h("td", {}, pill("v-" + (p.vote || "none"), p.vote || "no vote"), p.vote_reason ? h("div", { class: "muted small" }, p.vote_reason) : null),
              h("td", {}, pill("p-" + p.phase2, p.phase2.replace("_", " "))),
              h("td", { class: "num" }, String(p.attempts)),
              h("td", { class: "age" }, p.last_attempt_at ? fmtClock(p.last_attempt_at, true) : "–"),
              h("td", { class: "age" }, p.acked_at ? fmtClock(p.acked_at, true) : "–"),
              h("td", {}, p.last_error ? h("div", { class: "err" }, p.last_error) : h("span", { class: "muted" }, "–"), p.heuristic ? pill("heuristic", "reported " + p.heuristic) : null),
              h("td", { class: "mono muted" }, p.url),
            ),
          ),
        ),
      ),
    );
    const events = d.timeline || [];
    const begin = events.length ? epoch(events[0].at) : created;
    const timeline = h("ol", { class: "timeline", id: "tx-timeline" });
    for (const g of groupRepeats(events).slice(0, MAX_TIMELINE_ROWS)) {
      const ev = g.first;
      timeline.append(
        h(
          "li",
          { "data-kind": ev.kind },
          h("span", { class: "idx", title: "log index" }, "#" + ev.index),
          h("span", { class: "when" }, fmtClock(ev.at, true)),
          h("span", { class: "rel" }, "+" + (epoch(ev.at) - begin).toFixed(3) + " s"),
          h("span", { class: "kind k-" + ev.kind }, ev.kind.replace(/_/g, " "), g.count > 1 ? " ×" + g.count : ""),
          h(
            "span",
            { class: "detail" },
            describe(ev.detail),
            g.count > 1 ? h("div", { class: "muted" }, g.count + " identical attempts, the last at " + fmtClock(g.last.at, true) + " (#" + g.last.index + ")") : null,
          ),
          ev.detail && ev.detail.state ? pill("s-" + ev.detail.state, ev.detail.state) : h("span"),
        ),
      );
    }
    if (groupRepeats(events).length > MAX_TIMELINE_ROWS) timeline.append(h("li", { class: "muted" }, "… more entries not shown"));
    const partsBlock = t.source === "tombstone" && !t.participants.length ? h("p", { class: "muted", id: "tx-no-participants" }, "A tombstone keeps no participants.") : parts;
    if (!events.length) timeline.append(h("li", { class: "muted" }, "No timeline on this node."));
    box.replaceChildren(head, source || "", facts, reason || "", actions, h("h2", {}, "Participants (" + t.participants.length + ")"), partsBlock, h("h2", {}, "Timeline (commands applied from the log)"), timeline);
  }

  /* Where the record came from, when the replicated state no longer holds it. */
  function sourceNote(t) {
    if (!t.forgotten_at) return null;
    const node = answeringNode();
    const when = fmtClock(t.forgotten_at, true) + " (" + fmtWhen(epoch(t.forgotten_at)) + ")";
    const toHistory = h("a", { href: "#/history" }, "all forgotten transactions →");
    if (t.source === "tombstone") {
      return h(
        "div",
        { class: "banner info tomb", id: "tx-source", "data-source": "tombstone" },
        h("b", {}, "Tombstone only"),
        h("span", {}, "Forgotten at " + when + ". The replicated state keeps only its decision, and " + node + " has no full record in its history (it caught up by snapshot after this transaction was forgotten; another node's dashboard may show it). ", toHistory),
      );
    }
    return h(
      "div",
      { class: "banner info", id: "tx-source", "data-source": t.source || "" },
      h("b", {}, "Forgotten"),
      h("span", {}, "The group's replicated state forgot this finished transaction at " + when + " (retention); this is its full record from " + node + "'s own history. Its decision stays answered while its tombstone is kept. ", toHistory),
    );
  }

  /* Phase-2 attempts that failed the same way, one after the other, read as one row: a
     transaction stuck for hours has thousands of them. */
  function groupRepeats(events) {
    const out = [];
    for (const ev of events) {
      const last = out[out.length - 1];
      if (last && ev.kind === "phase2_attempt" && last.first.kind === ev.kind && JSON.stringify(last.first.detail) === JSON.stringify(ev.detail)) {
        last.count += 1;
        last.last = ev;
      } else out.push({ first: ev, last: ev, count: 1 });
    }
    return out;
  }

  function describe(detail) {
    if (!detail) return "";
    return Object.entries(detail)
      .filter(([k, v]) => k !== "state" && v !== null && v !== undefined && !(k === "status" && v === "ok"))
      .map(([k, v]) => k + "=" + (typeof v === "object" ? JSON.stringify(v) : v))
      .join("  ");
  }

  // -- actions ----------------------------------------------------------------------------
  const ACTIONS = {
    abort: {
      title: "Abort this transaction?",
      text: "The group decides ABORT, durably. Every participant will be told to roll back its work. This cannot be undone.",
      button: "Abort transaction",
      path: (txid) => "/v1/transactions/" + encodeURIComponent(txid) + "/abort",
      done: (r) => "Aborted: state is now " + r.state + ".",
    },
    retry: {
      title: "Retry phase 2 now?",
      text: "The leader sends the decided outcome again, right now, to every participant that has not acknowledged it, instead of waiting for the next backoff.",
      button: "Retry now",
      path: (txid) => "/v1/transactions/" + encodeURIComponent(txid) + "/retry",
      done: (r) => (r.retrying ? "Phase 2 retried now (state " + r.state + ")." : "No phase-2 driver was waiting; the leader's supervisor will resume it."),
    },
    ack: {
      title: "Acknowledge the heuristic outcome?",
      text: "Record that an operator has dealt with the participants whose outcome contradicts the decision. The flag stays in the record, marked acknowledged.",
      button: "Acknowledge",
      path: (txid) => "/v1/transactions/" + encodeURIComponent(txid) + "/heuristic/acknowledge",
      done: () => "Heuristic outcome acknowledged.",
    },
  };

  async function runAction(kind, t) {
    const a = ACTIONS[kind];
    const ok = await confirmDialog(a.title, [h("p", {}, "Transaction ", h("span", { class: "txid" }, t.txid), " (" + t.state + ")."), h("p", {}, a.text)], a.button, kind !== "ack");
    if (!ok) return;
    try {
      const r = await api("POST", a.path(t.txid));
      toast(a.done(r));
    } catch (e) {
      actionFailed(a.button, e);
    }
    loadDetail();
  }

  async function transferLeadership(member) {
    const ok = await confirmDialog(
      "Transfer leadership to " + (member.node_id || "node " + member.id) + "?",
      [h("p", {}, "The current leader hands over to this member once its log is up to date. Commits pause for about an election's time; in-flight transactions carry on under the new leader.")],
      "Transfer leadership",
      true,
    );
    if (!ok) return;
    try {
      await api("POST", "/dashboard/api/transfer-leadership", { to: member.id });
      toast("Leadership transfer to " + (member.node_id || member.id) + " requested.");
    } catch (e) {
      actionFailed("Transfer leadership", e);
    }
  }

  function actionFailed(what, e) {
    toast(what + " failed: HTTP " + e.status + " " + e.code + " – " + e.message, true);
    if (e.status === 401 || e.status === 403) {
      state.actionProblem = { status: e.status, message: what + ": " + e.message, until: Date.now() + ACTION_BANNER_MS };
      renderBanners();
    }
  }

  function confirmDialog(title, body, button, danger) {
    const dlg = $("confirm");
    $("confirm-title").textContent = title;
    $("confirm-body").replaceChildren(...body);
    const ok = $("confirm-ok");
    ok.textContent = button;
    ok.className = "btn " + (danger ? "danger" : "warn");
    return new Promise((resolve) => {
      const finish = (v) => {
        ok.onclick = null;
        $("confirm-cancel").onclick = null;
        dlg.onclose = null;
        if (dlg.open) dlg.close();
        resolve(v);
      };
      ok.onclick = () => finish(true);
      $("confirm-cancel").onclick = () => finish(false);
      dlg.onclose = () => finish(false);
      dlg.showModal();
      $("confirm-cancel").focus();
    });
  }

  function toast(text, error) {
    const t = h("div", { class: "toast" + (error ? " error" : ""), role: error ? "alert" : "status" }, text);
    $("toasts").append(t);
    setTimeout(() => t.remove(), TOAST_MS);
  }

  // -- cluster ----------------------------------------------------------------------------
  function renderCluster() {
    renderRetention();
    const snap = state.snap;
    if (!snap) return;
    const st = snap.cluster.status;
    const views = snap.cluster.views || {};
    const selfId = st.id !== undefined ? st.id : st.node_id;
    const viewOf = (id) => (String(id) === String(selfId) ? { ok: true, status: st } : views[String(id)]);
    const leaderView = st.role === "leader" || st.mode === "single-node" ? st : (viewOf(st.leader_id) || {}).status;
    const viewKey = Object.entries(views).map(([k, v]) => [k, v.ok, v.error, v.status && [v.status.role, v.status.term, v.status.commit_index, v.status.applied_index, v.status.members]]);
    if (!changed("cluster", JSON.stringify([st, viewKey, state.role]))) return;
    const leaderMembers = {};
    for (const m of (leaderView && leaderView.members) || []) leaderMembers[String(m.id)] = m;
    $("cluster-summary").replaceChildren(
      summaryCard("Leader", st.leader || "none", st.leader_url || "no leader elected"),
      summaryCard("Term", fmtNum(st.term), st.mode === "raft" ? "leader changes seen here: " + fmtNum(st.leader_changes) : "single node, no Raft"),
      summaryCard("Commit index", fmtNum(st.commit_index), "as " + snap.node.node_id + " knows it"),
      summaryCard("Applied index", fmtNum(st.applied_index), "apply lag " + fmtNum(Math.max(0, st.commit_index - st.applied_index))),
      summaryCard("Members", fmtNum((st.members || []).length), (st.members || []).filter((m) => m.voter).length + " voters"),
    );
    $("members-body").replaceChildren(
      ...(st.members || []).map((m) => {
        const v = viewOf(m.id) || { ok: false, error: "not polled yet" };
        const own = v.status;
        const lm = leaderMembers[String(m.id)] || {};
        const lag = lm.lag;
        const isLeader = own ? own.role === "leader" : m.role === "leader";
        const healthPills = [];
        if (!v.ok) healthPills.push(pill("down", "unreachable", v.error));
        else if (lm.healthy === false) healthPills.push(pill("warn", "not heard by leader"));
        else if (lag !== null && lag !== undefined && lag > LAG_WARN_ENTRIES) healthPills.push(pill("warn", "lagging"));
        else healthPills.push(pill("ok", "healthy"));
        const canLead = st.mode === "raft" && m.voter && !isLeader && v.ok && isAdmin();
        return h(
          "tr",
          { "data-member": m.node_id || m.id, class: v.ok ? null : "stuck" },
          h("td", {}, h("b", {}, m.node_id || String(m.id)), String(m.id) === String(selfId) ? h("span", { class: "muted small" }, "  (this page)") : null),
          h("td", {}, h("div", { class: "health" }, healthPills, v.ok ? null : h("span", { class: "muted small" }, v.error))),
          h("td", {}, pill(own ? own.role : m.role, own ? own.role : m.role), m.voter ? null : pill("learner", "learner")),
          h("td", { class: "num" }, own ? fmtNum(own.term) : "–"),
          h("td", { class: "num" }, own ? fmtNum(own.commit_index) : "–"),
          h("td", { class: "num" }, own ? fmtNum(own.applied_index) : "–"),
          h("td", { class: "num" }, lag === null || lag === undefined ? "–" : fmtNum(lag) + " entries"),
          h("td", { class: "num" }, lm.match_index === null || lm.match_index === undefined ? "–" : fmtNum(lm.match_index)),
          h("td", { class: "mono muted" }, m.url),
          h("td", {}, canLead ? h("button", { class: "btn ghost small", "data-transfer": m.id, onclick: () => transferLeadership(m) }, "Make leader") : null),
        );
      }),
    );
    $("cluster-note").textContent =
      "Term, commit and applied index are as each node reports them (fetched by " +
      snap.node.node_id +
      " every " +
      snap.cluster.poll_s +
      " s); replication lag and match index are the leader's view. Leadership transfers go to the leader's API.";
  }

  function summaryCard(label, value, note, id) {
    return h("div", { class: "card", id }, h("div", { class: "card-label" }, label), h("div", { class: "card-value" }, value), h("div", { class: "card-note" }, note));
  }

  // -- retention figures (cluster view) ---------------------------------------------------
  async function loadRetention() {
    const rt = state.retention;
    const seq = ++rt.seq;
    rt.loading = true;
    scheduleRender();
    try {
      const r = await api("GET", "/v1/cluster/retention");
      if (seq !== rt.seq) return;
      rt.data = r;
      rt.error = null;
      rt.at = Date.now();
    } catch (e) {
      if (seq !== rt.seq) return;
      rt.error = e;
    } finally {
      if (seq === rt.seq) {
        rt.loading = false;
        rt.fetches += 1;
      }
    }
    scheduleRender();
  }

  function fmtBytes(n) {
    if (n === null || n === undefined) return "–";
    if (n < 1024) return n + " B";
    const units = ["KiB", "MiB", "GiB", "TiB"];
    let v = n / 1024;
    let i = 0;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i += 1;
    }
    return v.toFixed(v < 10 ? 1 : 0) + " " + units[i];
  }

  function renderRetention() {
    const rt = state.retention;
    const r = rt.data;
    const box = $("retention-summary");
    box.dataset.fetches = String(rt.fetches);
    $("retention-refresh").disabled = rt.loading;
    const err = rt.error ? "could not read the figures: " + (rt.error.status ? "HTTP " + rt.error.status + " " : "") + rt.error.message : "";
    $("retention-note").textContent = rt.loading
      ? "reading…"
      : err || (r ? "as " + (r.node_id || "this node") + " counted them at " + new Date(rt.at).toLocaleTimeString([], { hour12: false }) + " (read on open and on Refresh, not live)" : "");
    if (!changed("retention", JSON.stringify([r, rt.at]))) return;
    if (!r) {
      box.replaceChildren();
      $("retention-policy").textContent = "";
      return;
    }
    const hasSnapshots = r.snapshot_bytes !== null && r.snapshot_bytes !== undefined;
    box.replaceChildren(
      summaryCard("Records", fmtNum(r.records), fmtNum(r.in_flight) + " in flight · in the replicated state", "ret-records"),
      summaryCard("Tombstones", fmtNum(r.tombstones), r.tombstone_horizon ? "purged before " + fmtClock(r.tombstone_horizon) : "none purged yet", "ret-tombstones"),
      summaryCard("History rows", fmtNum(r.history_rows), "forgotten transactions kept by " + (r.node_id || "this node"), "ret-history"),
      summaryCard("Snapshot", hasSnapshots ? (r.snapshot_bytes ? fmtBytes(r.snapshot_bytes) : "none yet") : "–", hasSnapshots ? (r.snapshot_bytes ? fmtNum(r.snapshot_records) + " records and tombstones" : "no log compaction yet") : "single node: no snapshots", "ret-snapshot"),
    );
    $("retention-policy").textContent =
      "A finished transaction leaves the replicated state " + fmtAge(r.retention_s) + " after it finished; its tombstone (the decision) stays " + fmtAge(r.tombstone_retention_s) + ", its full record " + r.history_retention_days + " days in each node's history." + (r.forgotten_by_this_node ? " This node forgot " + fmtNum(r.forgotten_by_this_node) + " as leader since it started." : "");
  }

  // -- participants -----------------------------------------------------------------------
  function renderParticipants() {
    const snap = state.snap;
    const byName = new Map();
    const entry = (name) => {
      if (!byName.has(name)) byName.set(name, { name, stats: null, urls: new Set(), inflight: 0, stuck: 0 });
      return byName.get(name);
    };
    for (const p of state.participants) entry(p.name).stats = p;
    if (snap) {
      for (const r of snap.inflight.rows) {
        const stuck = attention(r).length > 0;
        for (const p of r.participants) {
          const e = entry(p.name);
          e.urls.add(p.url);
          e.inflight += 1;
          if (stuck) e.stuck += 1;
        }
      }
      for (const r of snap.recent.rows || []) for (const p of r.participants) entry(p.name).urls.add(p.url);
    }
    const rank = { down: 0, degraded: 1, ok: 2, idle: 3 };
    const list = [...byName.values()].sort((a, b) => (rank[a.stats ? a.stats.status : "idle"] - rank[b.stats ? b.stats.status : "idle"]) || a.name.localeCompare(b.name));
    $("participants-body").replaceChildren(
      ...list.map((e) => {
        const st = e.stats;
        const status = st ? st.status : "idle";
        const lat = st ? st.latency : null;
        const rate = st ? st.success_rate : null;
        return h(
          "tr",
          { class: status === "down" ? "stuck" : null, "data-participant": e.name },
          h("td", {}, h("b", {}, e.name), h("div", { class: "mono muted" }, [...e.urls].join(" "))),
          h("td", {}, pill(status, status, st && st.consecutive_failures ? st.consecutive_failures + " failed in a row" : undefined)),
          h("td", { class: "num" }, st ? fmtNum(st.calls) : "–"),
          h("td", { class: "num" }, st ? fmtNum(st.failures) : "–"),
          h("td", {}, h("div", { class: "rate" }, h("div", { class: "bar" + (rate === null ? " none" : "") }, rateBar(rate)), h("span", {}, fmtPct(rate)))),
          h(
            "td",
            { class: "num", title: lat && lat.n ? lat.n + " timed calls" : "the leader has not timed calls to this participant in the window" },
            lat && lat.n ? fmtLatency(lat.avg) + " · " + fmtLatency(lat.p95) + " · " + fmtLatency(lat.max) : h("span", { class: "muted" }, st && st.calls ? "not measured" : "–"),
          ),
          h("td", { class: "num" }, fmtNum(e.inflight), e.stuck ? h("div", { class: "small", style: null }, pill("bad", e.stuck + " stuck")) : null),
          h("td", {}, st && st.last_error ? [h("div", { class: "err" }, st.last_error), h("div", { class: "muted small" }, fmtWhen(st.last_error_at))] : h("span", { class: "muted" }, "–")),
          h("td", { class: "age" }, st ? fmtWhen(st.last_ok_at) : "–"),
        );
      }),
    );
    $("participants-empty").hidden = list.length > 0;
    const src = state.series.nodeId ? "counted by the leader, " + state.series.nodeId : "counted by the leader";
    $("participants-note").textContent =
      "Protocol calls (prepare, commit, abort) over the last " +
      (state.participants[0] ? Math.round(state.participants[0].window_s / 60) : 5) +
      " minutes, " +
      src +
      ". A failure is a call that got no answer or a 5xx; a NO vote is an answer. " +
      (state.series.error ? "⚠ " + state.series.error : "");
  }

  function rateBar(rate) {
    const span = h("span");
    span.style.width = rate === null ? "0" : (rate * 100).toFixed(1) + "%";
    return span;
  }

  // -- audit trail ------------------------------------------------------------------------
  async function loadAudit() {
    try {
      const r = await api("GET", "/v1/audit?limit=" + AUDIT_ROWS);
      state.audit.items = r.items;
      state.audit.error = null;
    } catch (e) {
      state.audit.error = e;
    }
    scheduleRender();
  }

  function renderAudit() {
    const a = state.audit;
    const items = a.items || [];
    if (!changed("audit", JSON.stringify([items, a.error && a.error.message]))) return;
    $("audit-body").replaceChildren(
      ...items.map((it) =>
        h(
          "tr",
          {},
          h("td", { class: "age", title: it.at }, fmtClock(it.at, true)),
          h("td", { class: "mono" }, it.actor),
          h("td", {}, h("b", {}, String(it.action).replace(/_/g, " "))),
          h("td", {}, it.txid ? txLink(it.txid) : h("span", { class: "muted" }, "–")),
          h("td", { class: "mono muted" }, describe(it.detail)),
        ),
      ),
    );
    const empty = $("audit-empty");
    empty.hidden = items.length > 0;
    empty.textContent = a.error ? "Could not read the audit trail: HTTP " + a.error.status + " " + a.error.message : a.items === null ? "Loading…" : "No operator action recorded.";
  }

  // -- charts -----------------------------------------------------------------------------
  function renderActivity() {
    const span = state.chartSpanS;
    for (const b of document.querySelectorAll("#span-buttons button")) b.classList.toggle("active", Number(b.dataset.span) === span);
    const all = state.series.points;
    const src = state.series.nodeId || "the leader";
    const size = Math.max(1, Math.round(span / CHART_POINTS));
    $("activity-note").textContent =
      "As counted by " + src + ", " + size + " s a point (only the leader runs 2PC; a new leader starts its own count)." + (state.series.error ? " ⚠ " + state.series.error : "");
    if (!all.length) return;
    const t1 = all[all.length - 1].t;
    const tMin = t1 - span;
    const pts = all.filter((p) => p.t > tMin);
    const b = bucketed(pts, size);
    const rate = (key) => b.map((g) => [g.t, sum(g.pts, key) / g.pts.length]);
    drawChart($("chart-throughput"), tMin, t1, [
      { name: "committed/s", color: "#3fb950", area: true, pts: rate("committed"), legend: "avg" },
      { name: "aborted/s", color: "#f85149", pts: rate("aborted"), legend: "avg" },
      { name: "begun/s", color: "#8d99a8", dash: "4 3", pts: rate("begun"), legend: "avg" },
    ], fmtRateAxis);
    const latency = b.map((g) => {
      const n = sum(g.pts.map((p) => p.lat), "n");
      const total = g.pts.reduce((a, p) => a + (p.lat.n ? p.lat.avg * p.lat.n : 0), 0);
      const p95s = g.pts.map((p) => p.lat.p95).filter((v) => v !== null);
      return { t: g.t, avg: n ? total / n : null, p95: p95s.length ? Math.max(...p95s) : null };
    });
    drawChart($("chart-latency"), tMin, t1, [
      { name: "p95", color: "#f0883e", pts: latency.map((p) => [p.t, p.p95]) },
      { name: "average", color: "#58a6ff", pts: latency.map((p) => [p.t, p.avg]) },
    ], fmtLatency);
    const buckets = bucketed(pts, ABORT_BUCKET_S).map((g) => {
      const c = sum(g.pts, "committed");
      const a = sum(g.pts, "aborted");
      return [g.t, c + a ? a / (c + a) : null];
    });
    drawChart($("chart-abort"), tMin, t1, [{ name: "aborted %", color: "#f85149", bars: ABORT_BUCKET_S, pts: buckets }], (v) => (v * 100).toFixed(0) + "%", 1);
    drawChart($("chart-retries"), tMin, t1, [
      { name: "phase-2 retries/s", color: "#d29922", pts: rate("retries"), legend: "avg" },
      { name: "failed participant calls/s", color: "#db61a2", pts: rate("call_failures"), legend: "avg" },
    ], fmtRateAxis);
  }

  /* Groups of `size` seconds aligned on the epoch, so a point does not shift as time goes. */
  function bucketed(pts, size) {
    const out = [];
    for (const p of pts) {
      const t = p.t - (p.t % size);
      if (!out.length || out[out.length - 1].t !== t) out.push({ t, pts: [] });
      out[out.length - 1].pts.push(p);
    }
    return out;
  }

  function fmtRateAxis(v) {
    if (v >= 1000) return (v / 1000).toFixed(1) + "k";
    if (v >= 10 || v === 0) return v.toFixed(0);
    return v >= 1 ? v.toFixed(1) : v.toFixed(2);
  }

  /* A round tick step (1, 2 or 5 times a power of ten) giving about four gridlines. */
  function niceStep(max) {
    const raw = max > 0 ? max / 4 : 0.25;
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 5, 10]) if (raw <= m * p) return m * p;
    return 10 * p;
  }

  function drawChart(fig, tMin, tMax, series, fmtY, fixedMax) {
    const W = 640;
    const H = 220;
    const L = 56;
    const R = 12;
    const T = 10;
    const B = 24;
    let max = 0;
    for (const sr of series) for (const [, v] of sr.pts) if (v !== null && v > max) max = v;
    const step = fixedMax ? fixedMax / 4 : niceStep(max);
    const yMax = fixedMax || Math.max(step, Math.ceil((max * 1.05) / step) * step);
    const x = (t) => L + ((t - tMin) / Math.max(1, tMax - tMin)) * (W - L - R);
    const y = (v) => T + (1 - v / yMax) * (H - T - B);
    const svg = s("svg", { viewBox: "0 0 " + W + " " + H, preserveAspectRatio: "none", role: "img" });
    for (let i = 0; i * step <= yMax + 1e-12; i++) {
      const v = i * step;
      svg.append(s("line", { class: "gridline", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      svg.append(s("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, fmtY(v)));
    }
    const tick = CHART_TICKS_S[tMax - tMin] || (tMax - tMin) / 4;
    for (let back = tMax - tMin; back >= 0; back -= tick) {
      const label = back === 0 ? "now" : back % 60 === 0 ? "−" + back / 60 + " min" : "−" + back + " s";
      const anchor = back === 0 ? "end" : back === tMax - tMin ? "start" : "middle";
      svg.append(s("text", { x: x(tMax - back), y: H - 6, "text-anchor": anchor }, label));
    }
    for (const sr of series) {
      if (sr.bars) {
        for (const [t, v] of sr.pts) {
          if (v === null) continue;
          const x0 = x(Math.max(t, tMin));
          const w = Math.max(1, x(Math.min(t + sr.bars, tMax)) - x0 - 1);
          svg.append(s("rect", { x: x0, y: y(v), width: w, height: Math.max(0, y(0) - y(v)), fill: sr.color, opacity: 0.8 }));
        }
        continue;
      }
      let d = "";
      let open = false;
      let firstX = null;
      let lastX = null;
      sr.pts.forEach(([t, v], i) => {
        if (v === null || v === undefined) {
          open = false;
          return;
        }
        const prev = i > 0 ? sr.pts[i - 1][1] : null;
        const next = i + 1 < sr.pts.length ? sr.pts[i + 1][1] : null;
        if ((prev === null || prev === undefined) && (next === null || next === undefined)) {
          svg.append(s("circle", { cx: x(t), cy: y(v), r: 2.5, fill: sr.color })); // a lone point
        }
        d += (open ? "L" : "M") + x(t).toFixed(1) + " " + y(v).toFixed(1);
        if (firstX === null) firstX = x(t);
        lastX = x(t);
        open = true;
      });
      if (!d) continue;
      if (sr.area && firstX !== null) svg.append(s("path", { d: d + "L" + lastX.toFixed(1) + " " + y(0) + "L" + firstX.toFixed(1) + " " + y(0) + "Z", fill: sr.color, opacity: 0.15, stroke: "none" }));
      const attrs = { d, fill: "none", stroke: sr.color, "stroke-width": 1.6, "stroke-linejoin": "round", "vector-effect": "non-scaling-stroke" };
      if (sr.dash) attrs["stroke-dasharray"] = sr.dash;
      svg.append(s("path", attrs));
    }
    const legend = h(
      "div",
      { class: "legend" },
      series.map((sr) => {
        const vals = sr.pts.filter(([, v]) => v !== null && v !== undefined);
        const recent = vals.filter(([t]) => t > tMax - RATE_WINDOW_S).map(([, v]) => v);
        let shown = vals.length ? vals[vals.length - 1][1] : null;
        if (sr.legend === "avg") shown = recent.length ? recent.reduce((a, v) => a + v, 0) / recent.length : null;
        const i = h("i");
        i.style.background = sr.color;
        return h("span", {}, i, sr.name + " ", h("b", {}, shown === null ? "–" : fmtY(shown)), sr.legend === "avg" ? h("span", {}, " (60 s avg)") : null);
      }),
    );
    fig.querySelector(".chart-body").replaceChildren(legend, svg);
  }

  // -- routing and wiring -----------------------------------------------------------------
  function currentRoute() {
    const hash = location.hash.replace(/^#\/?/, "");
    if (hash.startsWith("tx/")) return { view: "tx", tab: "transactions", txid: decodeURIComponent(hash.slice(3)) };
    const tab = ["history", "cluster", "participants", "activity", "audit"].includes(hash) ? hash : "transactions";
    return { view: tab, tab };
  }

  function onRoute() {
    const route = currentRoute();
    if (route.view === "tx") openDetail(route.txid);
    else closeDetail();
    if (route.view !== state.view) {
      // Opening the history or the cluster view reads its figures once (Refresh reads again).
      if (route.view === "history") loadHistory(false);
      if (route.view === "cluster") loadRetention();
    }
    state.view = route.view;
    const a = state.audit;
    if (route.view === "audit" && !a.timer) {
      loadAudit();
      a.timer = setInterval(loadAudit, AUDIT_REFRESH_MS);
    } else if (route.view !== "audit" && a.timer) {
      clearInterval(a.timer);
      a.timer = null;
    }
    render();
  }

  function wire() {
    $("auth-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const v = $("token-input").value.trim();
      $("token-input").value = "";
      if (v) setToken(v);
    });
    $("sign-out").addEventListener("click", () => setToken(""));
    $("q").addEventListener("input", (e) => {
      state.filters.q = e.target.value;
      scheduleRender();
    });
    $("state-filter").addEventListener("change", (e) => {
      state.filters.state = e.target.value;
      scheduleRender();
    });
    const historyFilter = (key, id) => {
      const apply = (e) => {
        if (state.history.filters[key] === e.target.value) return;
        state.history.filters[key] = e.target.value;
        loadHistory(false);
      };
      $(id).addEventListener("change", apply);
      $(id).addEventListener("search", apply); // Enter, or the clear button of a search field
    };
    historyFilter("state", "history-state");
    historyFilter("label", "history-label");
    historyFilter("participant", "history-participant");
    $("history-refresh").addEventListener("click", () => loadHistory(false));
    $("history-more").addEventListener("click", () => loadHistory(true));
    $("retention-refresh").addEventListener("click", () => loadRetention());
    $("stuck-only").addEventListener("change", (e) => {
      state.filters.stuckOnly = e.target.checked;
      scheduleRender();
    });
    const thr = $("stuck-after");
    thr.value = String(state.stuckAfterS);
    thr.addEventListener("change", () => {
      const v = Number(thr.value);
      if (v > 0) {
        state.stuckAfterS = clampThreshold(v);
        localStorage.setItem(STUCK_AFTER_KEY, String(state.stuckAfterS));
      }
      thr.value = String(state.stuckAfterS);
      scheduleRender();
    });
    window.addEventListener("hashchange", () => {
      $("toasts").replaceChildren(); // a toast belongs to the page it was raised on
      onRoute();
    });
    for (const b of document.querySelectorAll("#span-buttons button")) {
      b.addEventListener("click", () => {
        state.chartSpanS = Number(b.dataset.span);
        localStorage.setItem(CHART_SPAN_KEY, String(state.chartSpanS));
        scheduleRender();
      });
    }
    document.addEventListener("pointerdown", () => {
      state.holding = true;
    });
    const release = () => {
      state.holding = false;
      scheduleRender();
    };
    document.addEventListener("pointerup", release);
    document.addEventListener("pointercancel", release);
    setInterval(() => {
      renderChrome();
      const route = currentRoute();
      if (state.holding) return;
      if (state.snap && route.view === "participants") render();
      else updateAges();
    }, TICK_MS);
  }

  async function start() {
    wire();
    try {
      const r = await fetch("/dashboard/api/info", { cache: "no-store" });
      const info = await r.json();
      state.authRequired = info.auth_required;
    } catch (_e) {
      state.authRequired = null;
    }
    onRoute();
    streamLoop();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
