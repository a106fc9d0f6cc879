// The ops page: speaks the review API with the token kept in sessionStorage. No framework, no build.
// Everything from the API is put into the page with textContent, never as HTML.
// In English and Russian: every visible string is in MESSAGES; the server's <html lang> (from the
// browser's Accept-Language) chooses, the language switch overrides (localStorage). Dates, durations and
// counts are formatted with Intl in the viewer's locale. API error ids are English slugs: ERROR_IDS maps
// the ones the page meets to messages; an unknown one shows the API's own message.
"use strict";

(function () {
  const TOKEN_KEY = "bridged.token";
  const LANG_KEY = "bridged.lang";
  const $ = (id) => document.getElementById(id);
  const state = {
    me: null,
    callsCursor: null,
    missedCursor: null,
    auditCursor: null,
    probing: null,
    objectUrl: null,
    calls: [],
    missed: [],
    audit: [],
    callsStatus: null,
    missedStatus: null,
    auditStatus: null,
    probingStatus: null,
  };

  // -- languages ----------------------------------------------------------------------------------

  const MESSAGES = {
    en: {
      title: "bridged · call review",
      subtitle: "call review",
      language: "Language",
      sign_in: "Sign in",
      sign_out: "Sign out",
      token: "Access token",
      token_hint: "Your token stays in this browser tab only and is forgotten when the tab closes.",
      calls: "Calls",
      manager: "Manager",
      order: "Order",
      outcome: "Outcome",
      from: "From",
      to: "To",
      recording: "Recording",
      any: "any",
      recording_available: "available",
      recording_none_or_purged: "none or purged",
      apply_filters: "Apply filters",
      clear: "Clear",
      player: "Player",
      reason: "Reason for listening",
      reason_required: "(required, kept in the audit trail)",
      reason_optional: "(optional, kept in the audit trail)",
      no_recording_loaded: "No recording loaded.",
      calls_caption: "Calls, newest first",
      requested: "Requested",
      talk_time: "Talk time",
      older_calls: "Older calls",
      audit_trail: "Audit trail",
      actor: "Actor",
      action: "Action",
      call: "Call",
      show: "Show",
      audit_caption: "Audit trail, newest first",
      when: "When",
      reason_column: "Reason",
      client: "Client",
      older_entries: "Older entries",
      session_expired: "Your session is no longer valid; sign in again.",
      enter_token: "Enter your access token.",
      token_may_not_review: "This token ({role}) may not review calls.",
      token_not_accepted: "That token was not accepted.",
      sign_in_failed: "Sign-in failed: {message}",
      signed_in_as: "Signed in as {name} ({role})",
      loading_calls: "Loading calls…",
      calls_shown: { one: "{n} call shown.", other: "{n} calls shown." },
      no_calls: "No calls match.",
      calls_failed: "Could not load calls: {message}",
      mark_truncated: "recording truncated",
      mark_failed: "recording failed",
      mark_unknown: "recording not verified",
      play: "Play",
      play_label: "Play recording of order {order}, {when}",
      purged: "purged {ago}",
      none: "none",
      give_reason: "Give a reason for listening first.",
      loading_recording: "Loading the recording of order {order}…",
      playing: "Playing: order {order}, {when}",
      loaded: "Loaded: order {order} (press play in the player).",
      play_failed: "Could not play the recording: {message}",
      loading_audit: "Loading the audit trail…",
      no_entries: "No entries match.",
      audit_failed: "Could not load the audit trail: {message}",
      "action.recording.listen": "recording listened to",
      "action.recording.download": "recording downloaded",
      "action.recording.purge": "recording purged",
      "action.api.denied": "API request denied",
      "action.call.request": "call requested",
      "action.retention.change": "retention changed",
      order_or_caller: "Order or caller",
      missed_calls: "Missed calls",
      missed_hint:
        "Customers who called the shop and reached nobody, newest first. Call back rings the manager the call was for, then the customer of its order, as a masked call.",
      missed_caption: "Missed calls, newest first",
      called: "Called",
      caller: "Caller",
      call_back: "Call back",
      older_missed: "Older missed calls",
      customer_ref: "customer {ref}",
      anonymous: "anonymous",
      order_n: "order {order}",
      loading_missed: "Loading missed calls…",
      no_missed: "No missed calls.",
      missed_failed: "Could not load missed calls: {message}",
      no_manager_to_call_back: "no manager to call back",
      no_order_cannot_call_back: "no order: cannot call back",
      call_back_label: "Call back the customer of order {order}",
      calling_back: "Calling back order {order}…",
      calling_back_cell: "calling back: {manager}'s phone rings",
      call_back_ringing: "Manager {manager}'s phone is ringing for order {order}.",
      call_back_failed: "Could not call back order {order}: {message}",
      probing: "Probing",
      probing_hint:
        "Managers' refused attempts in the period, newest first: how many, by outcome, and the length and shape of what was keyed in (never the digits). Managers past a budget are marked.",
      period: "Period",
      last_hour: "last hour",
      last_24_hours: "last 24 hours",
      last_7_days: "last 7 days",
      last_30_days: "last 30 days",
      probing_caption: "Refused attempts by manager, newest first",
      keyed_in: "Keyed in",
      length: "Length",
      attempts: "Attempts",
      last_attempt: "Last attempt",
      loading_probing: "Loading refused attempts…",
      no_probing: "No refused attempts since {since}.",
      probing_failed: "Could not load refused attempts: {message}",
      probing_shown: {
        one: "{n} manager with refused attempts since {since}.",
        other: "{n} managers with refused attempts since {since}.",
      },
      past_budget: "past a budget",
      tally: "{name}: {count}",
      "shape.well_formed": "well-formed code",
      "shape.phone_like": "phone-number-like",
      "shape.digits": "digits, not a code",
      "shape.other": "other characters",
    },
    ru: {
      title: "bridged · обзор звонков",
      subtitle: "обзор звонков",
      language: "Язык",
      sign_in: "Войти",
      sign_out: "Выйти",
      token: "Токен доступа",
      token_hint: "Токен хранится только в этой вкладке браузера и забывается, когда вкладку закрывают.",
      calls: "Звонки",
      manager: "Менеджер",
      order: "Заказ",
      outcome: "Итог",
      from: "С",
      to: "По",
      recording: "Запись",
      any: "любой",
      recording_available: "есть",
      recording_none_or_purged: "нет или удалена",
      apply_filters: "Применить",
      clear: "Сбросить",
      player: "Проигрыватель",
      reason: "Причина прослушивания",
      reason_required: "(обязательно, сохраняется в журнале)",
      reason_optional: "(необязательно, сохраняется в журнале)",
      no_recording_loaded: "Запись не загружена.",
      calls_caption: "Звонки, сначала новые",
      requested: "Запрошен",
      talk_time: "Разговор",
      older_calls: "Более ранние звонки",
      audit_trail: "Журнал действий",
      actor: "Кто",
      action: "Действие",
      call: "Звонок",
      show: "Показать",
      audit_caption: "Журнал действий, сначала новые",
      when: "Когда",
      reason_column: "Причина",
      client: "Клиент",
      older_entries: "Более ранние записи",
      session_expired: "Сеанс больше не действителен; войдите снова.",
      enter_token: "Введите токен доступа.",
      token_may_not_review: "С этим токеном ({role}) нельзя просматривать звонки.",
      token_not_accepted: "Этот токен не принят.",
      sign_in_failed: "Не удалось войти: {message}",
      signed_in_as: "Вы вошли как {name} ({role})",
      loading_calls: "Загрузка звонков…",
      calls_shown: {
        one: "Показан {n} звонок.",
        few: "Показаны {n} звонка.",
        many: "Показано {n} звонков.",
        other: "Показано {n} звонка.",
      },
      no_calls: "Нет подходящих звонков.",
      calls_failed: "Не удалось загрузить звонки: {message}",
      mark_truncated: "запись обрезана",
      mark_failed: "запись не удалась",
      mark_unknown: "запись не проверена",
      play: "Слушать",
      play_label: "Слушать запись заказа {order}, {when}",
      purged: "удалена {ago}",
      none: "нет",
      give_reason: "Сначала укажите причину прослушивания.",
      loading_recording: "Загрузка записи заказа {order}…",
      playing: "Звучит: заказ {order}, {when}",
      loaded: "Загружено: заказ {order} (нажмите «воспроизвести» в проигрывателе).",
      play_failed: "Не удалось воспроизвести запись: {message}",
      loading_audit: "Загрузка журнала…",
      no_entries: "Нет подходящих записей.",
      audit_failed: "Не удалось загрузить журнал: {message}",
      "action.recording.listen": "прослушивание записи",
      "action.recording.download": "скачивание записи",
      "action.recording.purge": "удаление записи",
      "action.api.denied": "отказ в доступе к API",
      "action.call.request": "запрос звонка",
      "action.retention.change": "изменение срока хранения",
      order_or_caller: "Заказ или звонивший",
      missed_calls: "Пропущенные звонки",
      missed_hint:
        "Клиенты, которые звонили в магазин и ни до кого не дозвонились, сначала новые. «Перезвонить» вызывает менеджера, которому предназначался звонок, затем клиента его заказа, со скрытым номером.",
      missed_caption: "Пропущенные звонки, сначала новые",
      called: "Звонил",
      caller: "Кто звонил",
      call_back: "Перезвонить",
      older_missed: "Более ранние пропущенные",
      customer_ref: "клиент {ref}",
      anonymous: "номер скрыт",
      order_n: "заказ {order}",
      loading_missed: "Загрузка пропущенных звонков…",
      no_missed: "Пропущенных звонков нет.",
      missed_failed: "Не удалось загрузить пропущенные звонки: {message}",
      no_manager_to_call_back: "некому перезванивать",
      no_order_cannot_call_back: "нет заказа: перезвонить нельзя",
      call_back_label: "Перезвонить клиенту заказа {order}",
      calling_back: "Перезваниваем по заказу {order}…",
      calling_back_cell: "перезваниваем: звонит телефон {manager}",
      call_back_ringing: "Звонит телефон менеджера {manager} по заказу {order}.",
      call_back_failed: "Не удалось перезвонить по заказу {order}: {message}",
      probing: "Подбор кодов",
      probing_hint:
        "Отказы менеджерам за период, сначала новые: сколько, с каким итогом, какой длины и вида было набранное (сами цифры не хранятся). Менеджеры, превысившие лимит, отмечены.",
      period: "Период",
      last_hour: "последний час",
      last_24_hours: "последние 24 часа",
      last_7_days: "последние 7 дней",
      last_30_days: "последние 30 дней",
      probing_caption: "Отказы по менеджерам, сначала новые",
      keyed_in: "Что набрано",
      length: "Длина",
      attempts: "Попыток",
      last_attempt: "Последняя попытка",
      loading_probing: "Загрузка отказов…",
      no_probing: "Отказов с {since} не было.",
      probing_failed: "Не удалось загрузить отказы: {message}",
      probing_shown: {
        one: "{n} менеджер с отказами с {since}.",
        few: "{n} менеджера с отказами с {since}.",
        many: "{n} менеджеров с отказами с {since}.",
        other: "{n} менеджера с отказами с {since}.",
      },
      past_budget: "превышен лимит",
      tally: "{name}: {count}",
      "shape.well_formed": "код верного вида",
      "shape.phone_like": "похоже на номер телефона",
      "shape.digits": "цифры, не код",
      "shape.other": "другие символы",
    },
  };

  // Outcomes and states of calls (their ids are the API's), by language.
  const OUTCOMES = {
    en: {},
    ru: {
      completed: "состоялся",
      customer_busy: "клиент занят",
      customer_no_answer: "клиент не ответил",
      customer_unavailable: "клиент недоступен",
      customer_congestion: "линия перегружена",
      customer_abandoned: "клиент положил трубку",
      manager_abandoned: "менеджер положил трубку",
      manager_no_answer: "менеджер не ответил",
      manager_unavailable: "менеджер недоступен",
      cancelled: "отменён",
      failed: "сбой",
      unknown_manager: "неизвестный менеджер",
      manager_not_registered: "телефон менеджера не в сети",
      invalid_code: "неверный код заказа",
      unknown_order: "неизвестный заказ",
      denied: "запрещено",
      missed: "пропущен",
      lookup_failed: "база заказов не ответила",
      unavailable: "Asterisk недоступен",
      overloaded: "перегрузка",
      invalid_phone: "неверный номер клиента",
      database_unavailable: "база bridged недоступна",
      rate_limited: "превышен лимит",
      requested: "запрошен",
      ringing_manager: "звонит менеджеру",
      ringing_customer: "звонит клиенту",
      announcing: "объявление",
      bridged: "идёт разговор",
      ending: "завершается",
      ended: "завершён",
    },
  };

  // API error ids (stable English slugs) the page may meet, by language; others show the API's message.
  const ERROR_IDS = {
    en: {},
    ru: {
      unauthorized: "нужен действительный токен",
      forbidden: "роли этого токена это не разрешено",
      invalid_parameter: "неверный параметр запроса",
      invalid_cursor: "неверный курсор страницы",
      call_not_found: "звонок не найден",
      reason_required: "для прослушивания нужна причина",
      recording_not_found: "у звонка нет записи",
      recording_purged: "запись удалена по сроку хранения",
      recording_in_progress: "звонок ещё идёт, запись не закончена",
      recording_unavailable: "хранилище записей не ответило",
      audit_unavailable: "прослушивание нельзя занести в журнал, поэтому запись не выдана",
      database_unavailable: "база данных bridged не ответила",
      request_timeout: "запрос не пришёл вовремя",
      network: "нет связи с сервером",
      callback_not_possible: "этому звонку нельзя перезвонить",
    },
  };

  let lang = initialLanguage();

  function initialLanguage() {
    let saved = null;
    try {
      saved = localStorage.getItem(LANG_KEY);
    } catch (e) {
      // storage disabled: the server's choice stands
    }
    if (saved && Object.hasOwn(MESSAGES, saved)) return saved;
    const served = document.documentElement.lang;
    return Object.hasOwn(MESSAGES, served) ? served : "en";
  }

  // The viewer's own locale when it is of the page's language (en-GB keeps its dates), else the language.
  function locale() {
    const mine = (navigator.languages || [navigator.language]).find(
      (tag) => tag && tag.split("-")[0].toLowerCase() === lang,
    );
    return mine || lang;
  }

  function t(key, params) {
    let text = Object.hasOwn(MESSAGES[lang], key) ? MESSAGES[lang][key] : MESSAGES.en[key];
    if (text === undefined) text = key;
    if (typeof text === "object") {
      const n = params && typeof params.n === "number" ? params.n : 0;
      const form = new Intl.PluralRules(locale()).select(n);
      text = text[form] || text.other;
      params = Object.assign({}, params, { n: new Intl.NumberFormat(locale()).format(n) });
    }
    return text.replace(/\{(\w+)\}/g, (whole, name) =>
      params && Object.hasOwn(params, name) ? String(params[name]) : whole,
    );
  }

  function outcomeName(id) {
    const names = OUTCOMES[lang];
    return Object.hasOwn(names, id) ? names[id] : String(id).replace(/_/g, " ");
  }

  function errorMessage(e) {
    const known = ERROR_IDS[lang];
    return e && e.id && Object.hasOwn(known, e.id) ? known[e.id] : (e && e.message) || String(e);
  }

  function applyLanguage() {
    document.documentElement.lang = lang;
    for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
    for (const option of $("f-outcome").options) {
      if (option.value) option.textContent = outcomeName(option.value);
    }
    for (const option of document.querySelectorAll("option[data-action-label]")) {
      option.textContent = actionName(option.value);
    }
    $("lang").value = lang;
    if (state.me) $("who-text").textContent = t("signed_in_as", { name: state.me.name, role: state.me.role });
    if (!state.objectUrl) $("now-playing").textContent = t("no_recording_loaded");
    renderCalls();
    renderMissed();
    renderAudit();
    renderProbing();
  }

  function switchLanguage(next) {
    if (!Object.hasOwn(MESSAGES, next)) return;
    lang = next;
    try {
      localStorage.setItem(LANG_KEY, next);
    } catch (e) {
      // storage disabled: the switch lasts as long as the page
    }
    applyLanguage();
  }

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
    let response;
    try {
      response = await fetch(path, Object.assign({}, options, { headers, cache: "no-store" }));
    } catch (e) {
      throw new ApiFailure(0, "network", String(e.message || e));
    }
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
        signOut(t("session_expired"));
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
    return new Intl.DateTimeFormat(locale(), { dateStyle: "medium", timeStyle: "medium" }).format(new Date(iso));
  }

  // "3 days ago" in the viewer's language, in the largest unit that is at least one.
  function ago(iso) {
    const seconds = (new Date(iso).getTime() - Date.now()) / 1000;
    const units = [
      ["year", 31536000],
      ["month", 2592000],
      ["day", 86400],
      ["hour", 3600],
      ["minute", 60],
    ];
    const format = new Intl.RelativeTimeFormat(locale(), { numeric: "auto" });
    for (const [unit, size] of units) {
      if (Math.abs(seconds) >= size) return format.format(Math.round(seconds / size), unit);
    }
    return format.format(Math.round(seconds), "second");
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
      error.textContent = t("enter_token");
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
        error.textContent = t("token_may_not_review", { role: me.role });
        return false;
      }
      state.me = me;
    } catch (e) {
      sessionStorage.removeItem(TOKEN_KEY);
      error.textContent =
        e.status === 401 ? t("token_not_accepted") : t("sign_in_failed", { message: errorMessage(e) });
      return false;
    }
    $("who-text").textContent = t("signed_in_as", { name: state.me.name, role: state.me.role });
    $("who").hidden = false;
    $("signin").hidden = true;
    $("review").hidden = false;
    $("audit").hidden = !state.me.permissions.includes("audit.read");
    $("probing").hidden = !state.me.permissions.includes("probing.read");
    await loadCalls(true);
    await loadMissed(true);
    if (!$("probing").hidden) await loadProbing();
    if (!$("audit").hidden) await loadAudit(true);
    $("f-manager").focus();
    return true;
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.me = null;
    resetPlayer();
    state.calls = [];
    state.missed = [];
    state.audit = [];
    state.probing = null;
    state.callsStatus = state.missedStatus = state.auditStatus = state.probingStatus = null;
    $("calls").tBodies[0].replaceChildren();
    $("missed-table").tBodies[0].replaceChildren();
    $("audit-table").tBodies[0].replaceChildren();
    renderProbing();
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

  // A status line is kept as a message key and its parameters, so that a switch of language redoes it.
  function setStatus(which, key, params) {
    state[which] = key ? { key, params } : null;
    renderStatus(which);
  }

  const STATUS_LINES = {
    callsStatus: "calls-status",
    missedStatus: "missed-status",
    auditStatus: "audit-status",
    probingStatus: "probing-status",
  };

  function renderStatus(which) {
    const status = state[which];
    $(STATUS_LINES[which]).textContent = status
      ? t(status.key, status.params)
      : "";
  }

  // One page of a list (calls, missed, audit): the first again (reset) or the one after those shown;
  // its rows, its "older" button (<list>-more) and its status line. texts: the status keys; shown is
  // null where a list says nothing once it has rows.
  async function loadPage(list, path, filters, reset, texts, render) {
    const cursor = list + "Cursor";
    const status = list + "Status";
    if (reset) state[cursor] = null;
    const params = Object.assign(filters, { limit: 25, cursor: state[cursor] });
    setStatus(status, texts.loading);
    try {
      const page = await (await api(path + query(params))).json();
      state[list] = reset ? page.items : state[list].concat(page.items);
      state[cursor] = page.next_cursor;
      $(list + "-more").hidden = !page.next_cursor;
      const shown = state[list].length;
      setStatus(status, shown ? texts.shown : texts.empty, { n: shown });
      render();
    } catch (e) {
      setStatus(status, texts.failed, { message: errorMessage(e) });
    }
  }

  async function loadCalls(reset) {
    const texts = { loading: "loading_calls", shown: "calls_shown", empty: "no_calls", failed: "calls_failed" };
    return loadPage("calls", "/v1/calls", callFilters(), reset, texts, renderCalls);
  }

  function renderCalls() {
    $("calls").tBodies[0].replaceChildren(...state.calls.map(callRow));
    renderStatus("callsStatus");
  }

  // A recording that does not hold the whole conversation is marked on its row (README, "Recordings").
  const RECORDING_MARKS = { truncated: "mark_truncated", failed: "mark_failed", unknown: "mark_unknown" };

  function callRow(call) {
    const tr = document.createElement("tr");
    tr.dataset.callId = call.id;
    cell(tr, when(call.requested_at));
    cell(tr, call.manager_id || "");
    cell(tr, callerText(call));
    cell(tr, outcomeName(call.outcome || call.state));
    cell(tr, call.duration_seconds === null ? "" : formatDuration(call.duration_seconds), "num");
    const td = cell(tr, "");
    const state = call.recording_state;
    const mark = Object.hasOwn(RECORDING_MARKS, state) ? t(RECORDING_MARKS[state]) : null;
    if (call.has_recording) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "play";
      button.textContent = t("play");
      button.setAttribute("aria-label", t("play_label", { order: call.order_id, when: when(call.requested_at) }));
      button.addEventListener("click", () => play(call, button));
      td.appendChild(button);
    } else if (call.recording_purged_at) {
      td.textContent = t("purged", { ago: ago(call.recording_purged_at) });
      td.title = when(call.recording_purged_at);
    } else if (!mark) {
      td.textContent = t("none");
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
    return call.caller_ref ? t("customer_ref", { ref: call.caller_ref }) : t("anonymous");
  }

  // -- missed calls -----------------------------------------------------------------------------------

  async function loadMissed(reset) {
    const texts = { loading: "loading_missed", shown: null, empty: "no_missed", failed: "missed_failed" };
    return loadPage("missed", "/v1/calls", { outcome: "missed" }, reset, texts, renderMissed);
  }

  function renderMissed() {
    $("missed-table").tBodies[0].replaceChildren(...state.missed.map(missedRow));
    renderStatus("missedStatus");
  }

  function missedRow(call) {
    const tr = document.createElement("tr");
    tr.dataset.callId = call.id;
    cell(tr, when(call.requested_at));
    cell(tr, call.order_id ? t("order_n", { order: call.order_id }) : callerText(call));
    cell(tr, call.manager_id || "");
    const td = cell(tr, "");
    if (call.callingBack) {
      td.dataset.callbackId = call.callingBack;
      td.textContent = t("calling_back_cell", { manager: call.manager_id });
    } else if (!call.order_id || !call.manager_id) {
      // bridged calls an order's customer, never a number: a caller without an order cannot be called back.
      td.textContent = t(call.order_id ? "no_manager_to_call_back" : "no_order_cannot_call_back");
    } else if (state.me.permissions.includes("calls.callback")) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "callback";
      button.textContent = t("call_back");
      button.setAttribute("aria-label", t("call_back_label", { order: call.order_id }));
      button.addEventListener("click", () => callBack(call, button));
      td.appendChild(button);
    }
    return tr;
  }

  async function callBack(call, button) {
    button.disabled = true;
    setStatus("missedStatus", "calling_back", { order: call.order_id });
    try {
      // The button stays disabled while the request runs: one press, one call.
      const response = await api("/v1/calls", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ callback_of: call.id }),
      });
      const placed = await response.json();
      call.callingBack = placed.id;
      renderMissed();
      setStatus("missedStatus", "call_back_ringing", { manager: call.manager_id, order: call.order_id });
      await loadCalls(true);
    } catch (e) {
      setStatus("missedStatus", "call_back_failed", { order: call.order_id, message: errorMessage(e) });
      button.disabled = false;
    }
  }

  // Talk time in the viewer's locale: "1 min, 5 sec", "1 мин 5 с".
  function formatDuration(seconds) {
    const s = Math.round(seconds);
    const parts = { minutes: Math.floor(s / 60), seconds: s % 60 };
    if (typeof Intl.DurationFormat === "function") {
      return new Intl.DurationFormat(locale(), { style: "short" }).format(parts);
    }
    const unit = (value, name) =>
      new Intl.NumberFormat(locale(), { style: "unit", unit: name, unitDisplay: "short" }).format(value);
    return parts.minutes ? unit(parts.minutes, "minute") + " " + unit(parts.seconds, "second") : unit(s, "second");
  }

  // -- player ---------------------------------------------------------------------------------------

  function resetPlayer() {
    const audio = $("player");
    audio.pause();
    audio.removeAttribute("src");
    audio.load();
    if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
    state.objectUrl = null;
    $("now-playing").textContent = t("no_recording_loaded");
  }

  async function play(call, button) {
    const error = $("player-error");
    const reason = $("reason").value.trim();
    error.textContent = "";
    if (!reason && document.body.dataset.reasonRequired === "true") {
      error.textContent = t("give_reason");
      $("reason").focus();
      return;
    }
    button.disabled = true;
    $("now-playing").textContent = t("loading_recording", { order: call.order_id });
    try {
      // One request, one audit row: the whole file goes into a blob the <audio> element can seek in.
      const response = await api("/v1/calls/" + encodeURIComponent(call.id) + "/recording" + query({ reason }));
      const blob = await response.blob();
      resetPlayer();
      state.objectUrl = URL.createObjectURL(blob);
      const audio = $("player");
      audio.src = state.objectUrl;
      $("now-playing").textContent = t("playing", { order: call.order_id, when: when(call.requested_at) });
      try {
        await audio.play();
      } catch (e) {
        $("now-playing").textContent = t("loaded", { order: call.order_id });
      }
      if (!$("audit").hidden) await loadAudit(true);
    } catch (e) {
      error.textContent = t("play_failed", { message: errorMessage(e) });
      $("now-playing").textContent = t("no_recording_loaded");
    } finally {
      button.disabled = false;
    }
  }

  // -- audit ----------------------------------------------------------------------------------------

  async function loadAudit(reset) {
    const f = $("audit-filters").elements;
    const filters = { actor: f.actor.value.trim(), action: f.action.value, call: f.call.value.trim() };
    const texts = { loading: "loading_audit", shown: null, empty: "no_entries", failed: "audit_failed" };
    return loadPage("audit", "/v1/audit", filters, reset, texts, renderAudit);
  }

  function renderAudit() {
    $("audit-table").tBodies[0].replaceChildren(...state.audit.map(auditRow));
    renderStatus("auditStatus");
  }

  function actionName(action) {
    const key = "action." + action;
    return Object.hasOwn(MESSAGES.en, key) ? t(key) : action;
  }

  function auditRow(entry) {
    const tr = document.createElement("tr");
    tr.dataset.action = entry.action;
    cell(tr, when(entry.at));
    cell(tr, entry.actor);
    cell(tr, actionName(entry.action));
    cell(tr, entry.call_id || "");
    cell(tr, entry.outcome);
    cell(tr, entry.reason || "");
    cell(tr, (entry.details && entry.details.client) || "");
    return tr;
  }

  // -- probing --------------------------------------------------------------------------------------
  // GET /v1/probing: per manager the refused attempts since a time, by outcome and by the length and
  // shape of what was keyed in. The API keeps no digits of a code, so the page has none to show.

  async function loadProbing() {
    const f = $("probing-filters").elements;
    const hours = Number(f.period.value) || 24;
    const params = {
      manager: f.manager.value.trim(),
      from: new Date(Date.now() - hours * 3600 * 1000).toISOString(),
    };
    setStatus("probingStatus", "loading_probing");
    try {
      const page = await (await api("/v1/probing" + query(params))).json();
      state.probing = { since: page.since, managers: page.managers.map(probingManager) };
      // Newest first: the manager refused most recently, and within a manager the latest kind of attempt.
      state.probing.managers.sort((a, b) => b.lastAt.localeCompare(a.lastAt));
      renderProbing();
    } catch (e) {
      state.probing = null;
      renderProbing();
      setStatus("probingStatus", "probing_failed", { message: errorMessage(e) });
    }
  }

  function newestFirst(a, b) {
    return new Date(b.last_at) - new Date(a.last_at) || b.count - a.count;
  }

  function probingManager(entry) {
    const attempts = entry.attempts.slice().sort(newestFirst);
    return {
      id: entry.manager_id,
      refused: entry.refused,
      attempts,
      lastAt: attempts.length ? new Date(attempts[0].last_at).toISOString() : "",
      limited: attempts.some((a) => a.outcome === "rate_limited"),
    };
  }

  function renderProbing() {
    const table = $("probing-table");
    for (const body of [...table.tBodies]) body.remove();
    const data = state.probing;
    if (!data) {
      renderStatus("probingStatus");
      return;
    }
    for (const manager of data.managers) table.appendChild(probingGroup(manager));
    const n = data.managers.length;
    setStatus("probingStatus", n ? "probing_shown" : "no_probing", { n, since: when(data.since) });
  }

  // Counts by a key of the attempts ("unknown order: 9, rate limited: 1"), the largest first.
  function tally(attempts, key, name) {
    const counts = new Map();
    for (const a of attempts) counts.set(a[key], (counts.get(a[key]) || 0) + a.count);
    const number = new Intl.NumberFormat(locale());
    return [...counts]
      .sort((x, y) => y[1] - x[1])
      .map(([value, count]) => t("tally", { name: name(value), count: number.format(count) }))
      .join(", ");
  }

  function shapeName(shape) {
    const key = "shape." + shape;
    return Object.hasOwn(MESSAGES.en, key) ? t(key) : String(shape);
  }

  // One <tbody> per manager: a summary row (all their refused attempts), then one row per outcome,
  // shape and length.
  function probingGroup(manager) {
    const body = document.createElement("tbody");
    body.dataset.managerId = manager.id;
    if (manager.limited) body.className = "over-budget";
    const summary = document.createElement("tr");
    summary.className = "summary";
    const th = document.createElement("th");
    th.scope = "rowgroup";
    th.textContent = manager.id;
    if (manager.limited) {
      const mark = document.createElement("span");
      mark.className = "budget-mark";
      mark.textContent = t("past_budget");
      th.appendChild(mark);
    }
    summary.appendChild(th);
    cell(summary, tally(manager.attempts, "outcome", outcomeName));
    cell(summary, tally(manager.attempts, "code_shape", shapeName));
    const lengths = [...new Set(manager.attempts.map((a) => a.code_length))].sort((x, y) => x - y);
    cell(summary, lengths.join(", "), "num");
    cell(summary, new Intl.NumberFormat(locale()).format(manager.refused), "num");
    cell(summary, when(manager.lastAt));
    body.appendChild(summary);
    for (const a of manager.attempts) {
      const tr = document.createElement("tr");
      tr.className = "detail";
      tr.dataset.outcome = a.outcome;
      tr.dataset.shape = a.code_shape;
      tr.dataset.length = a.code_length;
      tr.dataset.count = a.count;
      cell(tr, "");
      cell(tr, outcomeName(a.outcome), a.outcome === "rate_limited" ? "limited" : "");
      cell(tr, shapeName(a.code_shape));
      cell(tr, a.code_length, "num");
      cell(tr, new Intl.NumberFormat(locale()).format(a.count), "num");
      cell(tr, when(a.last_at));
      body.appendChild(tr);
    }
    return body;
  }

  // -- the filter forms and the tables ------------------------------------------------------------

  // A form's fields are [control id, label's i18n key, the input's attributes]; without attributes the
  // control is the page's select of that id (its options are in index.html, the outcomes' filled in by the
  // server). Its buttons are [type, i18n key, class].
  const TEXT = { type: "text", autocomplete: "off" };
  const SHOW = [["submit", "show"]];
  const FORMS = {
    filters: {
      fields: [
        ["f-manager", "manager", { ...TEXT, name: "manager" }],
        ["f-order", "order", { ...TEXT, name: "order", inputmode: "numeric" }],
        ["f-outcome", "outcome"],
        ["f-from", "from", { name: "from", type: "datetime-local" }],
        ["f-to", "to", { name: "to", type: "datetime-local" }],
        ["f-recording", "recording"],
      ],
      buttons: [
        ["submit", "apply_filters"],
        ["reset", "clear", "secondary"],
      ],
    },
    "probing-filters": {
      fields: [
        ["p-manager", "manager", { ...TEXT, name: "manager" }],
        ["p-period", "period"],
      ],
      buttons: SHOW,
    },
    "audit-filters": {
      fields: [
        ["a-actor", "actor", { ...TEXT, name: "actor" }],
        ["a-action", "action"],
        ["a-call", "call", { ...TEXT, name: "call" }],
      ],
      buttons: SHOW,
    },
  };
  // Each list's table by id: its status line's id, its caption's and its columns' i18n keys. The status line
  // above the table, its frame, caption, header row and body are made here.
  const TABLES = {
    calls: {
      status: "calls-status",
      caption: "calls_caption",
      columns: ["requested", "manager", "order_or_caller", "outcome", "talk_time", "recording"],
    },
    "missed-table": {
      status: "missed-status",
      caption: "missed_caption",
      columns: ["called", "caller", "manager", "call_back"],
    },
    "probing-table": {
      status: "probing-status",
      caption: "probing_caption",
      columns: ["manager", "outcome", "keyed_in", "length", "attempts", "last_attempt"],
    },
    "audit-table": {
      status: "audit-status",
      caption: "audit_caption",
      columns: ["when", "actor", "action", "call", "outcome", "reason_column", "client"],
    },
  };

  // An element with its i18n key (applyLanguage gives it its text) and attributes.
  function element(tag, key, attributes = {}) {
    const made = document.createElement(tag);
    if (key) made.dataset.i18n = key;
    for (const [name, value] of Object.entries(attributes)) made.setAttribute(name, value);
    return made;
  }

  function buildForms() {
    for (const [formId, { fields, buttons }] of Object.entries(FORMS)) {
      const form = $(formId);
      for (const [id, key, attributes] of fields) {
        const control = attributes ? element("input", null, { id, ...attributes }) : $(id);
        const field = element("div", null, { class: "field" });
        field.append(element("label", key, { for: id }), control);
        form.append(field);
      }
      const actions = element("div", null, { class: "actions" });
      for (const [type, key, className] of buttons) {
        actions.append(element("button", key, className ? { type, class: className } : { type }));
      }
      form.append(actions);
    }
  }

  function buildTables() {
    for (const [tableId, { status, caption, columns }] of Object.entries(TABLES)) {
      const table = $(tableId);
      const frame = element("div", null, { class: "table-wrap" });
      table.before(element("p", null, { id: status, class: "status", "aria-live": "polite" }), frame);
      frame.append(table);
      table.append(element("caption", caption, { class: "visually-hidden" }));
      const row = table.createTHead().insertRow();
      for (const key of columns) row.append(element("th", key, { scope: "col" }));
      // Probing's rows come in one <tbody> per manager (renderProbing), the other lists' in this one.
      if (tableId !== "probing-table") table.createTBody();
    }
  }

  // -- wiring ---------------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    buildForms();
    buildTables();
    applyLanguage();
    $("lang").addEventListener("change", (e) => switchLanguage(e.target.value));
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
    $("probing-filters").addEventListener("submit", (e) => {
      e.preventDefault();
      loadProbing();
    });
    $("p-period").addEventListener("change", () => loadProbing());
    if (token()) {
      start();
    } else {
      $("token").focus();
    }
  });
})();
