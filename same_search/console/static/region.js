// same_search console, region search (extension): drag a box on the query picture to search only
// that part. The box is sent as fractions of the picture as shown, which the browser draws upright
// (EXIF orientation applied), as the daemon does. Uses api() and showResults() of console.js.
"use strict";

(function () {
  const appid = document.body.dataset.appid;
  const panel = document.getElementById("region-panel");
  const stage = document.getElementById("region-stage");
  const image = document.getElementById("region-image");
  const box = document.getElementById("region-box");
  const status = document.getElementById("region-status");
  const input = document.getElementById("file");
  const zone = document.getElementById("dropzone");
  if (!panel || !input) return;
  let file = null;
  let start = null;

  function show(picked) {
    if (!picked) return;
    file = picked;
    image.src = URL.createObjectURL(picked);
    box.hidden = true;
    status.textContent = "";
    panel.hidden = false;
  }

  input.addEventListener("change", () => show(input.files[0]));
  if (zone) zone.addEventListener("drop", (e) => show(e.dataTransfer.files[0]));

  function point(e) {
    const rect = image.getBoundingClientRect();
    return {
      x: Math.min(Math.max(e.clientX - rect.left, 0), rect.width),
      y: Math.min(Math.max(e.clientY - rect.top, 0), rect.height),
      width: rect.width, height: rect.height,
    };
  }

  function draw(a, b) {
    const left = Math.min(a.x, b.x), top = Math.min(a.y, b.y);
    Object.assign(box.style, { left: `${left}px`, top: `${top}px`,
      width: `${Math.abs(b.x - a.x)}px`, height: `${Math.abs(b.y - a.y)}px` });
    box.hidden = false;
  }

  stage.addEventListener("mousedown", (e) => { e.preventDefault(); start = point(e); draw(start, start); });
  stage.addEventListener("mousemove", (e) => { if (start) draw(start, point(e)); });
  window.addEventListener("mouseup", async (e) => {
    if (!start || !file) return;
    const end = point(e);
    const a = start;
    start = null;
    const w = Math.abs(end.x - a.x) / a.width, h = Math.abs(end.y - a.y) / a.height;
    if (w < 0.02 || h < 0.02) { box.hidden = true; return; }
    const x = Math.min(a.x, end.x) / a.width, y = Math.min(a.y, end.y) / a.height;
    // Rounded down, so x + w never exceeds 1 (the daemon refuses a box outside the picture).
    const region = [x, y, w, h].map((v) => (Math.floor(v * 10000) / 10000).toFixed(4)).join(",");
    const percent = (v) => `${Math.round(v * 100)}%`;
    const where = `${percent(w)} × ${percent(h)} of the picture, from ${percent(x)} across and ${percent(y)} down`;
    status.textContent = `Searching the box ${where}…`;
    await runSearch(appid, `/api/libraries/${encodeURIComponent(appid)}/search?unit=fraction&region=${region}`,
      file, file.type || "application/octet-stream", file);
    status.textContent = `Results for the box ${where}`;
    status.dataset.region = region;
  });
})();
