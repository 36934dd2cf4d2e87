// same_search console, re-embedding (extension): move a library to another model profile
// from its kept originals, with progress and cancel. Uses api() and el() of console.js.
"use strict";

(function () {
  const appid = document.body.dataset.appid;
  const base = `/api/libraries/${encodeURIComponent(appid)}/reembed`;
  const form = document.getElementById("reembed-form");
  const progress = document.getElementById("reembed-progress");
  const cancel = document.getElementById("reembed-cancel");
  let current = null;
  if (!progress) { return; }

  function render(job) {
    current = job;
    const pct = job.total ? Math.round((100 * job.done) / job.total) : 100;
    if (job.status === "running") {
      const resumed = job.resumed ? `, resumed after a restart at ${job.resumed_at}` : "";
      progress.textContent = `Re-embedding with ${job.model}: ${job.done}/${job.total} items (${pct}%${resumed}). ` +
        "The library keeps serving with its current model until the switch.";
    } else if (job.status === "done") {
      progress.textContent = `Done: the library now serves model ${job.model} (${job.total} items).`;
    } else {
      progress.textContent = `Re-embed ${job.status}: ${job.message}`;
    }
    cancel.hidden = job.status !== "running";
  }

  async function follow(job) {
    render(job);
    while (job.status === "running") {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      const answer = await api("GET", `${base}/${job.id}`);
      if (answer.err_no !== 0) { progress.textContent = `err_no ${answer.err_no}: ${answer.err_msg}`; return; }
      job = answer.job;
      render(job);
    }
    if (job.status === "done") { setTimeout(() => location.reload(), 1500); }
  }

  form?.addEventListener("submit", async (e) => {
    e.preventDefault();
    progress.textContent = "Starting…";
    const answer = await api("POST", base, JSON.stringify({ model: form.model.value }), "application/json");
    if (answer.err_no !== 0) { progress.textContent = `err_no ${answer.err_no}: ${answer.err_msg}`; return; }
    follow(answer.job);
  });

  cancel.addEventListener("click", async () => {
    if (!current) { return; }
    const answer = await api("POST", `${base}/${current.id}/cancel`);
    if (answer.err_no !== 0) { progress.textContent = `err_no ${answer.err_no}: ${answer.err_msg}`; return; }
    render(answer.job);
  });

  // A job already running (started elsewhere, or before a reload) is followed at once; else the
  // last one's outcome stays on the page (the reload after a switch must not wipe it).
  (async () => {
    const answer = await api("GET", base);
    if (answer.err_no !== 0 || !answer.jobs.length) { return; }
    if (answer.jobs[0].status === "running") { follow(answer.jobs[0]); } else { render(answer.jobs[0]); }
  })();
})();
