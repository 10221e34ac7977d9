// The side-by-side view: the query and one result, with verify's evidence drawn over them.
"use strict";

(() => {
  const IS = window.imgsearch;
  const { $, api, showError } = IS;
  const GAP = 24; // pixels between the two pictures
  // The fewest candidates a search with comparators scores (MIN_RERANK_K in search.py): it
  // takes rerank_k of them, by default max(limit, 30).
  const MIN_RERANK_K = 30;
  let openSeq = 0; // the latest view asked for: an earlier one's late answer is dropped

  // Ask the daemon to verify the current query and return the hit for `image` with evidence.
  async function evidenceFor(query, image) {
    const params = IS.search.params(query.kind);
    const names = new Set((params.get("compare") || "").split(",").filter(Boolean));
    // Verify lifts the candidates it vouches for, which can push the clicked result below the
    // page's limit. Where the page's search had no verify, its results all lie among the first
    // rerank_k (default max(limit, 30)) by embedding: keep that order (rerank=0) and ask for
    // that many. Where it had verify, this is the page's own search again, in the same order.
    if (!names.has("verify")) params.set("rerank", "0");
    names.add("verify");
    params.set("compare", [...names].join(","));
    params.set("evidence", "1");
    const limit = Number(params.get("limit")) || 0;
    params.set("limit", String(Math.max(limit, Number(params.get("rerank_k")) || MIN_RERANK_K)));
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
    const seq = ++openSeq;
    section.hidden = false;
    section.scrollIntoView({ block: "start" });
    $("side-summary").textContent = "Verifying…";
    const querySrc = query.kind === "file" ? URL.createObjectURL(query.blob) : null;
    try {
      const [hit, left, right] = await Promise.all([
        evidenceFor(query, image), queryPicture(query, querySrc), IS.loadImage(IS.thumbUrl(image)),
      ]);
      if (seq !== openSeq) return; // a later click (or Close) has taken over the view
      if (!hit) throw new Error("this image is no longer among the results");
      draw(left, right, hit.evidence);
      $("side-summary").textContent = left ? summary(hit)
        : `${summary(hit)} The query itself cannot be shown: the page has pictures of indexed `
          + "images only.";
      section.dataset.verdict = hit.verdict || "";
    } catch (err) {
      if (seq !== openSeq) return;
      $("side-summary").textContent = "";
      showError("Side by side", err);
    } finally {
      if (querySrc) URL.revokeObjectURL(querySrc);
    }
  }

  // The query's picture, or null where the page cannot have one: a query by path is shown by
  // its thumbnail, which only an indexed image has, and one by URL has none at all.
  function queryPicture(query, blobUrl) {
    if (blobUrl) return IS.loadImage(blobUrl);
    if (IS.sourceParam(query.value) === "url") return Promise.resolve(null);
    return IS.loadImage(IS.thumbUrl(query.value)).catch(() => null);
  }

  function summary(hit) {
    const ev = hit.evidence || {};
    const verdict = hit.verdict || "not verified";
    const where = ev.quad ? "the outline shows where the query lies in it"
      : "no region of it matches the query";
    return `${IS.basename(hit.image)}: ${verdict}, ${ev.inliers || 0} matching points; ${where}.`;
  }

  // Draw the query (left; null: a placeholder) and the result (right), and the evidence.
  function draw(left, right, ev) {
    const canvas = $("side-canvas");
    const ctx = canvas.getContext("2d");
    const height = canvas.height;
    const width = (canvas.width - GAP) / 2;
    const fit = (img) => Math.min(width / img.naturalWidth, height / img.naturalHeight);
    const kr = fit(right);
    const ox = width + GAP;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(right, ox, 0, right.naturalWidth * kr, right.naturalHeight * kr);
    if (left) {
      const kl = fit(left);
      ctx.drawImage(left, 0, 0, left.naturalWidth * kl, left.naturalHeight * kl);
    } else {
      ctx.fillStyle = "rgb(128, 128, 128)";
      ctx.font = "16px sans-serif";
      ctx.textAlign = "center";
      ctx.fillText("(the query cannot be shown)", width / 2, height / 2);
    }
    if (!ev) return;
    // Evidence is in each image's own pixels; the pictures drawn may be smaller (thumbnails).
    const sr = (right.naturalWidth * kr) / ev.image_size[0];
    if (left) {
      const sl = (left.naturalWidth * fit(left)) / ev.query_size[0];
      ctx.lineWidth = 1;
      ctx.strokeStyle = "rgba(40, 200, 120, 0.8)";
      for (const [qx, qy, rx, ry] of ev.matches) {
        ctx.beginPath();
        ctx.moveTo(qx * sl, qy * sl);
        ctx.lineTo(ox + rx * sr, ry * sr);
        ctx.stroke();
      }
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
      openSeq += 1; // a view still on its way is not wanted any more
      $("side").hidden = true;
    });
  });
})();
