// The side-by-side view: the query and one result, with verify's evidence drawn over them.
"use strict";

(() => {
  const IS = window.imgsearch;
  const { $, api, showError } = IS;
  const GAP = 24; // pixels between the two pictures

  // Ask the daemon to verify the current query and return the hit for `image` with evidence.
  async function evidenceFor(query, image) {
    const params = IS.search.params(query.kind);
    const names = new Set((params.get("compare") || "").split(",").filter(Boolean));
    names.add("verify");
    params.set("compare", [...names].join(","));
    params.set("evidence", "1");
    let body;
    if (query.kind === "file") {
      const form = new FormData();
      form.append("image", query.blob, query.name || "upload");
      body = await api(`/search?${params}`, { method: "POST", body: form });
    } else {
      params.set(IS.sourceParam(query.value), query.value);
      body = await api(`/search?${params}`);
    }
    return body.results.find((r) => r.image === image) || null;
  }

  async function open(image) {
    const query = IS.search.current();
    const section = $("side");
    if (!query || query.kind === "text") {
      showError("Side by side", new Error("a side-by-side view needs an image query"));
      return;
    }
    section.hidden = false;
    section.scrollIntoView({ block: "start" });
    $("side-summary").textContent = "Verifying…";
    try {
      const querySrc = query.kind === "file" ? URL.createObjectURL(query.blob)
        : IS.thumbUrl(query.value);
      const [hit, left, right] = await Promise.all([
        evidenceFor(query, image), IS.loadImage(querySrc), IS.loadImage(IS.thumbUrl(image)),
      ]);
      if (query.kind === "file") URL.revokeObjectURL(querySrc);
      if (!hit) throw new Error("this image is no longer among the results");
      draw(left, right, hit.evidence);
      $("side-summary").textContent = summary(hit);
      section.dataset.verdict = hit.verdict || "";
    } catch (err) {
      $("side-summary").textContent = "";
      showError("Side by side", err);
    }
  }

  function summary(hit) {
    const ev = hit.evidence || {};
    const verdict = hit.verdict || "not verified";
    const where = ev.quad ? "the outline shows where the query lies in it"
      : "no region of it matches the query";
    return `${IS.basename(hit.image)}: ${verdict}, ${ev.inliers || 0} matching points; ${where}.`;
  }

  function draw(left, right, ev) {
    const canvas = $("side-canvas");
    const ctx = canvas.getContext("2d");
    const height = canvas.height;
    const width = (canvas.width - GAP) / 2;
    const fit = (img) => Math.min(width / img.naturalWidth, height / img.naturalHeight);
    const kl = fit(left);
    const kr = fit(right);
    const ox = width + GAP;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(left, 0, 0, left.naturalWidth * kl, left.naturalHeight * kl);
    ctx.drawImage(right, ox, 0, right.naturalWidth * kr, right.naturalHeight * kr);
    if (!ev) return;
    // Evidence is in each image's own pixels; the pictures drawn may be smaller (thumbnails).
    const sl = (left.naturalWidth * kl) / ev.query_size[0];
    const sr = (right.naturalWidth * kr) / ev.image_size[0];
    ctx.lineWidth = 1;
    ctx.strokeStyle = "rgba(40, 200, 120, 0.8)";
    for (const [qx, qy, rx, ry] of ev.matches) {
      ctx.beginPath();
      ctx.moveTo(qx * sl, qy * sl);
      ctx.lineTo(ox + rx * sr, ry * sr);
      ctx.stroke();
    }
    if (ev.quad) {
      ctx.lineWidth = 3;
      ctx.strokeStyle = "rgb(255, 170, 0)";
      ctx.beginPath();
      ev.quad.forEach(([x, y], i) => (i ? ctx.lineTo : ctx.moveTo).call(ctx, ox + x * sr, y * sr));
      ctx.closePath();
      ctx.stroke();
    }
  }

  IS.compare = { open };

  document.addEventListener("DOMContentLoaded", () => {
    $("side-close").addEventListener("click", () => {
      $("side").hidden = true;
    });
  });
})();
