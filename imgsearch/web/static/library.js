// The duplicates view and the watched folders view.
"use strict";

(() => {
  const IS = window.imgsearch;
  const { $, api, el, showError } = IS;
  const WATCH_POLL_MS = 1000;
  let watchTimer = null;

  // -- duplicates ------------------------------------------------------------------------

  async function findDuplicates(e) {
    e.preventDefault();
    const folder = $("dups-folder").value.trim();
    const params = new URLSearchParams();
    if (folder) params.set("folder", folder);
    $("dups-summary").textContent = "Looking for duplicates…";
    showError();
    try {
      const report = await api(`/duplicates?${params}`);
      const n = report.clusters.length;
      $("dups-summary").textContent = `${n} cluster${n === 1 ? "" : "s"} among `
        + `${report.images} images${report.folder ? ` in ${report.folder}` : ""} `
        + `(${report.seconds} s).`;
      $("dups").replaceChildren(...report.clusters.map(clusterRow));
    } catch (err) {
      $("dups-summary").textContent = "The search for duplicates failed.";
      showError("Finding duplicates", err);
    }
  }

  function clusterRow(cluster) {
    const members = cluster.images.map((m) => {
      const verdict = m.verdict || (cluster.kind === "identical" ? "identical" : "");
      const badge = verdict ? el("span", { className: `badge ${verdict}` }, verdict) : null;
      const path = el("p", { className: "path", title: m.image }, el("bdi", {}, m.image));
      return el("li", { className: "member" }, IS.thumbnail(m.image), badge, path);
    });
    const kind = el("span", { className: "cluster-kind" }, `${cluster.kind} ·`
      + ` ${cluster.images.length} images`);
    return el("li", { className: "cluster" }, kind, el("ul", { className: "members" },
      ...members));
  }

  // -- watched folders -------------------------------------------------------------------

  async function loadWatches() {
    clearTimeout(watchTimer);
    try {
      const body = await api("/watch");
      $("watches").tBodies[0].replaceChildren(...body.watches.map(watchRow));
      if (body.watches.length) watchTimer = setTimeout(loadWatches, WATCH_POLL_MS);
    } catch (err) {
      showError("Listing the watched folders", err);
    }
  }

  function watchRow(w) {
    const stop = el("button", { type: "button", className: "stop" }, "Stop");
    stop.addEventListener("click", () => unwatch(w.dir));
    const cells = [w.added, w.updated, w.moved, w.removed, w.missing, w.errors.length];
    const progress = w.total ? `${w.done}/${w.total}` : String(w.done);
    return el(
      "tr",
      {},
      el("td", { className: "path", title: w.dir }, el("bdi", {}, w.dir)),
      el("td", {}, el("span", { className: `state ${w.state}` }, w.state)),
      el("td", {}, progress),
      ...cells.map((n) => el("td", {}, String(n))),
      el("td", {}, stop),
    );
  }

  async function watch(e) {
    e.preventDefault();
    const dir = $("watch-dir").value.trim();
    showError();
    try {
      await api(`/watch?${new URLSearchParams({ dir })}`);
      $("watch-dir").value = "";
    } catch (err) {
      showError("Watching", err);
    }
    loadWatches();
  }

  async function unwatch(dir) {
    showError();
    try {
      await api(`/watch?${new URLSearchParams({ dir })}`, { method: "DELETE" });
    } catch (err) {
      showError("Stopping the watch", err);
    }
    loadWatches();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("dups-form").addEventListener("submit", findDuplicates);
    $("watch-form").addEventListener("submit", watch);
    loadWatches();
  });
})();
