// The ops page: speaks the review API with the token kept in sessionStorage. No framework, no build.
// Everything from the API is put into the page with textContent, never as HTML.
"use strict";

(function () {
  const TOKEN_KEY = "bridged.token";
  const $ = (id) => document.getElementById(id);
  const state = { me: null, callsCursor: null, missedCursor: null, auditCursor: null, objectUrl: null };

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  class ApiFailure extends Error {
    constructor(status, id, message) {
      super(message);
      this.status = status;
      this.id = id;
    }
  }

  async function api(path, options = {}) {
    const headers = Object.assign({ Authorization: "Bearer " + token() }, options.headers || {});
    const response = await fetch(path, Object.assign({}, options, { headers, cache: "no-store" }));
    if (!response.ok) {
      let id = "http_" + response.status;
      let message = response.statusText || "request failed";
      try {
        const body = await response.json();
        id = body.error.id;
        message = body.error.message;
      } catch (e) {
        // not a JSON error body
      }
      if (response.status === 401 && path !== "/v1/me") {
        signOut("Your session is no longer valid; sign in again.");
      }
      throw new ApiFailure(response.status, id, message);
    }
    return response;
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) {
      if (value !== null && value !== undefined && value !== "") q.set(key, value);
    }
    const text = q.toString();
    return text ? "?" + text : "";
  }

  function when(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
  }

  function localToIso(value) {
    // <input type="datetime-local"> is in the browser's time zone.
    return value ? new Date(value).toISOString() : "";
  }

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "" : String(text);
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  // -- sign in / out ------------------------------------------------------------------------------

  async function signIn(event) {
    event.preventDefault();
    const input = $("token");
    const error = $("signin-error");
    error.textContent = "";
    const value = input.value.trim();
    if (!value) {
      error.textContent = "Enter your access token.";
      input.focus();
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, value);
    input.value = "";
    if (!(await start())) input.focus();
  }

  async function start() {
    const error = $("signin-error");
    try {
      const me = await (await api("/v1/me")).json();
      if (!me.permissions.includes("calls.list")) {
        sessionStorage.removeItem(TOKEN_KEY);
        error.textContent = "This token (" + me.role + ") may not review calls.";
        return false;
      }
      state.me = me;
    } catch (e) {
      sessionStorage.removeItem(TOKEN_KEY);
      error.textContent = e.status === 401 ? "That token was not accepted." : "Sign-in failed: " + e.message;
      return false;
    }
    $("who-text").textContent = "Signed in as " + state.me.name + " (" + state.me.role + ")";
    $("who").hidden = false;
    $("signin").hidden = true;
    $("review").hidden = false;
    $("audit").hidden = !state.me.permissions.includes("audit.read");
    await loadCalls(true);
    await loadMissed(true);
    if (!$("audit").hidden) await loadAudit(true);
    $("f-manager").focus();
    return true;
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.me = null;
    resetPlayer();
    $("calls").tBodies[0].replaceChildren();
    $("missed-table").tBodies[0].replaceChildren();
    $("audit-table").tBodies[0].replaceChildren();
    $("review").hidden = true;
    $("who").hidden = true;
    $("signin").hidden = false;
    $("signin-error").textContent = typeof message === "string" ? message : "";
    $("token").focus();
  }

  // -- calls --------------------------------------------------------------------------------------

  function callFilters() {
    const f = $("filters").elements;
    return {
      manager: f.manager.value.trim(),
      order: f.order.value.trim(),
      outcome: f.outcome.value,
      from: localToIso(f.from.value),
      to: localToIso(f.to.value),
      has_recording: f.has_recording.value,
    };
  }

  async function loadCalls(reset) {
    const status = $("calls-status");
    const body = $("calls").tBodies[0];
    if (reset) state.callsCursor = null;
    const params = Object.assign(callFilters(), { limit: 25, cursor: state.callsCursor });
    status.textContent = "Loading calls…";
    try {
      const page = await (await api("/v1/calls" + query(params))).json();
      if (reset) body.replaceChildren();
      for (const call of page.items) body.appendChild(callRow(call));
      state.callsCursor = page.next_cursor;
      $("calls-more").hidden = !page.next_cursor;
      const shown = body.rows.length;
      status.textContent = shown ? shown + " call" + (shown === 1 ? "" : "s") + " shown." : "No calls match.";
    } catch (e) {
      status.textContent = "Could not load calls: " + e.message;
    }
  }

  // A recording that does not hold the whole conversation is marked on its row (README, "Recordings").
  const RECORDING_MARKS = {
    truncated: "recording truncated",
    failed: "recording failed",
    unknown: "recording not verified",
  };

  function callRow(call) {
    const tr = document.createElement("tr");
    tr.dataset.callId = call.id;
    cell(tr, when(call.requested_at));
    cell(tr, call.manager_id || "");
    cell(tr, callerText(call));
    cell(tr, (call.outcome || call.state).replace(/_/g, " "));
    cell(tr, call.duration_seconds === null ? "" : formatDuration(call.duration_seconds), "num");
    const td = cell(tr, "");
    const state = call.recording_state;
    const mark = Object.hasOwn(RECORDING_MARKS, state) ? RECORDING_MARKS[state] : null;
    if (call.has_recording) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "play";
      button.textContent = "Play";
      button.setAttribute("aria-label", "Play recording of order " + call.order_id + ", " + when(call.requested_at));
      button.addEventListener("click", () => play(call, button));
      td.appendChild(button);
    } else if (call.recording_purged_at) {
      td.textContent = "purged " + when(call.recording_purged_at);
    } else if (!mark) {
      td.textContent = "none";
    }
    if (mark) {
      tr.dataset.recordingState = state;
      const span = document.createElement("span");
      span.className = "recording-mark recording-" + state;
      span.textContent = mark;
      td.appendChild(span);
    }
    return tr;
  }

  // Who the other party was: the order (an inbound caller without one: their reference; withheld: anonymous).
  function callerText(call) {
    if (call.order_id) return call.order_id;
    if (call.direction !== "inbound") return "";
    return call.caller_ref ? "customer " + call.caller_ref : "anonymous";
  }

  // -- missed calls -----------------------------------------------------------------------------------

  async function loadMissed(reset) {
    const status = $("missed-status");
    const body = $("missed-table").tBodies[0];
    if (reset) state.missedCursor = null;
    status.textContent = "Loading missed calls…";
    try {
      const params = { outcome: "missed", limit: 25, cursor: state.missedCursor };
      const page = await (await api("/v1/calls" + query(params))).json();
      if (reset) body.replaceChildren();
      for (const call of page.items) body.appendChild(missedRow(call));
      state.missedCursor = page.next_cursor;
      $("missed-more").hidden = !page.next_cursor;
      status.textContent = body.rows.length ? "" : "No missed calls.";
    } catch (e) {
      status.textContent = "Could not load missed calls: " + e.message;
    }
  }

  function missedRow(call) {
    const tr = document.createElement("tr");
    tr.dataset.callId = call.id;
    cell(tr, when(call.requested_at));
    cell(tr, call.order_id ? "order " + call.order_id : callerText(call));
    cell(tr, call.manager_id || "");
    const td = cell(tr, "");
    if (!call.order_id || !call.manager_id) {
      // bridged calls an order's customer, never a number: a caller without an order cannot be called back.
      td.textContent = call.order_id ? "no manager to call back" : "no order: cannot call back";
    } else if (state.me.permissions.includes("calls.callback")) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "callback";
      button.textContent = "Call back";
      button.setAttribute("aria-label", "Call back the customer of order " + call.order_id);
      button.addEventListener("click", () => callBack(call, button, td));
      td.appendChild(button);
    }
    return tr;
  }

  async function callBack(call, button, td) {
    button.disabled = true;
    const status = $("missed-status");
    status.textContent = "Calling back order " + call.order_id + "…";
    try {
      // The button stays disabled while the request runs: one press, one call.
      const response = await api("/v1/calls", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ callback_of: call.id }),
      });
      const placed = await response.json();
      td.dataset.callbackId = placed.id;
      td.replaceChildren(document.createTextNode("calling back: " + call.manager_id + "'s phone rings"));
      status.textContent = "Manager " + call.manager_id + "'s phone is ringing for order " + call.order_id + ".";
      await loadCalls(true);
    } catch (e) {
      status.textContent = "Could not call back order " + call.order_id + ": " + e.message;
      button.disabled = false;
    }
  }

  function formatDuration(seconds) {
    const s = Math.round(seconds);
    return Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0");
  }

  // -- player ---------------------------------------------------------------------------------------

  function resetPlayer() {
    const audio = $("player");
    audio.pause();
    audio.removeAttribute("src");
    audio.load();
    if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
    state.objectUrl = null;
    $("now-playing").textContent = "No recording loaded.";
  }

  async function play(call, button) {
    const error = $("player-error");
    const reason = $("reason").value.trim();
    error.textContent = "";
    if (!reason && document.body.dataset.reasonRequired === "true") {
      error.textContent = "Give a reason for listening first.";
      $("reason").focus();
      return;
    }
    button.disabled = true;
    $("now-playing").textContent = "Loading the recording of order " + call.order_id + "…";
    try {
      // One request, one audit row: the whole file goes into a blob the <audio> element can seek in.
      const response = await api("/v1/calls/" + encodeURIComponent(call.id) + "/recording" + query({ reason }));
      const blob = await response.blob();
      resetPlayer();
      state.objectUrl = URL.createObjectURL(blob);
      const audio = $("player");
      audio.src = state.objectUrl;
      $("now-playing").textContent = "Playing: order " + call.order_id + ", " + when(call.requested_at);
      try {
        await audio.play();
      } catch (e) {
        $("now-playing").textContent = "Loaded: order " + call.order_id + " (press play in the player).";
      }
      if (!$("audit").hidden) await loadAudit(true);
    } catch (e) {
      error.textContent = "Could not play the recording: " + e.message;
      $("now-playing").textContent = "No recording loaded.";
    } finally {
      button.disabled = false;
    }
  }

  // -- audit ----------------------------------------------------------------------------------------

  async function loadAudit(reset) {
    const status = $("audit-status");
    const body = $("audit-table").tBodies[0];
    if (reset) state.auditCursor = null;
    const f = $("audit-filters").elements;
    const params = {
      actor: f.actor.value.trim(),
      action: f.action.value,
      call: f.call.value.trim(),
      limit: 25,
      cursor: state.auditCursor,
    };
    status.textContent = "Loading the audit trail…";
    try {
      const page = await (await api("/v1/audit" + query(params))).json();
      if (reset) body.replaceChildren();
      for (const entry of page.items) {
        const tr = document.createElement("tr");
        tr.dataset.action = entry.action;
        cell(tr, when(entry.at));
        cell(tr, entry.actor);
        cell(tr, entry.action);
        cell(tr, entry.call_id || "");
        cell(tr, entry.outcome);
        cell(tr, entry.reason || "");
        cell(tr, (entry.details && entry.details.client) || "");
        body.appendChild(tr);
      }
      state.auditCursor = page.next_cursor;
      $("audit-more").hidden = !page.next_cursor;
      status.textContent = body.rows.length ? "" : "No entries match.";
    } catch (e) {
      status.textContent = "Could not load the audit trail: " + e.message;
    }
  }

  // -- wiring ---------------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("signin-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", () => signOut(""));
    $("filters").addEventListener("submit", (e) => {
      e.preventDefault();
      loadCalls(true);
    });
    $("filters").addEventListener("reset", () => setTimeout(() => loadCalls(true), 0));
    $("calls-more").addEventListener("click", () => loadCalls(false));
    $("missed-more").addEventListener("click", () => loadMissed(false));
    $("audit-filters").addEventListener("submit", (e) => {
      e.preventDefault();
      loadAudit(true);
    });
    $("audit-more").addEventListener("click", () => loadAudit(false));
    if (token()) {
      start();
    } else {
      $("token").focus();
    }
  });
})();
