// The generate page's jobs, live: a card per job (status, progress, step detail, preview,
// link, cancel), newest first, for the jobs queued or running when the page was drawn (the
// server draws their cards) and every job queued since, from this page or anywhere else.
// One EventSource follows them all (GET /api/v1/projects/{id}/events): browsers give a host
// only six HTTP/1.1 connections, so a stream per job would starve a page with six queued.
// A finished job's images go into #results and the "Gallery (N)" counter, once per job.
// Needs static/dali.js (loaded before it) for `window.dali`.
"use strict";

(function () {
  const list = document.querySelector("#jobs");
  if (!list) return;
  const { api, formatSeconds, showStatus, showProgress } = window.dali;
  const template = document.querySelector("#job-card-template");
  const results = document.querySelector("#results");
  const queueCount = document.querySelector("#queue-count");
  const galleryCount = document.querySelector("#gallery-count");
  // The project's newest job id when the page was drawn: a job up to it that has no card had
  // ended by then, and its images are counted already.
  const latest = Number(list.dataset.latest);
  const cards = new Map(); // generation id → { element, ui, finished }

  // One line on how a finished job went, from the steps it really ran: the sampler's own count
  // (img2img at strength 0.6 runs 12 of 20 steps; the hires fix adds its pass), as the
  // progress bar counted them, not the requested number.
  function runSummary(g, progress) {
    if (!(g.started_at && g.finished_at)) return "";
    // The time includes loading the model the first time it is used.
    const took = formatSeconds((Date.parse(g.finished_at) - Date.parse(g.started_at)) / 1000);
    const total = progress.max > 1 ? progress.max : null;
    const done = progress.value;
    if (g.status === "succeeded") {
      const rate = g.step_seconds ? ` at ${formatSeconds(g.step_seconds)}/step` : "";
      return `Finished in ${took}` + (total ? ` (${total} steps${rate})` : "");
    }
    const stopped = { canceled: "Canceled", interrupted: "Interrupted" }[g.status] || "Stopped";
    return total ? `${stopped} after ${done} of ${total} steps (${took})` : `${stopped} after ${took}`;
  }

  function thumbLink(image) {
    const link = document.createElement("a");
    link.className = "thumb";
    link.href = `/images/${image.id}`;
    link.dataset.full = image.url; // static/lightbox.js opens it large
    link.dataset.seed = String(image.seed); // static/generate-tools.js reuses it
    const img = document.createElement("img");
    img.src = image.thumbnail_url;
    img.alt = `Image ${image.id}, seed ${image.seed}`;
    link.appendChild(img);
    return link;
  }

  function countQueue() {
    let active = 0;
    cards.forEach((card) => { if (!card.finished) active += 1; });
    queueCount.textContent = String(active);
  }

  // Takes over a card (drawn by the server, or cloned): its elements, and its cancel button.
  function adopt(element, id) {
    const find = (selector) => element.querySelector(selector);
    const card = {
      element,
      finished: false,
      ui: {
        status: find(".job-status"), progress: find(".job-progress"), detail: find(".job-detail"),
        preview: find(".job-preview"), prompt: find(".job-prompt"), cancel: find(".job-cancel"),
        notes: find(".job-notes"),
      },
    };
    card.ui.cancel.addEventListener("submit", async (event) => {
      event.preventDefault();
      card.ui.status.textContent = "Canceling…";
      const { response, data } = await api("POST", `/api/v1/generations/${id}/cancel`);
      // 409: it ended meanwhile; its `done` event says how.
      if (!response.ok && response.status !== 409) {
        card.ui.status.textContent = "Could not cancel: " + ((data && data.detail) || response.status);
      }
    });
    cards.set(id, card);
    countQueue();
    return card;
  }

  // A new card for job `id`, in its place: newest first.
  function addCard(id) {
    const element = template.content.firstElementChild.cloneNode(true);
    element.dataset.generation = String(id);
    element.querySelector(".job-id").textContent = String(id);
    element.querySelector(".job-link").href = `/generations/${id}`;
    element.querySelector(".job-cancel").action = `/generations/${id}/cancel`;
    element.querySelector(".job-cancel button").setAttribute("aria-label", `Cancel generation #${id}`);
    element.querySelector(".job-progress").setAttribute("aria-label", `Progress of generation #${id}`);
    element.querySelector(".job-preview").alt = `Preview of generation #${id}`;
    const older = [...list.children].find((other) => Number(other.dataset.generation) < id);
    list.insertBefore(element, older || null);
    const empty = document.querySelector("#output-empty");
    if (empty) empty.remove();
    return adopt(element, id);
  }

  // The job's warnings (a prompt the built-in model was never taught, a LoRA it could not
  // use…) as notes on its card: said at submission, and again as the job goes on and ends.
  function showNotes(card, warnings) {
    if (!warnings || warnings.length === 0) return; // a queued job's row has none yet
    card.ui.notes.replaceChildren(...warnings.map((warning) => {
      const item = document.createElement("li");
      item.className = "notice";
      item.setAttribute("role", "note");
      item.textContent = `Note: ${warning}`;
      return item;
    }));
    card.ui.notes.hidden = false;
  }

  function finish(card, g) {
    if (card.finished) return; // said again after a reconnection: its images are in already
    card.finished = true;
    const ui = card.ui;
    ui.cancel.hidden = true;
    ui.preview.hidden = true;
    ui.detail.textContent = runSummary(g, ui.progress);
    showNotes(card, g.warnings);
    if (g.status === "succeeded" || g.status === "interrupted") {
      const done = g.status === "succeeded" ? "Done" : "Interrupted (partly denoised)";
      ui.status.textContent = `${done} — ${g.images.length} image${g.images.length === 1 ? "" : "s"}`;
      ui.progress.value = ui.progress.max;
      if (galleryCount) galleryCount.textContent = String(Number(galleryCount.textContent) + g.images.length);
      g.images.slice().reverse().forEach((image) => results.prepend(thumbLink(image)));
    } else if (g.status === "canceled") {
      ui.status.textContent = "Canceled";
    } else if (g.status === "deleted") {
      ui.status.textContent = "Deleted";
    } else {
      ui.status.textContent = "Failed: " + (g.error || "unknown reason");
    }
    card.element.dataset.status = g.status;
    countQueue();
    document.dispatchEvent(new CustomEvent("dali:job-finished", { detail: g }));
  }

  list.querySelectorAll(".job-card").forEach((element) => adopt(element, Number(element.dataset.generation)));

  // A job queued from this page's form (static/dali.js): its card at once, before the stream
  // says more. On a phone the output sits below the form: bring the card into view.
  document.addEventListener("dali:queued", (event) => {
    const accepted = event.detail;
    const card = cards.get(accepted.id) || addCard(accepted.id);
    if (!card.finished && card.ui.status.textContent === "") showStatus(card.ui, accepted);
    if (!card.finished) showNotes(card, accepted.warnings);
    if (window.matchMedia("(max-width: 900px)").matches) card.element.scrollIntoView({ behavior: "smooth", block: "start" });
  });

  // From the oldest job the page shows (the server drew it queued or running: it may have
  // ended before the stream opens), so no job of the page is left without its end.
  const after = Math.min(latest, ...[...cards.keys()].map((id) => id - 1));
  const source = new EventSource(`/api/v1/projects/${list.dataset.project}/events?after=${after}`);
  const data = (event) => JSON.parse(event.data);

  source.addEventListener("status", (event) => {
    const g = data(event);
    const card = cards.get(g.id) || addCard(g.id);
    if (card.finished) return;
    card.element.dataset.status = g.status;
    card.ui.prompt.textContent = g.prompt;
    showNotes(card, g.warnings);
    showStatus(card.ui, g);
  });
  source.addEventListener("progress", (event) => {
    const p = data(event);
    const card = cards.get(p.id);
    if (card && !card.finished) showProgress(card.ui, p);
  });
  source.addEventListener("problem", (event) => {
    const problem = data(event);
    const card = cards.get(problem.id);
    if (card && !card.finished) card.ui.status.textContent = `Not saved yet: ${problem.error}`;
  });
  source.addEventListener("done", (event) => {
    const g = data(event);
    let card = cards.get(g.id);
    // A job without a card up to `latest` had ended before the page was drawn.
    if (!card && g.id > latest) card = addCard(g.id);
    if (card) finish(card, g);
  });
  source.onerror = () => {
    if (source.readyState !== EventSource.CLOSED) return; // the browser tries again by itself
    cards.forEach((card) => {
      if (!card.finished) card.ui.status.textContent = "Connection lost — reload to see the result";
    });
  };
})();
