// Dali's lightbox: an image of a gallery, a generation or the generate page's results, large.
//
// A link `a[data-full]` inside an element marked `data-lightbox` opens its `data-full` image in
// a modal dialog instead of following the link (which still leads to the image page without
// this script, or with Ctrl/⌘/Shift/middle click). The image is fitted to the screen; it is
// drawn with `image-rendering: pixelated` once it is shown at twice its size or more, so a small
// image keeps sharp pixels. Keys: ← → the other images of the same element, + − zoom, 0 fit,
// 1 actual size (1:1), Esc closes and puts the focus on the link of the image last shown.
// A click on the image zooms in (twice the fitted size) and back; a click beside it closes.
"use strict";

(function () {
  const ZOOM_STEP = 1.5;
  const MAX_SCALE = 32; // times the image's own size
  const PIXELATED_FROM = 2; // drawn at this many times its size or more: sharp pixels
  const MARGIN = 12; // pixels around a fitted image

  let dialog = null;
  let parts = null;
  let links = []; // the links of the element the lightbox was opened from
  let index = 0;
  let scale = null; // null: fitted to the screen; else times the image's own size

  function button(action, text, label) {
    const element = document.createElement("button");
    element.type = "button";
    element.dataset.action = action;
    element.textContent = text;
    if (label) element.setAttribute("aria-label", label);
    return element;
  }

  // The dialog, built once on first use.
  function build() {
    dialog = document.createElement("dialog");
    dialog.className = "lightbox";
    dialog.id = "lightbox";
    dialog.setAttribute("aria-labelledby", "lightbox-caption");
    const stage = document.createElement("div");
    stage.className = "lightbox-stage";
    const image = document.createElement("img");
    image.id = "lightbox-image";
    stage.appendChild(image);
    const bar = document.createElement("div");
    bar.className = "lightbox-bar";
    const caption = document.createElement("p");
    caption.className = "lightbox-caption";
    caption.id = "lightbox-caption";
    caption.setAttribute("aria-live", "polite");
    const tools = document.createElement("div");
    tools.className = "lightbox-tools";
    tools.setAttribute("role", "group");
    tools.setAttribute("aria-label", "Image viewer controls");
    const zoom = document.createElement("output");
    zoom.className = "lightbox-zoom";
    zoom.id = "lightbox-zoom";
    const page = document.createElement("a");
    page.className = "button";
    page.id = "lightbox-page";
    page.textContent = "Image page";
    const buttons = {
      prev: button("prev", "←", "Previous image (←)"),
      next: button("next", "→", "Next image (→)"),
      out: button("out", "−", "Zoom out (−)"),
      in: button("in", "+", "Zoom in (+)"),
      fit: button("fit", "Fit", "Fit to the screen (0)"),
      actual: button("actual", "1:1", "Actual size (1)"),
      close: button("close", "✕", "Close (Esc)"),
    };
    tools.append(buttons.prev, buttons.next, buttons.out, zoom, buttons.in, buttons.fit,
                 buttons.actual, page, buttons.close);
    bar.append(caption, tools);
    dialog.append(stage, bar);
    document.body.appendChild(dialog);
    parts = { stage, image, caption, zoom, page, buttons };

    tools.addEventListener("click", (event) => {
      const target = event.target.closest("button[data-action]");
      if (target) act(target.dataset.action);
    });
    image.addEventListener("click", (event) => {
      event.stopPropagation();
      const fit = fitScale();
      zoomTo(scale === null ? fit * 2 : null, event);
    });
    stage.addEventListener("click", (event) => { if (event.target === stage) close(); });
    image.addEventListener("load", () => layout());
    dialog.addEventListener("keydown", onKey);
    dialog.addEventListener("close", onClose);
    window.addEventListener("resize", () => { if (dialog.open) layout(); });
  }

  function act(action) {
    if (action === "prev") show(index - 1);
    else if (action === "next") show(index + 1);
    else if (action === "in") zoomTo(Math.min(currentScale() * ZOOM_STEP, MAX_SCALE));
    else if (action === "out") zoomTo(Math.max(currentScale() / ZOOM_STEP, minScale()));
    else if (action === "fit") zoomTo(null);
    else if (action === "actual") zoomTo(1);
    else if (action === "close") close();
  }

  function onKey(event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key === "Escape") { // closed here, not by the dialog's own cancel: see close()
      event.preventDefault();
      close();
      return;
    }
    const actions = {
      ArrowLeft: "prev", ArrowRight: "next", "+": "in", "=": "in", "-": "out", "_": "out",
      "0": "fit", "1": "actual",
    };
    const action = actions[event.key];
    if (!action || (links.length < 2 && (action === "prev" || action === "next"))) return;
    event.preventDefault();
    act(action);
  }

  // The size the image fits the stage at, in times its own size (more than 1 for small images).
  function fitScale() {
    const { image, stage } = parts;
    if (!image.naturalWidth) return 1;
    const width = Math.max(stage.clientWidth - 2 * MARGIN, 1);
    const height = Math.max(stage.clientHeight - 2 * MARGIN, 1);
    return Math.min(width / image.naturalWidth, height / image.naturalHeight);
  }

  function currentScale() { return scale === null ? fitScale() : scale; }

  function minScale() { return Math.min(fitScale(), 1); }

  // Zoom to `next` (null: fit), keeping the point under the pointer (or the stage's centre) in
  // place.
  function zoomTo(next, pointer) {
    const { stage, image } = parts;
    const box = image.getBoundingClientRect();
    const stageBox = stage.getBoundingClientRect();
    const x = pointer ? pointer.clientX : stageBox.left + stageBox.width / 2;
    const y = pointer ? pointer.clientY : stageBox.top + stageBox.height / 2;
    const fx = box.width ? (x - box.left) / box.width : 0.5;
    const fy = box.height ? (y - box.top) / box.height : 0.5;
    scale = next;
    layout();
    const after = image.getBoundingClientRect();
    stage.scrollLeft += after.left + fx * after.width - x;
    stage.scrollTop += after.top + fy * after.height - y;
  }

  // Size the image for the current zoom and say how large it is drawn.
  function layout() {
    const { image, zoom, buttons } = parts;
    if (!image.naturalWidth) return;
    const shown = currentScale();
    image.style.width = `${Math.round(image.naturalWidth * shown)}px`;
    image.style.height = `${Math.round(image.naturalHeight * shown)}px`;
    image.classList.toggle("pixelated", shown >= PIXELATED_FROM);
    image.classList.toggle("zoomed", scale !== null);
    zoom.textContent = `${Math.round(shown * 100)}%`;
    buttons.fit.setAttribute("aria-pressed", String(scale === null));
    buttons.actual.setAttribute("aria-pressed", String(scale === 1));
  }

  // Show the link at `at` (wrapping around the ends), fitted.
  function show(at) {
    index = (at + links.length) % links.length;
    const link = links[index];
    const thumbnail = link.querySelector("img");
    const { image, caption, page, buttons } = parts;
    scale = null;
    image.removeAttribute("style");
    image.alt = thumbnail ? thumbnail.alt : "";
    image.src = link.dataset.full;
    if (image.complete) layout();
    const where = links.length > 1 ? ` — ${index + 1} of ${links.length}` : "";
    caption.textContent = `${image.alt || "Image"}${where}`;
    // The image page, when the link leads to one (not when it is the image file itself).
    page.hidden = link.getAttribute("href") === link.dataset.full;
    page.href = link.href;
    buttons.prev.hidden = buttons.next.hidden = links.length < 2;
  }

  function open(link) {
    if (!dialog) build();
    links = [...link.closest("[data-lightbox]").querySelectorAll("a[data-full]")];
    document.body.classList.add("lightbox-open");
    dialog.showModal();
    show(links.indexOf(link));
    parts.buttons.close.focus();
  }

  // Esc, ✕ or a click beside the image: the focus goes to the link of the image last shown, so
  // the keyboard carries on from there in the grid. (The dialog would give it back to the link
  // it was opened from, and its "close" event comes only later.)
  function close() {
    dialog.close();
    onClose();
  }

  function onClose() {
    document.body.classList.remove("lightbox-open");
    parts.image.removeAttribute("src");
    const link = links[index];
    if (link && link.isConnected && document.activeElement !== link) link.focus();
  }

  document.addEventListener("click", (event) => {
    if (event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey || event.altKey) return;
    const link = event.target.closest && event.target.closest("[data-lightbox] a[data-full]");
    if (!link) return;
    event.preventDefault();
    open(link);
  });
})();
