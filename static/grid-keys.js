// Keyboard navigation in a grid of images (an element marked `data-grid-keys`): the arrow keys
// move the focus between its image links (↑ ↓ by a row, as the grid is laid out now; past an
// edge it stays), Home and End to the first and last. Enter follows the link as ever (or opens
// the lightbox where static/lightbox.js is loaded); Tab still visits every image. Hints marked
// `data-keys-hint`, true only with this script, are shown by it.
"use strict";

(function () {
  document.querySelectorAll("[data-keys-hint]").forEach((hint) => { hint.hidden = false; });

  // How many links sit on the grid's first row.
  function columns(items) {
    const top = items[0].getBoundingClientRect().top;
    const first = items.findIndex((item) => Math.abs(item.getBoundingClientRect().top - top) > 2);
    return first === -1 ? items.length : first;
  }

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.shiftKey) return;
    const link = event.target.closest && event.target.closest("[data-grid-keys] a.thumb");
    if (!link) return;
    const items = [...link.closest("[data-grid-keys]").querySelectorAll("a.thumb")];
    const at = items.indexOf(link);
    const moves = {
      ArrowLeft: () => at - 1,
      ArrowRight: () => at + 1,
      ArrowUp: () => at - columns(items),
      ArrowDown: () => at + columns(items),
      Home: () => 0,
      End: () => items.length - 1,
    };
    if (!moves[event.key]) return;
    event.preventDefault();
    const next = items[moves[event.key]()];
    if (!next) return; // past an edge of the grid: stay
    next.focus();
    next.scrollIntoView({ block: "nearest" });
  });
})();
