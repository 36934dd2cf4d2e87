// same_search console, duplicates view (extension): scan a library for near-duplicate groups, show
// each group side by side, and either remove every extra in one action or review a group item by
// item: tick what to remove (the extras start ticked, the kept copy not) and remove just those.
// Uses api() and el() of console.js.
"use strict";

(function () {
  const appid = document.body.dataset.appid;
  const base = `/api/libraries/${encodeURIComponent(appid)}/duplicates`;
  const form = document.getElementById("dup-scan");
  const progress = document.getElementById("dup-progress");
  const message = document.getElementById("dup-message");
  const groups = document.getElementById("dup-groups");
  const remove = document.getElementById("dup-remove");
  let current = null;

  function card(member, kept, keep) {
    const href = `/libraries/${encodeURIComponent(appid)}/items/${member.key}`;
    const tick = el("input", { type: "checkbox", class: "remove-tick", "data-key": member.key });
    tick.checked = !kept;
    const shown = el("a", { class: kept ? "card kept" : "card", href, "data-key": member.key },
      el("img", { src: withPlaceholder(member.thumbnail), alt: "" }),
      el("span", { class: "score" }, kept ? "keep" : member.score.toFixed(4)),
      el("span", { class: "brief" }, member.brief_text === null ? "(binary brief)" : member.brief_text));
    const r = member.region;  // where this extra matched the kept item
    if (r) {
      shown.append(matchPanel([keep.thumbnail, r.kept, r.kept_size, "kept"],
        [member.thumbnail, r.extra, r.extra_size, "this copy"]));
    }
    return el("div", { class: "member" }, shown, el("label", {}, tick, " remove"));
  }

  // Removes the ticked members of one group (one DELETE per item); what is left stays on screen.
  async function removeTicked(box, status) {
    const ticked = [...box.querySelectorAll(".remove-tick:checked")];
    if (!ticked.length) { status.textContent = "Nothing ticked."; return; }
    if (ticked.length === box.querySelectorAll(".remove-tick").length
      && !confirm("Every copy in this group is ticked: remove them all?")) return;
    let removed = 0;
    for (const tick of ticked) {
      const answer = await api("DELETE", `/api/libraries/${encodeURIComponent(appid)}/items/${tick.dataset.key}`);
      if (answer.err_no !== 0) { status.textContent = `err_no ${answer.err_no}: ${answer.err_msg}`; return; }
      removed += answer.removed;
      tick.closest(".member").remove();
    }
    status.textContent = `Removed ${removed}; ${box.querySelectorAll(".member").length} kept.`;
    box.dataset.reviewed = "1";
  }

  function group(members) {
    const status = el("span", { class: "message" });
    const button = el("button", { class: "remove-ticked" }, "Remove the ticked");
    const box = el("div", { class: "dup-group" }, el("div", { class: "grid" }, ...members), el("p", {}, button, status));
    button.addEventListener("click", () => removeTicked(box, status));
    return box;
  }

  function render(scan) {
    current = scan;
    if (scan.status === "running") {
      progress.textContent = `Scanning… ${scan.done}/${scan.total} items (${Math.round(100 * scan.progress)}%)`;
    } else if (scan.status === "done") {
      progress.textContent = `${scan.groups_total} groups, ${scan.extras_total} extras among ${scan.total} items ` +
        `(${scan.method} scan, min score ${scan.min_score})`;
    } else {
      progress.textContent = `Scan ${scan.status}: ${scan.message}`;
    }
    groups.replaceChildren(...scan.groups.map((found) =>
      group([card(found.keep, true), ...found.extras.map((extra) => card(extra, false, found.keep))])));
    remove.hidden = !(scan.status === "done" && scan.extras_total > 0);
    remove.textContent = `Remove the ${scan.extras_total} extras`;
  }

  async function follow(scan) {
    render(scan);
    while (scan.status === "running") {
      await new Promise((resolve) => setTimeout(resolve, 500));
      const answer = await api("GET", `${base}/${scan.id}?limit=500`);
      if (answer.err_no !== 0) { progress.textContent = `err_no ${answer.err_no}: ${answer.err_msg}`; return; }
      scan = answer.scan;
      render(scan);
    }
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    message.textContent = "";
    progress.textContent = "Scanning…";
    const answer = await api("POST", `${base}?limit=500`,
      JSON.stringify({ min_score: Number(form.min_score.value) }), "application/json");
    if (answer.err_no !== 0) { progress.textContent = `err_no ${answer.err_no}: ${answer.err_msg}`; return; }
    follow(answer.scan);
  });

  remove.addEventListener("click", async () => {
    if (!current) return;
    if (!confirm(`Remove ${current.extras_total} extras? The oldest copy in each group is kept.`)) return;
    const answer = await api("POST", `${base}/${current.id}/remove?limit=500`);
    if (answer.err_no !== 0) { message.textContent = `err_no ${answer.err_no}: ${answer.err_msg}`; return; }
    message.textContent = `Removed ${answer.removed} extras.`;
    render(answer.scan);
  });
})();
