// The playground page: every number on it comes from this server's JSON API (same origin,
// relative URLs, so the page also works behind a path prefix). No third-party code; server
// data is put in the page with textContent only, never parsed as HTML.
//
// State lives in the URL (?history=50,172&k=10 or ?user=alice&k=10, &models=a,b when not the
// default pair): loading such a URL renders the recommendations with no click. The API key is
// kept in a variable only: never in the URL, never in storage.

const MAX_HISTORY_SHOWN = 50; // the history list shows the newest items; the rest are counted
const SEARCH_PAGE = 8;

const state = {
  apiKey: "",
  models: [], // GET /models -> models
  modelA: null,
  modelB: null,
  wantedModels: [],
  k: 10,
  user: "", // "" = a history in the page only (stateless requests, nothing stored)
  history: [], // item ids, oldest first (in user mode: the stored history)
  historyNote: "",
  titles: new Map(), // item id -> title, learned from every answer
  actionNote: "", // what the last action did (e.g. the caches POST /events reported)
};

let generation = 0; // bumped by every action: answers to an older one are dropped
const search = { q: "", offset: 0, seq: 0 };

const $ = (id) => document.getElementById(id);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "style") Object.assign(node.style, value); // CSSOM: allowed by the page's CSP
    else if (key.startsWith("aria-") || key === "role") node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

// ---------------------------------------------------------------------------------------------
// API calls

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function describeError(status, data, text) {
  if (status === 401) return "401: this server needs an API key. Enter it above and press Use key.";
  const detail = data && data.detail;
  if (Array.isArray(detail)) {
    const parts = detail.map((d) => {
      const where = (d.loc || []).filter((part) => part !== "body" && part !== "query").join(".");
      return where ? `${where}: ${d.msg}` : d.msg;
    });
    return `${status}: ${parts.join("; ")}`;
  }
  if (typeof detail === "string") return `${status}: ${detail}`;
  return `${status}: ${(text || "").slice(0, 200) || "the server gave no details"}`;
}

function serverMs(header) {
  const match = /dur=([\d.]+)/.exec(header || "");
  return match ? Number(match[1]) : null;
}

// -> {data, roundTripMs, serverMs}; throws ApiError with a readable message on any failure.
async function api(path, { method = "GET", body } = {}) {
  const headers = {};
  if (body !== undefined) headers["content-type"] = "application/json";
  if (state.apiKey) headers.authorization = `Bearer ${state.apiKey}`;
  const started = performance.now();
  let response;
  try {
    response = await fetch(new URL(path, document.baseURI), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, `cannot reach the server (${err.message})`);
  }
  const text = await response.text();
  const roundTripMs = performance.now() - started;
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null; // a proxy's HTML error page: described from the text below
  }
  if (!response.ok) throw new ApiError(response.status, describeError(response.status, data, text));
  return { data, roundTripMs, serverMs: serverMs(response.headers.get("server-timing")) };
}

function learnTitles(items) {
  for (const item of items || []) {
    if (item.title) state.titles.set(item.item_id, item.title);
  }
}

// ---------------------------------------------------------------------------------------------
// URL <-> state

function splitIds(text) {
  return text.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);
}

function readUrl() {
  const params = new URLSearchParams(location.search);
  state.user = (params.get("user") || "").trim();
  state.history = state.user ? [] : splitIds(params.get("history") || "");
  // A k that is not a number goes to the server as null: its 422 explains the limit.
  state.k = params.has("k") ? Number.parseInt(params.get("k"), 10) : 10;
  state.wantedModels = splitIds(params.get("models") || "");
}

function defaultPair() {
  const find = (kind) =>
    (state.models.find((m) => m.name === kind) || state.models.find((m) => m.kind === kind) || {}).name;
  const names = state.models.map((m) => m.name);
  const fallback = (state.models.find((m) => m.default) || state.models[0] || {}).name;
  const a = find("plr") || fallback;
  const b = find("sasrec") || names.find((n) => n !== a) || a;
  return [a, b === a ? names.find((n) => n !== a) || a : b];
}

function writeUrl(push) {
  const params = new URLSearchParams();
  if (state.user) params.set("user", state.user);
  else if (state.history.length) params.set("history", state.history.join(","));
  params.set("k", String(state.k));
  const [a, b] = defaultPair();
  if (state.modelA && (state.modelA !== a || state.modelB !== b)) {
    params.set("models", `${state.modelA},${state.modelB}`);
  }
  const url = `${location.pathname}?${params.toString().replaceAll("%2C", ",")}`;
  if (url === location.pathname + location.search) return;
  if (push) history.pushState(null, "", url);
  else history.replaceState(null, "", url);
}

// ---------------------------------------------------------------------------------------------
// Messages and busy state

function clearMessages() {
  $("errors").replaceChildren();
}

function showError(message) {
  const text = message instanceof Error ? message.message : String(message);
  const shown = [...$("errors").children].some((p) => p.textContent === text);
  if (!shown) $("errors").append(el("p", { class: "error" }, text));
}

function setBusy(busy) {
  const results = document.querySelector(".results");
  results.setAttribute("aria-busy", String(busy));
  if (!busy) results.dataset.renders = String(Number(results.dataset.renders) + 1);
}

// Every user action: one busy period; errors become messages, never an exception or a blank page.
async function act(work) {
  const gen = ++generation;
  setBusy(true);
  clearMessages();
  try {
    await work(gen);
  } catch (err) {
    if (gen === generation) showError(err);
  } finally {
    if (gen === generation) setBusy(false);
  }
}

// ---------------------------------------------------------------------------------------------
// Loading: models, the stored history, titles, the two answers

async function loadModels() {
  const { data } = await api("models");
  state.models = data.models;
  const names = state.models.map((m) => m.name);
  for (const select of [$("model-a"), $("model-b")]) {
    select.replaceChildren(...state.models.map((m) =>
      el("option", { value: m.name }, m.kind === m.name ? m.name : `${m.name} (${m.kind})`)));
  }
  const [a, b] = defaultPair();
  const [wantA, wantB] = state.wantedModels;
  const bad = state.wantedModels.filter((n) => !names.includes(n));
  if (bad.length) showError(`no model named ${bad.join(", ")} here; showing ${a} and ${b}`);
  state.modelA = names.includes(wantA) ? wantA : a;
  state.modelB = names.includes(wantB) ? wantB : b;
}

async function loadStoredHistory() {
  try {
    const { data } = await api(`users/${encodeURIComponent(state.user)}`);
    state.history = data.history;
    state.historyNote = "";
  } catch (err) {
    if (err.status !== 404) throw err;
    state.history = [];
    state.historyNote = `${state.user} has no stored history yet: add items to start one.`;
  }
}

async function lookupTitles(ids) {
  const missing = [...new Set(ids.filter((id) => !state.titles.has(id)))].slice(0, 100);
  if (!missing.length) return;
  const params = new URLSearchParams({ ids: missing.join(","), limit: "100", model: state.modelA });
  try {
    learnTitles((await api(`items?${params}`)).data.items);
  } catch (err) {
    // Unknown ids are reported by /recommend (named there, per model): the history list then
    // shows bare ids instead of repeating the message. Anything else is shown.
    if (err.status !== 422) throw err;
  }
}

async function recommend(model) {
  const body = { model, k: state.k, explain: true };
  if (state.user) body.user_id = state.user;
  else body.history = state.history;
  const answer = await api("recommend", { method: "POST", body });
  learnTitles(answer.data.items);
  return answer;
}

function modelPair() {
  return state.modelB && state.modelB !== state.modelA ? [state.modelA, state.modelB] : [state.modelA];
}

async function render(gen) {
  if (!state.models.length) await loadModels();
  syncForm();
  if (state.user) await loadStoredHistory();
  else state.historyNote = "";
  if (gen !== generation) return;
  // Titles for the history are looked up while the models answer; a failure is reported
  // once both are done (caught at once: no unhandled rejection in the meantime).
  const titles = lookupTitles(state.history.slice(-MAX_HISTORY_SHOWN)).then(() => null, (err) => err);
  if (!state.user && !state.history.length) {
    renderHistory();
    renderEmpty();
    return;
  }
  const models = modelPair();
  const answers = await Promise.allSettled(models.map(recommend));
  const titleError = await titles;
  if (gen !== generation) return;
  if (titleError) showError(titleError);
  renderHistory();
  renderAnswers(models, answers);
}

// ---------------------------------------------------------------------------------------------
// Rendering

function syncForm() {
  $("model-a").value = state.modelA;
  $("model-b").value = state.modelB;
  $("k").value = Number.isFinite(state.k) ? String(state.k) : "";
  $("user").value = state.user;
  $("history").value = state.user ? "" : state.history.join(", ");
  syncHistoryField();
}

function syncHistoryField() {
  const stored = $("user").value.trim() !== "";
  $("history").disabled = stored;
  $("history").placeholder = stored ? "the stored history is used" : "e.g. 50, 172, 181";
}

function label(itemId) {
  return state.titles.get(itemId) || `item ${itemId}`;
}

function renderHistory() {
  const list = $("history-list");
  const start = Math.max(0, state.history.length - MAX_HISTORY_SHOWN);
  list.start = start + 1;
  list.replaceChildren(
    ...state.history.slice(start).map((itemId, i) => {
      // The remove button comes first so that it floats right of the first line, even when
      // a long title wraps.
      const remove = state.user ? null : el("button", {
        type: "button", class: "remove", "aria-label": `Remove ${label(itemId)} from the history`,
        onclick: () => removeAt(start + i),
      }, "×");
      return el("li", { dataset: { itemId } }, remove, el("span", { class: "title" }, label(itemId)),
        el("span", { class: "id" }, `#${itemId}`));
    }),
  );
  const earlier = start ? `${start} earlier items not shown. ` : "";
  const empty = state.history.length ? "" : "Empty: search below and add items, or type ids above.";
  $("history-note").textContent = state.historyNote || earlier + empty;
}

function renderEmpty() {
  $("columns").replaceChildren();
  $("streams").hidden = true;
  $("status").textContent = "Add items to the history (or enter a stored user) to see recommendations.";
}

function modelInfo(name) {
  return state.models.find((m) => m.name === name) || { name, kind: "?" };
}

function fmtMs(ms) {
  return ms === null || ms === undefined ? "n/a" : `${ms.toFixed(1)} ms`;
}

function renderAnswers(models, answers) {
  const ok = answers.map((a) => (a.status === "fulfilled" ? a.value : null));
  answers.forEach((a, i) => {
    if (a.status === "rejected") showError(`${models[i]}: ${a.reason.message}`);
  });
  const idSets = ok.map((a) => (a ? new Set(a.data.items.map((it) => it.item_id)) : null));
  const columns = models.map((name, i) => {
    const other = models.length === 2 ? idSets[1 - i] : null;
    return renderColumn(name, ok[i], other, models[1 - i]);
  });
  $("columns").replaceChildren(...columns);
  const parts = [];
  if (state.actionNote) parts.push(state.actionNote);
  if (models.length === 2 && idSets[0] && idSets[1]) {
    const common = [...idSets[0]].filter((id) => idSets[1].has(id)).length;
    parts.push(`${common} of ${idSets[0].size} items in both lists; the others are highlighted.`);
  }
  $("status").textContent = parts.join(" ");
  state.actionNote = "";
  const explained = ok.find((a) => a && a.data.explain);
  renderExplanation(explained ? explained.data : null);
}

function renderColumn(name, answer, otherIds, otherName) {
  const info = modelInfo(name);
  const column = el("article", { class: "column", dataset: { model: name }, "aria-label": `${name} recommendations` },
    el("h3", { title: `kind ${info.kind}, version ${info.version}` }, name,
      info.kind !== name ? el("span", { class: "kind" }, info.kind) : null));
  if (!answer) {
    column.append(el("p", { class: "column-error" }, "No answer: see the message above."));
    return column;
  }
  const data = answer.data;
  column.append(
    el("p", { class: "meta" },
      "cache ", el("strong", { dataset: { field: "cache" } }, data.cache),
      " · server ", el("span", { dataset: { field: "server-ms" } }, fmtMs(answer.serverMs)),
      " · round trip ", el("span", { dataset: { field: "round-trip-ms" } }, fmtMs(answer.roundTripMs)),
      " · history ", String(data.history_length)),
  );
  if (data.fallback) column.append(el("p", { class: "fallback" }, `No usable history: ${data.fallback} fallback.`));
  column.append(el("ol", { class: "items" }, data.items.map((item) => {
    const only = otherIds && !otherIds.has(item.item_id);
    // The score comes first so that it floats right of the first line when a title wraps.
    return el("li", { class: only ? "item differs" : "item", dataset: { itemId: item.item_id } },
      el("span", { class: "score", title: "score" }, item.score.toFixed(3)),
      el("span", { class: "title" }, item.title || `item ${item.item_id}`),
      el("span", { class: "id" }, `#${item.item_id}`),
      only ? el("span", { class: "badge" }, `not in ${otherName}`) : null);
  })));
  return column;
}

function renderExplanation(data) {
  const section = $("streams");
  const explain = data && data.explain;
  const groups = explain && (explain.streams || explain.steps);
  if (!groups) {
    section.hidden = true;
    return;
  }
  const isStreams = Boolean(explain.streams);
  $("streams-title").textContent = isStreams ? `${data.model}: reasoning streams` : `${data.model}: reasoning steps`;
  const total = isStreams ? groups.reduce((sum, s) => sum + (s.gate_weight || 0), 0) : null;
  $("streams-note").textContent = isStreams
    ? `Each stream's top ${state.k}, scored alone; the gate weights (sum ${total.toFixed(3)}) mix the streams into ${data.model}'s answer.`
    : `Top ${state.k} after each reasoning step (step 0: the encoder alone).`;
  const final = new Set(data.items.map((it) => it.item_id));
  const shared = groups.slice(1).reduce(
    (common, g) => new Set(g.items.map((it) => it.item_id).filter((id) => common.has(id))),
    new Set(groups[0].items.map((it) => it.item_id)));
  if (groups.length > 1) {
    const all = groups.length === 2 ? "Both" : `All ${groups.length}`;
    $("streams-note").textContent += ` ${all} share ${shared.size} of their top ${groups[0].items.length}; items in italics are not in ${data.model}'s answer.`;
  }
  $("stream-list").replaceChildren(...groups.map((group) => {
    const weight = group.gate_weight;
    const card = el("article", { class: "stream", dataset: isStreams ? { gateWeight: String(weight) } : {} },
      el("h3", {}, isStreams ? `Stream ${group.stream + 1}` : `Step ${group.step}`));
    if (isStreams && weight !== null) {
      card.append(el("div", { class: "gate" },
        el("span", { class: "gate-bar", "aria-hidden": "true" },
          el("span", { class: "gate-fill", style: { width: `${(100 * weight).toFixed(1)}%` } })),
        el("span", { class: "gate-value" }, `gate ${weight.toFixed(3)}`)));
    }
    card.append(el("ol", { class: "stream-items" }, group.items.map((item) =>
      el("li", { class: final.has(item.item_id) ? "" : "not-final" },
        item.title || `item ${item.item_id}`))));
    return card;
  }));
  section.hidden = false;
}

// ---------------------------------------------------------------------------------------------
// Actions

async function addItem(itemId, title) {
  if (title) state.titles.set(itemId, title);
  await act(async (gen) => {
    if (state.user) {
      const { data } = await api("events", { method: "POST", body: { user_id: state.user, item_ids: [itemId] } });
      const caches = Object.entries(data.caches).map(([m, c]) => `${m} ${c}`).join(", ");
      state.actionNote = `Added ${label(itemId)} (POST /events: history ${data.history_length}, caches ${caches}).`;
    } else {
      state.history.push(itemId);
      writeUrl(true);
    }
    await render(gen);
  });
}

function removeAt(index) {
  state.history.splice(index, 1);
  writeUrl(true);
  act(render);
}

function submitState(event) {
  event.preventDefault();
  state.user = $("user").value.trim();
  state.history = state.user ? [] : splitIds($("history").value);
  state.k = Number.parseInt($("k").value, 10);
  state.modelA = $("model-a").value || state.modelA;
  state.modelB = $("model-b").value || state.modelB;
  writeUrl(true);
  act(render);
}

function matchSummary(q, total, shown) {
  if (total === 0) return `No title matches "${q}".`;
  if (total === 1) return `1 title matches "${q}".`;
  return `${total} titles match "${q}", most popular first${shown < total ? ` (${shown} shown)` : ""}.`;
}

async function runSearch(offset) {
  const seq = ++search.seq;
  search.offset = offset;
  const params = new URLSearchParams({ q: search.q, limit: String(SEARCH_PAGE), offset: String(offset) });
  if (state.modelA) params.set("model", state.modelA);
  const summary = $("search-summary");
  const list = $("search-results");
  list.setAttribute("aria-busy", "true"); // until the newest search has its answer
  try {
    const { data } = await api(`items?${params}`);
    if (seq !== search.seq) return;
    learnTitles(data.items);
    const rows = data.items.map((item) => el("li", {},
      el("button", {
        type: "button", class: "add", dataset: { itemId: item.item_id },
        "aria-label": `Add ${item.title || `item ${item.item_id}`} to the history`,
        onclick: () => addItem(item.item_id, item.title),
      },
      el("span", { class: "plus", "aria-hidden": "true" }, "+"),
      el("span", { class: "title" }, item.title || `item ${item.item_id}`),
      el("span", { class: "id" }, `#${item.item_id} · rank ${item.popularity_rank}`))));
    if (offset === 0) list.replaceChildren(...rows);
    else list.append(...rows);
    const shown = offset + data.items.length;
    summary.className = "hint";
    summary.textContent = search.q ? matchSummary(search.q, data.total, shown) : "Most popular items:";
    $("search-more").hidden = shown >= data.total;
    list.setAttribute("aria-busy", "false");
  } catch (err) {
    if (seq !== search.seq) return;
    list.setAttribute("aria-busy", "false");
    summary.className = "hint error";
    summary.textContent = `Search failed: ${err.message}`;
    list.replaceChildren();
    $("search-more").hidden = true;
  }
}

let searchTimer = null;

function bind() {
  $("state-form").addEventListener("submit", submitState);
  $("user").addEventListener("input", syncHistoryField);
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.apiKey = $("api-key").value.trim();
    state.models = [];
    act(render);
    runSearch(0);
  });
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    clearTimeout(searchTimer);
    search.q = $("search").value.trim();
    runSearch(0);
  });
  $("search").addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => {
      search.q = $("search").value.trim();
      runSearch(0);
    }, 250);
  });
  $("search-more").addEventListener("click", () => runSearch(search.offset + SEARCH_PAGE));
  for (const id of ["model-a", "model-b"]) {
    $(id).addEventListener("change", () => $("state-form").requestSubmit());
  }
  window.addEventListener("popstate", () => {
    readUrl();
    state.modelA = null;
    state.models = []; // re-resolves the models named in the URL
    act(render);
  });
}

bind();
readUrl();
act(render);
runSearch(0);
