// Dali pages: small progressive enhancements. Every form also works without this file.
"use strict";

(function () {
  const $ = (selector, root = document) => root.querySelector(selector);

  // Forms that destroy something ask first.
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });

  function formatSeconds(s) {
    if (s === null || s === undefined) return "";
    if (s < 1) return Math.round(s * 1000) + " ms";
    if (s < 120) return s.toFixed(1) + " s";
    return (s / 60).toFixed(1) + " min";
  }

  // A JSON call; `body` is sent as JSON, or as it is when it is a form's FormData.
  async function api(method, url, body) {
    const options = { method, headers: { Accept: "application/json" } };
    if (body instanceof FormData) {
      options.body = body;
    } else if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(url, options);
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    return { response, data };
  }

  function clearErrors(form) {
    form.querySelectorAll(".field-error.js").forEach((el) => el.remove());
    form.querySelectorAll("[aria-invalid]").forEach((el) => el.removeAttribute("aria-invalid"));
  }

  function showErrors(form, detail) {
    let first = null;
    const general = [];
    (Array.isArray(detail) ? detail : [{ msg: String(detail) }]).forEach((error) => {
      const loc = error.loc || [];
      const name = loc.length > 1 ? loc[loc.length - 1] : null;
      const input = name ? form.querySelector(`[name="${name}"]`) : null;
      if (!input) { general.push(error.msg); return; }
      const message = document.createElement("p");
      message.className = "field-error js";
      message.id = `${name}-error`;
      message.setAttribute("role", "alert");
      message.textContent = error.msg;
      input.setAttribute("aria-invalid", "true");
      input.setAttribute("aria-describedby", message.id);
      input.closest(".field").appendChild(message);
      first = first || input;
    });
    if (general.length) {
      const message = document.createElement("p");
      message.className = "field-error js";
      message.setAttribute("role", "alert");
      message.textContent = general.join(" ");
      form.prepend(message);
    }
    if (first) first.focus();
  }

  // A job's status (a GenerationOut) in words, into `ui.status`.
  function showStatus(ui, g) {
    if (g.status === "queued") {
      ui.status.textContent = g.position > 0 ? `Queued — ${g.position} job${g.position === 1 ? "" : "s"} ahead` : "Starting…";
    } else {
      ui.status.textContent = "Running";
    }
  }

  // A progress event's step, time left, speed and preview, into `ui`'s elements.
  function showProgress(ui, p) {
    ui.status.textContent = "Running";
    ui.progress.max = p.total;
    ui.progress.value = p.step;
    ui.progress.setAttribute("aria-valuetext", `step ${p.step} of ${p.total}`);
    const eta = p.eta_s !== null ? ` · about ${formatSeconds(p.eta_s)} left` : "";
    const speed = p.step_seconds ? ` · ${formatSeconds(p.step_seconds)}/step` : "";
    ui.detail.textContent = `Step ${p.step} of ${p.total}${eta}${speed}`;
    if (p.preview) { ui.preview.src = p.preview; ui.preview.hidden = false; }
  }

  // For the generate page's own script (static/jobs.js, loaded after this file).
  window.dali = { api, formatSeconds, showStatus, showProgress };

  // Follows one generation over Server-Sent Events and draws it into the given elements.
  function follow(id, ui) {
    const source = new EventSource(`/api/v1/generations/${id}/events`);
    let closed = false;
    const close = () => { closed = true; source.close(); };
    source.addEventListener("status", (event) => showStatus(ui, JSON.parse(event.data)));
    source.addEventListener("progress", (event) => showProgress(ui, JSON.parse(event.data)));
    source.addEventListener("problem", (event) => {
      ui.status.textContent = `Not saved yet: ${JSON.parse(event.data).error}`;
    });
    source.addEventListener("done", (event) => {
      close();
      const g = JSON.parse(event.data);
      ui.done(g);
    });
    source.onerror = () => {
      if (!closed && source.readyState === EventSource.CLOSED) ui.status.textContent = "Connection lost — reload to see the result";
    };
    return close;
  }

  // Writes `text` over the selection of `box` (a textarea), with a space either side where it
  // would otherwise run into a word; the cursor ends after it. A box never focused gets it at
  // the end (its caret would be at the start).
  function insertAtCursor(box, text, atEnd) {
    const start = atEnd ? box.value.length : box.selectionStart;
    const end = atEnd ? box.value.length : box.selectionEnd;
    const before = box.value.slice(0, start);
    const after = box.value.slice(end);
    const lead = before && !/[\s(\[]$/.test(before) ? " " : "";
    const trail = after && !/^[\s,)\]]/.test(after) ? " " : "";
    box.setRangeText(lead + text + trail, start, end, "end");
    box.focus();
    box.dispatchEvent(new Event("input", { bubbles: true }));
  }

  // The LoRA & embedding picker and the built-in model's words: a click writes its tag or word
  // into the prompt box used last (the prompt, until the negative prompt has had the focus).
  const pickers = ["#networks", "#grammar"].map((selector) => $(selector)).filter(Boolean);
  if (pickers.length) {
    let target = $("#prompt");
    const focused = new Set();
    ["#prompt", "#negative_prompt"].forEach((selector) => {
      const box = $(selector);
      if (box) box.addEventListener("focus", () => { target = box; focused.add(box); });
    });
    pickers.forEach((picker) => picker.addEventListener("click", (event) => {
      const button = event.target.closest("button[data-insert]");
      if (button && target) insertAtCursor(target, button.dataset.insert, !focused.has(target));
    }));
  }

  // -- the mask editor: paint the inpainting mask over the chosen init image ----------------
  // The strokes are kept on a canvas of the image's own size (shown scaled over it); on
  // submit they become a black-and-white PNG sent as the form's "mask" file, so a drawn mask
  // is checked like an uploaded one. Returns { addTo(formData) }, or null without an editor.
  function maskEditor(form) {
    const editor = $("#mask-editor");
    const init = form.elements.init_image;
    if (!editor || !init) return null;
    const picture = $("#mask-image");
    const canvas = $("#mask-canvas");
    const paint = canvas.getContext("2d");
    const size = $("#brush_size");
    const brush = $("#mask-brush");
    const eraser = $("#mask-eraser");
    const INK = "rgb(255, 0, 170)"; // shown half transparent; any painted pixel repaints
    let erasing = false;
    let last = null;

    const setTool = (erase) => {
      erasing = erase;
      brush.setAttribute("aria-pressed", String(!erase));
      eraser.setAttribute("aria-pressed", String(erase));
    };
    brush.addEventListener("click", () => setTool(false));
    eraser.addEventListener("click", () => setTool(true));
    $("#mask-clear").addEventListener("click", () => paint.clearRect(0, 0, canvas.width, canvas.height));
    const showSize = () => { $("#brush-size-value").textContent = size.value; };
    size.addEventListener("input", showSize);
    showSize();

    // A new init image starts a new, empty mask of its size; a file the browser cannot
    // decode hides the editor (the server says what is wrong with it). The image is a chosen
    // file, or a gallery image's <img> that static/image_tools.js hands over in a
    // "dali:init-image" event (null: the init image was removed).
    const show = async (source) => {
      editor.hidden = true;
      if (!source) return;
      let bitmap;
      try { bitmap = await createImageBitmap(source); } catch (e) { return; }
      for (const c of [picture, canvas]) { c.width = bitmap.width; c.height = bitmap.height; }
      picture.getContext("2d").drawImage(bitmap, 0, 0);
      bitmap.close();
      editor.hidden = false;
      editor.dispatchEvent(new Event("dali:mask-ready", { bubbles: true }));
    };
    init.addEventListener("change", () => show(init.files && init.files[0]));
    init.addEventListener("dali:init-image", (event) => show(event.detail));

    // Pointer position in the image's pixels (the canvas is shown scaled).
    const at = (event) => {
      const box = canvas.getBoundingClientRect();
      return [(event.clientX - box.left) * canvas.width / box.width,
              (event.clientY - box.top) * canvas.height / box.height];
    };
    const draw = (from, to) => {
      paint.globalCompositeOperation = erasing ? "destination-out" : "source-over";
      paint.strokeStyle = paint.fillStyle = INK;
      paint.lineWidth = Number(size.value);
      paint.lineCap = paint.lineJoin = "round";
      paint.beginPath();
      if (from) {
        paint.moveTo(from[0], from[1]);
        paint.lineTo(to[0], to[1]);
        paint.stroke();
      } else {
        paint.arc(to[0], to[1], paint.lineWidth / 2, 0, 2 * Math.PI);
        paint.fill();
      }
    };
    canvas.addEventListener("pointerdown", (event) => {
      event.preventDefault();
      canvas.setPointerCapture(event.pointerId);
      last = at(event);
      draw(null, last);
    });
    canvas.addEventListener("pointermove", (event) => {
      if (last === null) return;
      const point = at(event);
      draw(last, point);
      last = point;
    });
    const stop = () => { last = null; };
    canvas.addEventListener("pointerup", stop);
    canvas.addEventListener("pointercancel", stop);

    return {
      // Puts the drawn mask into `data` as its "mask" file; nothing when none is drawn.
      async addTo(data) {
        if (editor.hidden || !canvas.width) return;
        const strokes = paint.getImageData(0, 0, canvas.width, canvas.height);
        const pixels = strokes.data;
        let painted = false;
        for (let i = 0; i < pixels.length; i += 4) {
          const alpha = pixels[i + 3]; // white where painted, black elsewhere
          pixels[i] = pixels[i + 1] = pixels[i + 2] = alpha;
          pixels[i + 3] = 255;
          painted = painted || alpha > 0;
        }
        if (!painted) return;
        const mask = document.createElement("canvas");
        mask.width = canvas.width;
        mask.height = canvas.height;
        mask.getContext("2d").putImageData(strokes, 0, 0);
        const blob = await new Promise((resolve) => mask.toBlob(resolve, "image/png"));
        if (blob) data.set("mask", blob, "drawn-mask.png");
      },
    };
  }

  // -- the hardware page: benchmarks follow themselves ----------------------------------------
  const benchmarkList = $("#benchmarks");
  if (benchmarkList && benchmarkList.querySelector(".status-queued, .status-running")) {
    const finished = (b) => b.status === "done" || b.status === "failed";
    const poll = async () => {
      const { response, data } = await api("GET", "/api/v1/hardware/benchmarks");
      if (response.ok) {
        // The list is the page's, in the same order.
        const badges = benchmarkList.querySelectorAll(".status");
        data.forEach((b, i) => {
          if (!badges[i]) return;
          badges[i].textContent = b.status;
          badges[i].className = `status status-${b.status}`;
        });
        // All measured: the page's estimates and speeds table are out of date; redraw it.
        if (data.every(finished)) { window.location.reload(); return; }
      }
      setTimeout(poll, 1000);
    };
    setTimeout(poll, 1000);
  }

  // -- the generate page ------------------------------------------------------------------
  const form = $("#generate-form");
  if (form) {
    const project = form.dataset.project;
    const randomSeed = $("#random_seed");
    const seed = $("#seed");
    const estimate = $("#estimate");
    const measure = $("#measure-button");
    const button = $("#generate-button");
    const mask = maskEditor(form);

    const syncSeed = () => { seed.disabled = randomSeed.checked; };
    randomSeed.addEventListener("change", syncSeed);
    syncSeed();

    async function refreshEstimate() {
      const params = new URLSearchParams();
      for (const name of ["model", "width", "height", "steps", "batch"]) {
        const value = form.elements[name] && form.elements[name].value;
        if (value) params.set(name, value);
      }
      const { response, data } = await api("GET", `/api/v1/projects/${project}/estimate?${params}`);
      if (!response.ok) { estimate.textContent = ""; return; }
      if (data.seconds === null) {
        estimate.textContent = `Estimated time: ${data.basis} — “Measure speed” runs a short test.`;
        measure.hidden = false;
      } else {
        estimate.textContent = `Estimated time: about ${formatSeconds(data.seconds)} (${data.basis}).`;
        measure.hidden = true;
      }
    }
    ["model", "width", "height", "steps", "batch"].forEach((name) => {
      if (form.elements[name]) form.elements[name].addEventListener("change", refreshEstimate);
    });
    refreshEstimate();
    // A finished job may have measured the device's speed (static/jobs.js says when).
    document.addEventListener("dali:job-finished", refreshEstimate);

    measure.addEventListener("click", async () => {
      measure.disabled = true;
      estimate.textContent = "Measuring speed with a short run…";
      const body = { device: measure.dataset.device, steps: 8 };
      if (form.elements.model.value) body.model = form.elements.model.value;
      if (form.elements.width.value) body.width = Number(form.elements.width.value);
      if (form.elements.height.value) body.height = Number(form.elements.height.value);
      const { response, data } = await api("POST", "/api/v1/hardware/benchmark", body);
      if (!response.ok) { estimate.textContent = "Could not measure: " + JSON.stringify(data && data.detail); measure.disabled = false; return; }
      for (let i = 0; i < 600; i++) {
        await new Promise((r) => setTimeout(r, 1000));
        const list = await api("GET", "/api/v1/hardware/benchmarks");
        const mine = (list.data || []).find((b) => b.device === data.device && b.model === data.model && b.width === data.width && b.height === data.height);
        if (mine && (mine.status === "done" || mine.status === "failed")) {
          if (mine.status === "failed") estimate.textContent = "Measuring failed: " + mine.error;
          else await refreshEstimate();
          break;
        }
      }
      measure.disabled = false;
    });

    // Ctrl+Enter (⌘+Enter) generates from any field of the form, as in AUTOMATIC1111: the
    // prompt, the negative prompt, a number.
    form.addEventListener("keydown", (event) => {
      const field = event.target.closest("textarea, input, select");
      if (field && event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); form.requestSubmit(); }
    });

    // The form itself is posted, to the same route as without JavaScript, asking for JSON:
    // every field (hires fix, inpainting, styles) is read by the server's one form reader.
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      clearErrors(form);
      button.disabled = true;
      let response, data;
      try {
        const fields = new FormData(form);
        if (mask) await mask.addTo(fields);
        ({ response, data } = await api("POST", form.action, fields));
      } catch (e) {
        showErrors(form, [{ msg: "The request could not be sent; is the studio running?" }]);
        return;
      } finally {
        button.disabled = false;
      }
      if (response.status === 429) {
        const wait = response.headers.get("Retry-After");
        showErrors(form, [{ msg: `The queue is full; try again in ${wait} s.` }]);
        return;
      }
      if (!response.ok) { showErrors(form, data ? data.detail : "request failed"); return; }
      // Queued: static/jobs.js shows it and follows it with the project's other jobs.
      form.dispatchEvent(new CustomEvent("dali:queued", { bubbles: true, detail: data }));
    });
  }

  // -- a generation's own page ------------------------------------------------------------
  const generation = $("#generation");
  if (generation && generation.dataset.finished === "false") {
    const ui = {
      status: $("#job-status"), progress: $("#progress"), detail: $("#job-detail"), preview: $("#preview"),
      done() { window.location.reload(); },
    };
    follow(generation.dataset.generation, ui);
  }
})();
