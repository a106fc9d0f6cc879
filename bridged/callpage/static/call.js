// The call page: places the call of the link it was opened with (POST /c/place, the signed fields from
// this page's own URL in the body), then follows it with the capability the answer holds, kept in this
// script only. No token, no number: progress comes in words from bridged. No framework, no build.
// Everything from bridged is put into the page with textContent, never as HTML.
"use strict";

(function () {
  const POLL_MS = 1000;
  const status = document.getElementById("status");
  const endButton = document.getElementById("end");
  const params = new URLSearchParams(window.location.search);
  const fields = {};
  for (const name of ["order", "manager", "exp", "sig"]) fields[name] = params.get(name) || "";
  let capability = null;
  let timer = null;

  function show(text, phase) {
    status.textContent = text;
    status.dataset.phase = phase;
  }

  async function request(method, path, body) {
    const headers = {};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (capability) headers.Authorization = "Capability " + capability;
    const response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    });
    let answer = {};
    try {
      answer = await response.json();
    } catch (e) {
      // not JSON: shown as a lost contact below
    }
    return { status: response.status, answer };
  }

  function showProgress(progress) {
    show(progress.text, progress.phase);
    endButton.hidden = !progress.live;
    if (!progress.live) stop();
  }

  function showError(answer, fallback) {
    const error = answer && answer.error;
    show(error && error.message ? error.message : fallback, "refused");
    // The refusal's catalogue id on the root element, as GET /c puts a refused link's: for a shop's support.
    if (error && typeof error.id === "string") document.documentElement.dataset.error = error.id;
    endButton.hidden = true;
    stop();
  }

  function stop() {
    if (timer !== null) window.clearTimeout(timer);
    timer = null;
  }

  function later(step, ms) {
    stop();
    timer = window.setTimeout(step, ms);
  }

  async function place() {
    let got;
    try {
      got = await request("POST", "/c/place", fields);
    } catch (e) {
      show("Lost contact with bridged; trying again…", "lost");
      later(place, 2 * POLL_MS);
      return;
    }
    if (got.status === 409 && got.answer.error && got.answer.error.id === "link_in_use") {
      later(place, POLL_MS); // another opening of this link is placing the call: ask again
      return;
    }
    if (got.status >= 400 || !got.answer.progress) {
      showError(got.answer, "The call could not be placed.");
      return;
    }
    capability = got.answer.capability;
    showProgress(got.answer.progress);
    if (got.answer.progress.live) later(poll, POLL_MS);
  }

  async function poll() {
    let got;
    try {
      got = await request("GET", "/c/call");
    } catch (e) {
      show("Lost contact with bridged; trying again…", "lost");
      later(poll, 2 * POLL_MS);
      return;
    }
    if (got.status >= 500) {
      show("bridged did not answer; trying again…", "lost");
      later(poll, 2 * POLL_MS);
      return;
    }
    if (got.status !== 200 || !got.answer.progress) {
      showError(got.answer, "The call can no longer be followed here.");
      return;
    }
    showProgress(got.answer.progress);
    if (got.answer.progress.live) later(poll, POLL_MS);
  }

  endButton.addEventListener("click", async function () {
    endButton.disabled = true;
    try {
      const got = await request("DELETE", "/c/call");
      if (got.answer.progress) showProgress(got.answer.progress);
      else showError(got.answer, "The call could not be ended.");
    } catch (e) {
      show("Lost contact with bridged; the call may still be going on.", "lost");
    } finally {
      endButton.disabled = false;
    }
  });

  // Only a page someone looks at places the call: a prerendered or hidden page (a browser guessing
  // where you will go next) waits until it is shown.
  function whenShown(then) {
    if (document.prerendering) {
      document.addEventListener("prerenderingchange", () => whenShown(then), { once: true });
    } else if (document.visibilityState !== "visible") {
      document.addEventListener("visibilitychange", () => whenShown(then), { once: true });
    } else {
      then();
    }
  }

  whenShown(place);
})();
