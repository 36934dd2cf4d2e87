// same_search console: search by picture, live import jobs, small forms. Plain JavaScript, no build step.
"use strict";

// Earlier versions kept the operator token in localStorage; the login session cookie replaces it.
localStorage.removeItem("same_search_token");

// A path segment: every reserved, space or non-ASCII character percent-encoded.
const seg = encodeURIComponent;

function toLogin() {
  location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);
}

// Calls the management API on this origin; the login session cookie goes along by itself.
// A refused token (err_no 12) means the session ended: back to the login form.
async function api(method, path, body, contentType) {
  const options = { method, headers: contentType ? { "Content-Type": contentType } : {}, credentials: "same-origin" };
  if (body !== undefined) options.body = body;
  const answer = await (await fetch(path, options)).json();
  if (answer.err_no === 12 && !document.getElementById("login")) toLogin();
  return answer;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const child of children) node.append(child);
  return node;
}

// The search options the page offers, as query parameters ("" when none is set).
function searchOptions() {
  const same = document.getElementById("same-picture");
  return same && same.checked ? "&same_picture=1" : "";
}

// A picture with a box on it: ``box`` [left, top, right, bottom] in pixels of a picture of
// ``size`` [width, height], drawn as fractions so that a thumbnail of it shows the same part.
function boxed(src, box, size, caption) {
  const [width, height] = size;
  const mark = el("span", { class: "match-box" });
  Object.assign(mark.style, {
    left: `${(100 * box[0]) / width}%`, top: `${(100 * box[1]) / height}%`,
    width: `${(100 * (box[2] - box[0])) / width}%`, height: `${(100 * (box[3] - box[1])) / height}%`,
  });
  return el("figure", { class: "match-side" },
    el("span", { class: "match-frame" }, el("img", { src, alt: "" }), mark), el("figcaption", {}, caption));
}

// Where a confirmed copy lies in either picture, side by side (docs/api.md, "region on a hit").
function matchPanel(left, right) {
  return el("div", { class: "match" }, boxed(...left), ...(right ? [boxed(...right)] : []));
}

// A thumbnail URL that answers a placeholder image when the item has no stored thumbnail.
function withPlaceholder(url) {
  return url + (url.includes("?") ? "&" : "?") + "placeholder=1";
}

// Shows a page of results: appended to those shown with {append: true} ("More results"); the
// status line says how many, in how long, in which order, and whether the daemon has more.
function showResults(appid, answer, how) {
  const { append = false, ms = null, query = null } = how || {};
  const grid = document.getElementById("results");
  const status = document.getElementById("search-status");
  const more = document.getElementById("more");
  if (!append) grid.replaceChildren();
  if (more) more.hidden = true;
  if (answer.err_no !== 0) { status.textContent = `err_no ${answer.err_no}: ${answer.err_msg}`; status.className = "error"; return; }
  status.className = "";
  const reranked = answer.ranking && answer.ranking.order === "reranked";
  const order = reranked ? "re-ranked (query expansion, confirmed copies first; ★ = same picture)"
    : "by descending score";
  for (const hit of answer.results) {
    const score = hit.score.toFixed(4) + (reranked && hit.same_picture ? " ★" : "");
    const card = el("a", { class: "card", href: `/libraries/${seg(appid)}/items/${seg(hit.key)}` },
      el("img", { src: withPlaceholder(hit.thumbnail), alt: "" }),
      el("span", { class: "score" }, score),
      el("span", { class: "brief" }, hit.brief_text === null ? "(binary brief)" : hit.brief_text));
    card.append(hitActions(appid, hit, card));
    const r = hit.region;
    if (r) {
      card.append(matchPanel([hit.thumbnail, r.stored, r.stored_size, "stored"],
        query ? [query, r.query, r.query_size, "query"] : null));
    }
    grid.append(card);
  }
  const shown = grid.children.length;
  const took = ms === null ? "" : ` in ${Math.round(ms)} ms`;
  const plus = answer.has_more ? " (more available)" : "";
  status.textContent = shown ? `${shown} results${took}${plus}, ${order}` : "No results: the library is empty.";
  status.dataset.count = String(shown);
  status.dataset.order = answer.ranking ? answer.ranking.order : "score";
  if (more) more.hidden = !answer.has_more;
}

// A hit's own buttons: edit its brief in place (Enter saves, Escape gives up) or remove it from
// the library. They act on the item and stop the card's link from being followed.
function hitActions(appid, hit, card) {
  const path = `/api/libraries/${seg(appid)}/items/${seg(hit.key)}`;
  const edit = el("button", { class: "hit-edit", type: "button", title: "edit this item's brief" }, "edit");
  const remove = el("button", { class: "hit-remove", type: "button", title: "remove this item" }, "remove");
  const stop = (e) => { e.preventDefault(); e.stopPropagation(); };
  edit.addEventListener("click", (e) => {
    stop(e);
    const shown = card.querySelector(".brief");
    if (card.querySelector(".brief-edit")) return;
    const input = el("input", { class: "brief-edit", value: hit.brief_text ?? "" });
    input.addEventListener("click", stop);
    input.addEventListener("keydown", async (k) => {
      if (k.key === "Escape") { input.replaceWith(shown); return; }
      if (k.key !== "Enter") return;
      stop(k);
      const answer = await api("PATCH", path, JSON.stringify({ brief_text: input.value }), "application/json");
      if (answer.err_no !== 0) { input.title = `err_no ${answer.err_no}: ${answer.err_msg}`; input.classList.add("error"); return; }
      hit.brief_text = answer.item.brief_text;
      shown.textContent = hit.brief_text;
      input.replaceWith(shown);
    });
    shown.replaceWith(input);
    input.focus();
  });
  remove.addEventListener("click", async (e) => {
    stop(e);
    if (!confirm("Remove this item from the library?")) return;
    const answer = await api("DELETE", path);
    if (answer.err_no === 0) { card.classList.add("removed"); card.removeAttribute("href"); edit.disabled = remove.disabled = true; }
    else remove.title = `err_no ${answer.err_no}: ${answer.err_msg}`;
  });
  return el("span", { class: "hit-actions" }, edit, " ", remove);
}

// The item page's form: a changed brief and/or both tags, sent as one PATCH of the item.
function setUpItemEdit() {
  const form = document.getElementById("edit-item");
  if (!form) return;
  const status = document.getElementById("edit-status");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = {};
    if (form.brief_text.value !== form.brief_text.dataset.initial) body.brief_text = form.brief_text.value;
    if (form.tag1.value !== "" && form.tag2.value !== "") body.tags = [Number(form.tag1.value), Number(form.tag2.value)];
    if (!Object.keys(body).length) { status.textContent = "Nothing to save."; return; }
    const answer = await api("PATCH", form.dataset.path, JSON.stringify(body), "application/json");
    if (answer.err_no !== 0) { status.textContent = `err_no ${answer.err_no}: ${answer.err_msg}`; return; }
    const item = answer.item;
    document.getElementById("item-brief").textContent = item.brief_text ?? "(binary brief)";
    document.getElementById("item-tags").textContent = item.tags ? item.tags.join(", ") : "none";
    form.brief_text.dataset.initial = form.brief_text.value;
    status.textContent = "Saved.";
  });
}

// The last search, so "More results" can ask for the next page of the same question.
const PAGE = 24;
let lastSearch = null;

// Runs a search (path: the search URL without rn/pn) and shows its first page; the query picture
// (a File or a URL) is shown beside the results.
async function runSearch(appid, path, body, type, query) {
  const floor = document.getElementById("min-score");
  if (floor && floor.value !== "") path += `${path.includes("?") ? "&" : "?"}min_score=${encodeURIComponent(floor.value)}`;
  path += searchOptions().replace(/^&/, path.includes("?") ? "&" : "?");
  const shownQuery = query ? (typeof query === "string" ? query : URL.createObjectURL(query)) : null;
  lastSearch = { appid, path, body, type, shown: 0, query: shownQuery };
  const figure = document.getElementById("query");
  if (figure && shownQuery) {
    document.getElementById("query-image").src = shownQuery;
    figure.hidden = false;
  }
  await searchPage(false);
}

async function searchPage(append) {
  const search = lastSearch;
  const pn = append ? document.getElementById("results").children.length : 0;
  const started = performance.now();
  const answer = await api("POST", `${search.path}${search.path.includes("?") ? "&" : "?"}rn=${PAGE}&pn=${pn}`,
    search.body, search.type);
  if (search !== lastSearch) return;  // a newer search started meanwhile
  showResults(search.appid, answer, { append, ms: performance.now() - started, query: search.query });
}

function setUpRanking() {
  const form = document.getElementById("ranking-form");
  if (!form) return;
  const appid = document.body.dataset.appid;
  const status = document.getElementById("ranking-status");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const order = new FormData(form).get("order");
    const answer = await api("PUT", `/api/libraries/${seg(appid)}/ranking`, JSON.stringify({ order }),
      "application/json");
    if (answer.err_no !== 0) { status.textContent = `err_no ${answer.err_no}: ${answer.err_msg}`; return; }
    status.dataset.order = answer.library.ranking.order;
    status.textContent = "Saved.";
  });
}

async function searchFile(appid, file) {
  document.getElementById("search-status").textContent = "Searching…";
  await runSearch(appid, `/api/libraries/${seg(appid)}/search`, file, file.type || "application/octet-stream", file);
}

function setUpSearch() {
  const appid = document.body.dataset.appid;
  const zone = document.getElementById("dropzone");
  const input = document.getElementById("file");
  if (zone && input) {
    input.addEventListener("change", () => input.files[0] && searchFile(appid, input.files[0]));
    zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault(); zone.classList.remove("over");
      if (e.dataTransfer.files[0]) searchFile(appid, e.dataTransfer.files[0]);
    });
  }
  const similar = document.getElementById("similar");
  if (similar) {
    similar.addEventListener("click", async () => {
      const path = `/api/libraries/${seg(appid)}/search?contsign=${encodeURIComponent(similar.dataset.contsign)}`;
      const picture = document.querySelector(".detail img");
      await runSearch(appid, path, undefined, undefined, picture ? picture.src : null);
    });
  }
  const more = document.getElementById("more");
  if (more) more.addEventListener("click", () => lastSearch && searchPage(true));
  const remove = document.getElementById("delete-item");
  if (remove) {
    remove.addEventListener("click", async () => {
      if (!confirm("Delete this item from the library?")) return;
      const answer = await api("DELETE", remove.dataset.path);
      if (answer.err_no === 0) location.assign(remove.dataset.back);
      else document.getElementById("delete-status").textContent = `err_no ${answer.err_no}: ${answer.err_msg}`;
    });
  }
}

function formatEta(seconds) {
  if (seconds === null || seconds === undefined) return "";
  return seconds > 120 ? `${Math.round(seconds / 60)} min` : `${Math.round(seconds)} s`;
}

// The overview's library table, library count and uptime: refreshed with the job list, so an
// import's items show up while it runs. A library created or deleted elsewhere reloads the page.
async function refreshLibraries() {
  const rows = [...document.querySelectorAll("table.libraries tr[data-appid]")];
  const answer = await api("GET", "/api/libraries");
  if (answer.err_no !== 0) return;
  const known = new Map(rows.map((row) => [row.dataset.appid, row]));
  const listed = new Set(answer.libraries.map((lib) => lib.appid));
  if ([...listed].some((appid) => !known.has(appid)) || [...known.keys()].some((appid) => !listed.has(appid))) {
    if (rows.length || listed.size) { location.reload(); return; }
  }
  for (const lib of answer.libraries) {
    const cell = known.get(lib.appid).querySelector(".items");
    if (cell && lib.items !== null) cell.textContent = String(lib.items);
  }
  const count = document.getElementById("library-count");
  if (count) count.textContent = String(listed.size);
}

function refreshUptime() {
  const uptime = document.getElementById("uptime");
  if (uptime) uptime.textContent = `${Math.max(0, Math.round(Date.now() / 1000 - Number(uptime.dataset.started)))}s`;
}

async function refreshJobs() {
  const body = document.getElementById("jobs");
  if (!body) return;
  const answer = await api("GET", "/api/jobs");
  if (answer.err_no !== 0) return;
  const newJob = document.getElementById("new-job");
  const started = newJob && answer.jobs.find((job) => String(job.id) === newJob.dataset.job);
  if (started) newJob.querySelector(".message").textContent = `job ${started.id} ${started.status} (${started.position}/${started.total})`;
  body.replaceChildren(...answer.jobs.map((job) => {
    const share = job.total ? Math.round((100 * job.position) / job.total) : 100;
    const bar = el("span", { class: "progress", title: `${share}%` }, el("span", { style: `width:${share}%` }));
    const cancel = el("button", { "data-job": job.id }, "cancel");
    cancel.disabled = !["queued", "running"].includes(job.status);
    cancel.addEventListener("click", () => api("POST", `/api/jobs/${seg(job.id)}/cancel`).then(refreshJobs));
    return el("tr", { "data-status": job.status },
      el("td", {}, String(job.id)), el("td", {}, job.appid),
      el("td", {}, job.kind === "sync" ? `sync ${job.source}${job.remove_missing ? " (removes gone files)" : ""}` : job.source),
      el("td", {}, job.status),
      el("td", {}, bar, ` ${job.position}/${job.total}`), el("td", {}, String(job.failed)),
      el("td", { title: job.kind === "sync" ? "unchanged files" : "already stored" }, String(job.duplicates)
        + (job.kind === "sync" ? ` · ${job.updated} updated · ${job.removed} removed` : "")),
      el("td", { class: "near" }, String(job.near_duplicates ?? 0)),
      el("td", {}, job.images_per_s === null ? "" : String(job.images_per_s)),
      el("td", {}, formatEta(job.eta_s)), el("td", {}, cancel));
  }));
}

function rebuildText(state) {
  if (!state) return "No rebuild since the daemon started.";
  if (state.state === "running") {
    const share = state.total ? ` (${Math.floor((100 * state.done) / state.total)}%)` : "";
    const eta = state.eta_s === null ? "" : `, about ${Math.round(state.eta_s)} s left`;
    return `Rebuild (${state.reason}) ${state.phase}: ${state.done} of ${state.total} items${share}${eta}`;
  }
  const line = `Last rebuild (${state.reason}): ${state.state} after ${state.seconds.toFixed(1)} s`;
  return state.error ? `${line}: ${state.error}` : line;
}

// The library page's rebuild line: refreshed every second while a rebuild runs.
function setUpRebuild() {
  const line = document.getElementById("rebuild");
  const button = document.getElementById("rebuild-start");
  if (!line || !button) return;
  const path = `/api/libraries/${seg(document.body.dataset.appid)}/rebuild`;
  let timer = null;
  const show = (state) => {
    line.textContent = rebuildText(state);
    const running = Boolean(state && state.state === "running");
    line.dataset.state = running ? "running" : (state ? state.state : "idle");
    button.disabled = running;
    if (running && timer === null) timer = setInterval(refresh, 1000);
    if (!running && timer !== null) { clearInterval(timer); timer = null; }
  };
  async function refresh() {
    const answer = await api("GET", path);
    if (answer.err_no === 0) show(answer.rebuild);
  }
  button.addEventListener("click", async () => {
    const answer = await api("POST", path);
    if (answer.err_no === 0) show(answer.rebuild); else line.textContent = answer.err_msg;
  });
  if (line.dataset.state === "running") refresh();
}

function setUpForms() {
  const newLibrary = document.getElementById("new-library");
  if (newLibrary) {
    newLibrary.addEventListener("submit", async (e) => {
      e.preventDefault();
      const answer = await api("POST", "/api/libraries", JSON.stringify({ appid: newLibrary.appid.value }), "application/json");
      if (answer.err_no === 0) location.reload(); else newLibrary.querySelector(".message").textContent = answer.err_msg;
    });
  }
  const newJob = document.getElementById("new-job");
  if (newJob) {
    newJob.addEventListener("submit", async (e) => {
      e.preventDefault();
      // "sync": the library follows the folder (new, changed, moved files; gone ones on request).
      const kind = newJob.kind ? newJob.kind.value : "dir";
      const job = { appid: newJob.appid.value, source: { [kind]: newJob.dir.value } };
      if (kind === "sync" && newJob.remove_missing.checked) job.remove_missing = true;
      const answer = await api("POST", "/api/jobs", JSON.stringify(job), "application/json");
      newJob.querySelector(".message").textContent = answer.err_no === 0 ? `job ${answer.job.id} queued` : answer.err_msg;
      newJob.dataset.job = answer.err_no === 0 ? String(answer.job.id) : "";
      refreshJobs();
    });
  }
  if (document.getElementById("jobs")) {
    const refresh = () => { refreshJobs(); refreshLibraries(); refreshUptime(); };
    refresh();
    setInterval(refresh, 1500);
  }
}

// Only a page of this console may follow the login, never another site (no open redirect).
function nextPath() {
  const target = new URL(new URLSearchParams(location.search).get("next") || "/", location.origin);
  return target.origin === location.origin ? target.pathname + target.search : "/";
}

function setUpLogin() {
  const form = document.getElementById("login");
  if (form) {
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const answer = await api("POST", "/login", JSON.stringify({ token: form.token.value }), "application/json");
      if (answer.err_no === 0) location.replace(nextPath());
      else { form.querySelector(".message").textContent = answer.err_msg; form.token.select(); }
    });
  }
  const logout = document.getElementById("logout");
  if (logout) {
    logout.addEventListener("click", async () => {
      await api("POST", logout.dataset.action);
      location.assign("/login");
    });
  }
}

setUpLogin();
setUpSearch();
setUpRanking();
setUpForms();
setUpRebuild();
setUpItemEdit();
