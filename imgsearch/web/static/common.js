// Shared helpers of the imgsearch page (loaded first): the API client and DOM helpers.
"use strict";

window.imgsearch = (() => {
  const $ = (id) => document.getElementById(id);
  const token = new URLSearchParams(location.search).get("token");

  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    if (token) headers.set("Authorization", `Bearer ${token}`);
    let resp;
    try {
      resp = await fetch(path, { ...options, headers });
    } catch (err) {
      throw new Error(`cannot reach the daemon (${err.message})`);
    }
    let body = null;
    try {
      body = await resp.json();
    } catch {
      body = null;
    }
    if (!resp.ok) {
      const detail = body && body.error ? body.error : `${resp.status} ${resp.statusText}`;
      const err = new Error(detail);
      err.status = resp.status;
      throw err;
    }
    return body;
  }

  function withToken(url) {
    return token ? `${url}&token=${encodeURIComponent(token)}` : url;
  }

  const thumbUrl = (image) => withToken(`/thumbnail?image=${encodeURIComponent(image)}`);

  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    Object.assign(node, props);
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  // Show an API error (or clear the message area with no argument).
  function showError(what, err) {
    const box = $("message");
    if (!what) {
      box.hidden = true;
      box.textContent = "";
      return;
    }
    const status = err && err.status ? ` (HTTP ${err.status})` : "";
    box.replaceChildren(el("strong", {}, `${what} failed${status}: `), err ? err.message : "");
    box.hidden = false;
  }

  function thumbnail(image) {
    const img = el("img", { src: thumbUrl(image), alt: basename(image), loading: "lazy",
      decoding: "async" });
    img.addEventListener("error", () => img.classList.add("broken"), { once: true });
    return img;
  }

  // Load an image element from a URL (a blob: URL or a same-origin thumbnail).
  function loadImage(src) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error("the image could not be loaded"));
      img.src = src;
    });
  }

  const basename = (p) => p.split("/").filter(Boolean).pop() || p;
  const fmt = (x, digits = 3) => (typeof x === "number" ? x.toFixed(digits) : "–");
  // A path names a file on the daemon's machine; an http(s) address is downloaded by it.
  const sourceParam = (value) => (/^https?:\/\//i.test(value) ? "url" : "image");

  return { $, token, api, withToken, thumbUrl, thumbnail, loadImage, el, showError, basename,
    fmt, sourceParam };
})();
