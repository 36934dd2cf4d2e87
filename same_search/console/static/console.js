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

function showResults(appid, answer, query) {
  const grid = document.getElementById("results");
  const status = document.getElementById("search-status");
  grid.replaceChildren();
  if (answer.err_no !== 0) { status.textContent = `err_no ${answer.err_no}: ${answer.err_msg}`; status.className = "error"; return; }
  status.className = "";
  const reranked = answer.ranking && answer.ranking.order === "reranked";
  const order = reranked ? "Re-ranked (query expansion, confirmed copies first; ★ = same picture)"
    : "By descending score";
  status.textContent = answer.results.length ? order : "No results: the library is empty.";
  status.dataset.order = answer.ranking ? answer.ranking.order : "score";
  for (const hit of answer.results) {
    const score = hit.score.toFixed(4) + (reranked && hit.same_picture ? " ★" : "");
    const card = el("a", { class: "card", href: `/libraries/${seg(appid)}/items/${seg(hit.key)}` },
      el("img", { src: hit.thumbnail, alt: "" }),
      el("span", { class: "score" }, score),
      el("span", { class: "brief" }, hit.brief_text === null ? "(binary brief)" : hit.brief_text));
    const r = hit.region;
    if (r) {
      card.append(matchPanel([hit.thumbnail, r.stored, r.stored_size, "stored"],
        query ? [query, r.query, r.query_size, "query"] : null));
    }
    grid.append(card);
  }
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
  showResults(appid, await api("POST", `/api/libraries/${seg(appid)}/search?rn=24${searchOptions()}`, file,
    file.type || "application/octet-stream"), URL.createObjectURL(file));
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
      const path = `/api/libraries/${seg(appid)}/search?rn=24&contsign=${encodeURIComponent(similar.dataset.contsign)}`;
      const shown = document.querySelector(".detail img");
      showResults(appid, await api("POST", path), shown ? shown.src : null);
    });
  }
}

function formatEta(seconds) {
  if (seconds === null || seconds === undefined) return "";
  return seconds > 120 ? `${Math.round(seconds / 60)} min` : `${Math.round(seconds)} s`;
}

async function refreshJobs() {
  const body = document.getElementById("jobs");
  if (!body) return;
  const answer = await api("GET", "/api/jobs");
  if (answer.err_no !== 0) return;
  body.replaceChildren(...answer.jobs.map((job) => {
    const share = job.total ? Math.round((100 * job.position) / job.total) : 100;
    const bar = el("span", { class: "progress", title: `${share}%` }, el("span", { style: `width:${share}%` }));
    const cancel = el("button", { "data-job": job.id }, "cancel");
    cancel.disabled = !["queued", "running"].includes(job.status);
    cancel.addEventListener("click", () => api("POST", `/api/jobs/${seg(job.id)}/cancel`).then(refreshJobs));
    return el("tr", { "data-status": job.status },
      el("td", {}, String(job.id)), el("td", {}, job.appid), el("td", {}, job.source), el("td", {}, job.status),
      el("td", {}, bar, ` ${job.position}/${job.total}`), el("td", {}, String(job.failed)),
      el("td", {}, String(job.duplicates)), el("td", { class: "near" }, String(job.near_duplicates ?? 0)),
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
      const answer = await api("POST", "/api/jobs",
        JSON.stringify({ appid: newJob.appid.value, source: { dir: newJob.dir.value } }), "application/json");
      newJob.querySelector(".message").textContent = answer.err_no === 0 ? `job ${answer.job.id} queued` : answer.err_msg;
      refreshJobs();
    });
  }
  if (document.getElementById("jobs")) { refreshJobs(); setInterval(refreshJobs, 1500); }
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
