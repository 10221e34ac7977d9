// The query image: its preview, a crop box dragged on it, and pictures from the webcam.
"use strict";

(() => {
  const IS = window.imgsearch;
  const { $, showError } = IS;
  const MIN_CROP_PX = 8; // on screen: a smaller box is a click, not a crop
  let original = null; // the query the preview shows, uncropped
  let objectUrl = null;
  let drag = null;
  let stream = null;

  // -- the preview and its crop ----------------------------------------------------------

  function show(src, query) {
    if (objectUrl) URL.revokeObjectURL(objectUrl);
    objectUrl = src.startsWith("blob:") ? src : null;
    original = query;
    $("preview").src = src;
    $("query-view").hidden = false;
    setBox(null);
  }

  function hide() {
    if (objectUrl) URL.revokeObjectURL(objectUrl);
    objectUrl = null;
    original = null;
    $("preview").removeAttribute("src");
    $("query-view").hidden = true;
    setBox(null);
  }

  // Show a box given in the image's natural pixels (or none).
  function setBox(box) {
    const node = $("crop-box");
    $("crop-clear").hidden = !box;
    $("crop-text").textContent = box
      ? `Searching with a ${box.w}×${box.h} part of the image.`
      : "Drag a box on the image to search with that part of it.";
    node.hidden = !box;
    if (!box) return;
    const img = $("preview");
    const k = img.clientWidth / img.naturalWidth;
    Object.assign(node.style, {
      left: `${box.x * k}px`, top: `${box.y * k}px`, width: `${box.w * k}px`,
      height: `${box.h * k}px`,
    });
  }

  // The pointer's position in the image's natural pixels, kept inside the image.
  function natural(e) {
    const img = $("preview");
    const rect = img.getBoundingClientRect();
    const k = img.naturalWidth / rect.width;
    const clamp = (v, max) => Math.min(Math.max(v, 0), max);
    return {
      x: clamp((e.clientX - rect.left) * k, img.naturalWidth),
      y: clamp((e.clientY - rect.top) * k, img.naturalHeight),
      k,
    };
  }

  function boxOf(a, b) {
    const x = Math.round(Math.min(a.x, b.x));
    const y = Math.round(Math.min(a.y, b.y));
    return { x, y, w: Math.round(Math.abs(a.x - b.x)), h: Math.round(Math.abs(a.y - b.y)) };
  }

  function cropBlob(box) {
    const canvas = document.createElement("canvas");
    canvas.width = box.w;
    canvas.height = box.h;
    canvas.getContext("2d").drawImage($("preview"), box.x, box.y, box.w, box.h, 0, 0,
      box.w, box.h);
    return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.92));
  }

  async function searchCrop(box) {
    if (!original) return;
    try {
      const blob = await cropBlob(box);
      IS.search.run({ kind: "file", blob, name: "crop.jpg", crop: box });
    } catch (err) {
      showError("Cropping", err);
    }
  }

  function setUpCrop() {
    const area = $("crop-area");
    area.addEventListener("pointerdown", (e) => {
      if (!original || e.button !== 0) return;
      e.preventDefault();
      area.setPointerCapture(e.pointerId);
      drag = { start: natural(e) };
    });
    area.addEventListener("pointermove", (e) => {
      if (drag) setBox(boxOf(drag.start, natural(e)));
    });
    area.addEventListener("pointerup", (e) => {
      if (!drag) return;
      const end = natural(e);
      const box = boxOf(drag.start, end);
      drag = null;
      if (Math.min(box.w, box.h) / end.k < MIN_CROP_PX) {
        setBox(null);
        return;
      }
      setBox(box);
      searchCrop(box);
    });
    $("crop-clear").addEventListener("click", () => {
      setBox(null);
      if (original) IS.search.run(original);
    });
  }

  // -- the webcam ------------------------------------------------------------------------

  function webcamButtons(on) {
    $("webcam-start").hidden = on;
    $("webcam-snap").hidden = !on;
    $("webcam-stop").hidden = !on;
    $("webcam").hidden = !on;
  }

  async function startWebcam() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      showError("The webcam", new Error("this browser gives no camera here (it needs "
        + "https or localhost)"));
      return;
    }
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
    } catch (err) {
      showError("The webcam", err);
      return;
    }
    $("webcam").srcObject = stream;
    webcamButtons(true);
  }

  function stopWebcam() {
    if (stream) for (const track of stream.getTracks()) track.stop();
    stream = null;
    $("webcam").srcObject = null;
    webcamButtons(false);
  }

  function snap() {
    const video = $("webcam");
    if (!video.videoWidth) return; // no frame yet
    const canvas = document.createElement("canvas");
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext("2d").drawImage(video, 0, 0);
    canvas.toBlob((blob) => {
      stopWebcam();
      if (blob) IS.search.file(blob, "webcam.jpg");
    }, "image/jpeg", 0.92);
  }

  IS.query = { show, hide };

  document.addEventListener("DOMContentLoaded", () => {
    setUpCrop();
    $("webcam-start").addEventListener("click", startWebcam);
    $("webcam-snap").addEventListener("click", snap);
    $("webcam-stop").addEventListener("click", stopWebcam);
  });
})();
