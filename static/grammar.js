// The built-in model's prompt grammar under the prompt box (templates/generate.html #grammar):
// shown while the chosen model is the built-in one (its option carries data-builtin), hidden for
// any other checkpoint; a click on an example prompt writes it into the prompt box. (Its word
// chips are static/dali.js's picker.)
"use strict";

(function () {
  const grammar = document.querySelector("#grammar");
  const model = document.querySelector("#generate-form select[name=model]");
  const prompt = document.querySelector("#prompt");
  if (!grammar || !model || !prompt) return;

  function follow() {
    const chosen = model.options[model.selectedIndex];
    grammar.hidden = !(chosen && "builtin" in chosen.dataset);
  }
  model.addEventListener("change", follow);
  follow();

  grammar.addEventListener("click", (event) => {
    const example = event.target.closest("button[data-prompt]");
    if (!example) return;
    prompt.value = example.dataset.prompt;
    prompt.dispatchEvent(new Event("input", { bubbles: true })); // remembered with the form
    prompt.focus();
  });
})();
