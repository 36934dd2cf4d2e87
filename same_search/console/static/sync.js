// The library page's folder sync: set or change the schedule, "Sync now", stop following; while
// the last run's job is queued or running the panel refreshes every 1.5 s. Uses api() of console.js.
"use strict";

(function () {
  const panel = document.getElementById("sync-panel");
  if (!panel) return;
  const path = panel.dataset.path;
  const status = document.getElementById("sync-status");
  const line = document.getElementById("sync-schedule");
  let timer = null;

  const pad = (n) => String(n).padStart(2, "0");
  function when(ts) {
    if (ts === null || ts === undefined) return "never";
    const d = new Date(ts * 1000);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  // The same words as same_search.client_values.sync_result.
  function result(schedule) {
    const job = schedule.last_job;
    const text = job === null ? "none yet"
      : `job ${job.id} ${job.status}: ${job.done} added, ${job.updated} updated, ` +
        `${job.removed} removed, ${job.duplicates} unchanged, ${job.failed} failed`;
    return schedule.last_message ? `${text} (${schedule.last_message})` : text;
  }

  function show(schedule) {
    if (!schedule) return;
    const set = (id, text) => { const node = document.getElementById(id); if (node) node.textContent = text; };
    set("sync-last-run", when(schedule.last_run));
    set("sync-next-run", when(schedule.next_run));
    set("sync-result", result(schedule));
    line.dataset.state = schedule.running ? "running" : "idle";
    if (schedule.running && timer === null) timer = setInterval(refresh, 1500);
    if (!schedule.running && timer !== null) { clearInterval(timer); timer = null; }
  }

  async function refresh() {
    const answer = await api("GET", path);
    if (answer.err_no === 0) show(answer.schedule);
  }

  const now = document.getElementById("sync-now");
  if (now) {
    now.addEventListener("click", async () => {
      const answer = await api("POST", `${path}/run`);
      if (answer.err_no !== 0) { status.textContent = `err_no ${answer.err_no}: ${answer.err_msg}`; return; }
      status.textContent = answer.started ? `job ${answer.job.id} started`
        : `job ${answer.job.id} already ${answer.job.status}`;
      await refresh();
    });
  }
  const stop = document.getElementById("sync-stop");
  if (stop) {
    stop.addEventListener("click", async () => {
      if (!confirm("Stop following this folder? (The items stay.)")) return;
      const answer = await api("DELETE", path);
      if (answer.err_no === 0) location.reload();
      else status.textContent = `err_no ${answer.err_no}: ${answer.err_msg}`;
    });
  }
  const form = document.getElementById("sync-form");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const every = form.every.value.trim();
    const body = {
      folder: form.folder.value.trim(),
      every: /^\d+$/.test(every) ? Number(every) : every,
      remove_missing: form.remove_missing.checked,
    };
    const answer = await api("PUT", path, JSON.stringify(body), "application/json");
    if (answer.err_no === 0) location.reload();
    else form.querySelector(".message").textContent = `err_no ${answer.err_no}: ${answer.err_msg}`;
  });
  if (line.dataset.state === "running") refresh();
})();
