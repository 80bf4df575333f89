// Beside the generate form's seed: "Reuse seed N" puts back the seed of the newest image on the
// page (the last result, else the newest of the recent images), "New seed" draws one; either
// unticks "Random seed" so the number shown is the one used. Also shows the Ctrl+Enter hint,
// true only with the page's script.
"use strict";

(function () {
  const form = document.querySelector("#generate-form");
  const seed = form && form.elements.seed;
  const random = form && form.elements.random_seed;
  if (!seed || !random) return;

  const hint = document.querySelector("#generate-hint");
  if (hint) hint.hidden = false;

  function useSeed(value) {
    random.checked = false;
    random.dispatchEvent(new Event("change", { bubbles: true })); // enables the seed box
    seed.value = String(value);
    seed.dispatchEvent(new Event("input", { bubbles: true }));
    seed.dispatchEvent(new Event("change", { bubbles: true }));
  }

  function button(id, text) {
    const element = document.createElement("button");
    element.type = "button";
    element.id = id;
    element.className = "secondary";
    element.textContent = text;
    return element;
  }

  const tools = document.createElement("div");
  tools.className = "seed-tools";
  tools.setAttribute("role", "group");
  tools.setAttribute("aria-label", "Seed");
  const reuse = button("reuse-seed", "Reuse seed");
  const draw = button("new-seed", "New seed");
  draw.setAttribute("aria-label", "Draw a new random seed");
  tools.append(reuse, draw);
  seed.closest(".seed-row").appendChild(tools);

  // The newest image of the page: the results come first in the document, newest first.
  function newest() {
    return document.querySelector("[data-lightbox] a.thumb[data-seed]");
  }

  function refresh() {
    const image = newest();
    reuse.disabled = !image;
    reuse.textContent = image ? `Reuse seed ${image.dataset.seed}` : "Reuse seed";
    reuse.setAttribute("aria-label", image
      ? `Reuse seed ${image.dataset.seed}, the last image's`
      : "Reuse the last image's seed (no image yet)");
  }

  reuse.addEventListener("click", () => {
    const image = newest();
    if (image) useSeed(image.dataset.seed);
  });
  draw.addEventListener("click", () => {
    useSeed(window.crypto.getRandomValues(new Uint32Array(1))[0]);
  });

  const results = document.querySelector("#results");
  if (results) new MutationObserver(refresh).observe(results, { childList: true });
  refresh();
})();
