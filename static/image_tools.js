// Dali's image tools on the generate page: the init image field also takes an image dropped on
// it or pasted (Ctrl+V) anywhere on the page — it becomes the file input's file, through a
// DataTransfer, so the form sends it as if chosen — and shows a preview of the init image the
// form will send: that file, or a gallery image sent here by its id ("send to img2img /
// inpaint", a hidden init_image_id field). The mask editor (static/dali.js) follows it.
// Without this file the field is a plain file input and a sent image still shows and posts.
"use strict";

// Deferred in the page's head, this file runs before dali.js: set up once both have run.
document.addEventListener("DOMContentLoaded", () => {
  const $ = (selector) => document.querySelector(selector);
  const form = $("#generate-form");
  const zone = $("#init-drop");
  if (!form || !zone) return;
  const input = form.elements.init_image;
  const stored = form.elements.init_image_id;
  const tools = $("#init-tools");
  const figure = $("#init-preview-figure");
  const preview = $("#init-preview");
  const caption = $("#init-preview-caption");
  const clear = $("#init-clear");
  const problem = $("#init-drop-error");
  const editor = $("#mask-editor");
  // What the server reads; the file input offers the first three.
  const TYPES = ["image/png", "image/jpeg", "image/webp", "image/bmp"];
  let fileUrl = null;

  const say = (message) => {
    problem.textContent = message;
    problem.hidden = !message;
  };

  function hidePreview() {
    if (fileUrl) URL.revokeObjectURL(fileUrl);
    fileUrl = null;
    figure.hidden = true;
    preview.removeAttribute("src");
    caption.textContent = "";
    clear.hidden = true;
  }

  // A file chosen, dropped or pasted: it is the init image now, not a gallery image sent here.
  function showFile(file) {
    hidePreview();
    stored.value = "";
    fileUrl = URL.createObjectURL(file);
    preview.src = fileUrl;
    preview.alt = `The init image, ${file.name}`;
    caption.textContent = `${file.name} · ${Math.max(1, Math.round(file.size / 1024))} kB`;
    figure.hidden = false;
    clear.hidden = false;
  }

  // Puts `file` into the file input as if it had been chosen, and tells whoever follows it.
  function take(file) {
    if (!TYPES.includes(file.type)) {
      const name = file.name ? `“${file.name}”` : "That";
      say(`${name} is not an image the studio reads (${file.type || "unknown type"}): ` +
          "the init image must be a PNG, JPEG, WebP or BMP file.");
      return;
    }
    const transfer = new DataTransfer();
    transfer.items.add(file);
    input.files = transfer.files;
    if (tools) tools.open = true;
    input.dispatchEvent(new Event("change", { bubbles: true }));
  }

  input.addEventListener("change", () => {
    const file = input.files && input.files[0];
    say("");
    if (!file) {
      if (!stored.value) hidePreview();
      return;
    }
    if (!TYPES.includes(file.type)) {
      input.value = "";
      hidePreview();
      say(`“${file.name}” is not an image the studio reads: choose a PNG, JPEG, WebP or BMP file.`);
      return;
    }
    showFile(file);
  });

  // Drag and drop onto the field.
  ["dragenter", "dragover"].forEach((type) => zone.addEventListener(type, (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  }));
  zone.addEventListener("dragleave", (event) => {
    if (!zone.contains(event.relatedTarget)) zone.classList.remove("dragging");
  });
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const files = event.dataTransfer ? event.dataTransfer.files : [];
    if (!files.length) {
      say("Nothing to use was dropped: drop an image file (PNG, JPEG, WebP or BMP).");
      return;
    }
    take(files[0]);
  });

  // Paste anywhere on the page: a pasted file is the init image; pasted text goes where
  // it always goes.
  document.addEventListener("paste", (event) => {
    const data = event.clipboardData;
    if (!data) return;
    let file = data.files && data.files[0];
    if (!file) {
      const item = [...data.items].find((entry) => entry.kind === "file");
      file = item ? item.getAsFile() : null;
    }
    if (!file) return;
    event.preventDefault();
    take(file);
  });

  clear.addEventListener("click", () => {
    input.value = "";
    stored.value = "";
    hidePreview();
    say("");
    input.dispatchEvent(new CustomEvent("dali:init-image", { detail: null }));
    input.focus();
  });

  // "Send to inpaint": once the mask editor shows the image, bring it into view — after the
  // page's load, when the browser has made its own scroll to the link's #fragment.
  if (editor && zone.dataset.inpaint === "true") {
    const reveal = () => setTimeout(() => editor.scrollIntoView({ block: "center" }), 0);
    editor.addEventListener("dali:mask-ready", () => {
      if (document.readyState === "complete") reveal();
      else window.addEventListener("load", reveal, { once: true });
    }, { once: true });
  }

  // A gallery image sent here: the mask editor paints over it once it has loaded.
  if (stored.value && preview.getAttribute("src")) {
    clear.hidden = false;
    const hand = () => input.dispatchEvent(new CustomEvent("dali:init-image", { detail: preview }));
    preview.addEventListener("error", () => say(`Image #${stored.value} could not be loaded.`));
    if (preview.complete && preview.naturalWidth) hand();
    else preview.addEventListener("load", hand, { once: true });
  }
});
