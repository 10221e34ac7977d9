// The imgsearch page: plain JavaScript over the daemon's JSON API, same origin only.
"use strict";

(() => {
  const IS = window.imgsearch;
  const { $, api, el, showError, fmt, sourceParam } = IS;
  const ENDED = new Set(["done", "failed", "cancelled", "interrupted"]);
  const POLL_MS = 500;
  let lastQuery = null; // {kind: "file", blob, name} | {kind: "text", value} | {kind: "path", value}
  let searchSeq = 0;
  let pollTimer = null;
  let pollGen = 0; // counts the jobs watched: a poll for an earlier one drops its answer

  // -- search ----------------------------------------------------------------------------

  function searchParams(kind) {
    const params = new URLSearchParams();
    params.set("limit", $("limit").value);
    const names = [...document.querySelectorAll("#comparators input:checked")].map((c) => c.value);
    // Comparators look at pixels: a text query has none.
    if (names.length && kind !== "text") params.set("compare", names.join(","));
    if (!$("rerank").checked) params.set("rerank", "0");
    // Filters: one folder, and KEY:VALUE conditions separated by commas. Only a comma before
    // the next KEY: separates, so a value may hold commas ("author:Smith, John, year:1999").
    const folder = $("filter-folder").value.trim();
    if (folder) params.append("folder", folder);
    for (const cond of $("filter-where").value.split(/,(?=[^,:]*:)/)) {
      if (cond.trim()) params.append("where", cond.trim());
    }
    return params;
  }

  async function runSearch(query) {
    lastQuery = query;
    const seq = ++searchSeq;
    const params = searchParams(query.kind);
    let request;
    if (query.kind === "file") {
      const form = new FormData();
      form.append("image", query.blob, query.name || "upload");
      request = api(`/search?${params}`, { method: "POST", body: form });
    } else {
      params.set(query.kind === "text" ? "text" : sourceParam(query.value), query.value);
      request = api(`/search?${params}`);
    }
    showError();
    $("summary").textContent = "Searching…";
    document.body.classList.add("busy");
    const started = performance.now();
    try {
      const body = await request;
      if (seq !== searchSeq) return; // a newer search has started
      const seconds = ((performance.now() - started) / 1000).toFixed(2);
      const n = body.results.length;
      $("summary").textContent = `${n} result${n === 1 ? "" : "s"} in ${seconds} s`;
      renderResults(body.results);
    } catch (err) {
      if (seq !== searchSeq) return;
      $("summary").textContent = "The search failed.";
      renderResults([]);
      showError("Search", err);
    } finally {
      if (seq === searchSeq) document.body.classList.remove("busy");
    }
  }

  function renderResults(results) {
    const list = $("results");
    list.replaceChildren(...results.map(resultCard));
  }

  function resultCard(hit, i) {
    const thumb = IS.thumbnail(hit.image);
    const facts = el("dl", { className: "facts" });
    const fact = (name, value) => facts.append(el("dt", {}, name), el("dd", {}, value));
    fact("distance", fmt(hit.distance));
    if (hit.score !== undefined) {
      fact("score", fmt(hit.score));
      fact("rank before", String(hit.rank_before));
      for (const [name, s] of Object.entries(hit.compare || {})) fact(name, fmt(s.score));
    }
    const title = el("p", { className: "path", title: hit.image }, el("bdi", {}, hit.image));
    const rank = el("span", { className: "rank" }, `#${i + 1}`);
    const head = el("div", { className: "card-head" }, rank);
    if (hit.verdict) {
      head.append(el("span", { className: `badge ${hit.verdict}` }, hit.verdict));
    }
    const error = hit.error ? el("p", { className: "hit-error" }, hit.error) : null;
    // A downloaded image links to the URL it came from (http(s) only: never javascript:).
    const source = /^https?:\/\//i.test(hit.source || "")
      ? el("a", { className: "source", href: hit.source, rel: "noopener noreferrer",
          target: "_blank", title: hit.source }, "source")
      : null;
    const meta = hit.metadata && Object.keys(hit.metadata).length
      ? el("p", { className: "metadata" }, Object.entries(hit.metadata)
        .map(([k, v]) => `${k}: ${v}`).join(" · "))
      : null;
    const again = el("button", { type: "button", className: "search-this" }, "Search with this");
    again.addEventListener("click", () => searchWith(hit.image));
    const side = el("button", { type: "button", className: "side-by-side" }, "Side by side");
    side.addEventListener("click", () => IS.compare.open(hit.image));
    const actions = el("div", { className: "actions" }, again, side);
    return el("li", { className: "card" }, thumb, head, title, source, meta, facts, error,
      actions);
  }

  // A result becomes the query: searched by its path, shown (and croppable) as its thumbnail.
  function searchWith(image) {
    const query = { kind: "path", value: image };
    IS.query.show(IS.thumbUrl(image), query);
    runSearch(query);
    $("query-title").scrollIntoView({ block: "start" });
  }

  function searchFile(blob, name) {
    const query = { kind: "file", blob, name };
    IS.query.show(URL.createObjectURL(blob), query);
    runSearch(query);
  }

  function firstImage(items) {
    for (const item of items || []) {
      if (item.kind === "file" && item.type.startsWith("image/")) return item.getAsFile();
    }
    return null;
  }

  function setUpQueries() {
    const drop = $("drop");
    $("file").addEventListener("change", (e) => {
      const file = e.target.files[0];
      if (file) searchFile(file, file.name);
    });
    for (const type of ["dragenter", "dragover"]) {
      drop.addEventListener(type, (e) => {
        e.preventDefault();
        drop.classList.add("over");
      });
    }
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      const file = [...e.dataTransfer.files].find((f) => f.type.startsWith("image/"));
      if (file) searchFile(file, file.name);
      else showError("Drop", new Error("drop an image file (JPEG, PNG, WebP, …)"));
    });
    document.addEventListener("paste", (e) => {
      const file = firstImage(e.clipboardData && e.clipboardData.items);
      if (file) {
        e.preventDefault();
        searchFile(file, "pasted image");
      }
    });
    $("text-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const value = $("text").value.trim();
      if (!value) return;
      IS.query.hide();
      runSearch({ kind: "text", value });
    });
    $("path-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const value = $("path").value.trim();
      if (!value) return;
      IS.query.hide();
      runSearch({ kind: "path", value });
    });
    for (const id of ["limit", "rerank", "filter-folder", "filter-where"]) {
      $(id).addEventListener("change", rerun);
    }
  }

  function rerun() {
    if (lastQuery) runSearch(lastQuery);
  }

  async function loadComparators() {
    const box = $("comparators");
    try {
      const body = await api("/comparators");
      const boxes = body.comparators.map((c) => {
        const input = el("input", { type: "checkbox", value: c.name, name: "compare" });
        input.addEventListener("change", rerun);
        return el("label", { className: "check", title: c.description }, input, ` ${c.name}`);
      });
      box.replaceChildren(el("legend", {}, "Comparators"), ...boxes);
    } catch (err) {
      showError("Loading the comparators", err);
    }
  }

  async function loadStats() {
    try {
      const s = await api("/stats");
      $("stats").textContent = `${s.images} images · ${s.model}`;
      $("notice").textContent = s.notice || "";
      $("notice").hidden = !s.notice;
    } catch (err) {
      $("stats").textContent = "Not connected.";
      showError("Connecting", err);
    }
  }

  // -- indexing --------------------------------------------------------------------------

  function duration(seconds) {
    if (typeof seconds !== "number") return "–";
    if (seconds < 60) return `${Math.round(seconds)} s`;
    const m = Math.floor(seconds / 60);
    if (m < 60) return `${m} min ${Math.round(seconds % 60)} s`;
    return `${Math.floor(m / 60)} h ${m % 60} min`;
  }

  function showJob(job) {
    $("job").hidden = false;
    const ended = ENDED.has(job.state);
    let fraction = job.total > 0 ? job.done / job.total : 0;
    if (job.state === "done") fraction = 1;
    $("progress").value = fraction;
    $("percent").textContent = `${Math.floor(fraction * 100)}%`;
    const parts = [
      // The total is null until the folder has been walked (a job still queued, say).
      `${job.state}: ${job.done}/${typeof job.total === "number" ? job.total : "?"}`,
      `added ${job.added}`,
      `updated ${job.updated}`,
      `skipped ${job.skipped}`,
      `failed ${job.failed}`,
    ];
    if (!ended && job.images_per_s) parts.push(`${job.images_per_s.toFixed(1)} images/s`);
    if (!ended && typeof job.eta_s === "number") parts.push(`ETA ${duration(job.eta_s)}`);
    if (job.error) parts.push(job.error);
    $("job-status").textContent = parts.join(" · ");
    $("job-errors").replaceChildren(
      ...(job.errors || [])
        .slice(0, 50)
        .map((e) => el("li", { title: e.image }, `${e.image}: ${e.error}`)),
    );
    $("cancel").hidden = ended;
    $("cancel").dataset.job = job.id;
  }

  // Watch job `id` until it ends; `gen`: the pollGen it was started under (a newer watch,
  // with its own loop, ends this one: clearTimeout cannot stop a request in flight).
  async function pollJob(id, gen) {
    clearTimeout(pollTimer);
    try {
      const job = await api(`/jobs/${encodeURIComponent(id)}`);
      if (gen !== pollGen) return; // another job is watched now: this loop ends here
      showJob(job);
      if (ENDED.has(job.state)) {
        loadJobs();
        loadStats();
        return;
      }
    } catch (err) {
      if (gen === pollGen) showError("Watching the job", err);
      return;
    }
    pollTimer = setTimeout(() => pollJob(id, gen), POLL_MS);
  }

  async function startIndex(e) {
    e.preventDefault();
    const target = $("folder").value.trim();
    const params = new URLSearchParams({ [sourceParam(target)]: target, wait: "0" });
    if ($("update").checked) params.set("update", "1");
    showError();
    try {
      const body = await api(`/add?${params}`);
      const zero = { done: 0, total: null, added: 0, updated: 0, skipped: 0, failed: 0 };
      showJob({ ...zero, id: body.job, state: body.state });
      loadJobs();
      pollJob(body.job, ++pollGen);
    } catch (err) {
      showError("Indexing", err);
    }
  }

  async function cancelJob() {
    const id = $("cancel").dataset.job;
    if (!id) return;
    try {
      const job = await api(`/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST" });
      // (a cancel can take a while: a job started meanwhile keeps the status line)
      if ($("cancel").dataset.job === id) showJob(job);
      loadJobs();
    } catch (err) {
      showError("Cancelling", err);
    }
  }

  async function loadJobs(resume = false) {
    try {
      const body = await api("/jobs");
      const rows = body.jobs.slice(0, 10).map((j) => {
        const started = j.started ? new Date(j.started * 1000).toLocaleString() : "–";
        return el(
          "tr",
          {},
          el("td", { className: "path", title: j.image }, el("bdi", {}, j.image)),
          el("td", {}, el("span", { className: `state ${j.state}` }, j.state)),
          el("td", {}, String(j.added)),
          el("td", {}, String(j.skipped)),
          el("td", {}, String(j.failed)),
          el("td", {}, started),
        );
      });
      $("jobs").tBodies[0].replaceChildren(...rows);
      const active = body.jobs.find((j) => !ENDED.has(j.state));
      // A job started before the page was opened (unless one is watched already).
      if (resume && active && pollGen === 0) pollJob(active.id, ++pollGen);
    } catch (err) {
      showError("Listing the jobs", err);
    }
  }

  IS.search = {
    run: runSearch,
    params: searchParams,
    current: () => lastQuery,
    file: searchFile,
  };

  document.addEventListener("DOMContentLoaded", () => {
    setUpQueries();
    $("index-form").addEventListener("submit", startIndex);
    $("cancel").addEventListener("click", cancelJob);
    loadStats();
    loadComparators();
    loadJobs(true);
  });
})();
