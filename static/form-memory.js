// The generate form remembered by this browser (localStorage), and the prompts used last.
//
// Every change of the form is kept per project ("dali.form.<project id>": each named field's
// value; not the files). Opening the project's page puts it back, with a note and a button for
// the project's defaults instead. The server's values win where they were chosen: the page
// of "use these settings" (and the form shown again after bad input) marks the form
// `data-remember="keep"`, and it is shown as sent, then remembered once changed. A model,
// sampler or style the studio no longer has is left as the server set it.
//
// The last 20 prompts generated from any project ("dali.prompts") are offered in a list under
// the prompt; picking one puts it back in the prompt box.
"use strict";

(function () {
  const form = document.querySelector("#generate-form");
  const prompt = form && form.elements.prompt;
  if (!prompt) return;
  const FORM_KEY = `dali.form.${form.dataset.project}`;
  const HISTORY_KEY = "dali.prompts";
  const HISTORY_SIZE = 20;
  let storage = null;
  try { storage = window.localStorage; storage.getItem(HISTORY_KEY); } catch (e) { return; }

  function read(key, fallback) {
    try { return JSON.parse(storage.getItem(key)) || fallback; } catch (e) { return fallback; }
  }

  function write(key, value) {
    try { storage.setItem(key, JSON.stringify(value)); } catch (e) { /* full or refused */ }
  }

  // The form's own fields: what it sends, but not files.
  function fields() {
    return [...form.elements].filter((el) => el.name && el.type !== "file" && el.type !== "hidden"
                                             && el.type !== "submit" && el.type !== "button");
  }

  function snapshot() {
    const values = {};
    for (const el of fields()) {
      if (el.type === "checkbox") values[el.name] = el.checked;
      else if (el.type === "radio") { if (el.checked) values[el.name] = el.value; }
      else if (el.multiple) values[el.name] = [...el.selectedOptions].map((o) => o.value);
      else values[el.name] = el.value;
    }
    return values;
  }

  // Set each field to its saved value where it can take it; the fields changed.
  function apply(saved) {
    const changed = [];
    for (const el of fields()) {
      if (!(el.name in saved)) continue;
      const value = saved[el.name];
      let differs = false;
      if (el.type === "checkbox" || el.type === "radio") {
        const on = el.type === "checkbox" ? value === true : el.value === value;
        differs = el.checked !== on;
        el.checked = on;
      } else if (el.multiple) {
        if (!Array.isArray(value)) continue;
        for (const option of el.options) {
          const on = value.includes(option.value);
          differs = differs || option.selected !== on;
          option.selected = on;
        }
      } else if (el.tagName === "SELECT") {
        const usable = [...el.options].some((o) => o.value === value && !o.disabled);
        if (!usable || el.value === value) continue;
        el.value = value;
        differs = true;
      } else if (typeof value === "string" && el.value !== value) {
        el.value = value;
        differs = true;
      }
      if (differs) changed.push(el);
    }
    return changed;
  }

  // Tell the page's other scripts (the seed box, the estimate) that fields changed, without
  // remembering the change itself.
  let quiet = false;
  function announce(elements) {
    quiet = true;
    for (const el of elements) {
      el.dispatchEvent(new Event("input", { bubbles: true }));
      el.dispatchEvent(new Event("change", { bubbles: true }));
    }
    quiet = false;
  }

  let pending = null;
  function save() {
    clearTimeout(pending);
    pending = null;
    write(FORM_KEY, snapshot());
  }
  function saveSoon() {
    if (quiet) return;
    clearTimeout(pending);
    pending = setTimeout(save, 250);
  }
  form.addEventListener("input", saveSoon);
  form.addEventListener("change", saveSoon);
  window.addEventListener("pagehide", () => { if (pending !== null) save(); });

  function restore() {
    const saved = read(FORM_KEY, null);
    if (!saved || typeof saved !== "object") return;
    const changed = apply(saved);
    if (!changed.length) return;
    announce(changed);
    const note = document.createElement("p");
    note.className = "hint memory-note";
    note.id = "memory-note";
    note.textContent = "Your last settings for this project are back. ";
    const reset = document.createElement("button");
    reset.type = "button";
    reset.className = "secondary";
    reset.id = "memory-reset";
    reset.textContent = "Use the project's defaults";
    reset.addEventListener("click", () => {
      storage.removeItem(FORM_KEY);
      form.reset(); // the values the server wrote into the page
      announce([...form.elements].filter((el) => el.name));
      note.remove();
      prompt.focus();
    });
    note.appendChild(reset);
    form.prepend(note);
  }

  // -- the recent prompts ------------------------------------------------------------------
  const recent = document.createElement("select");
  recent.id = "prompt-history";
  recent.className = "prompt-history";
  recent.setAttribute("aria-label", "Recent prompts: pick one to put it back in the prompt");
  prompt.insertAdjacentElement("afterend", recent);

  function fillHistory() {
    const prompts = read(HISTORY_KEY, []).filter((p) => typeof p === "string");
    recent.replaceChildren();
    const label = document.createElement("option");
    label.value = "";
    label.textContent = `Recent prompts (${prompts.length})…`;
    recent.appendChild(label);
    for (const text of prompts) {
      const option = document.createElement("option");
      option.value = text;
      option.title = text;
      option.textContent = text.length > 90 ? `${text.slice(0, 89)}…` : text;
      recent.appendChild(option);
    }
    recent.hidden = prompts.length === 0;
  }

  recent.addEventListener("change", () => {
    if (!recent.value) return;
    prompt.value = recent.value;
    recent.value = "";
    prompt.dispatchEvent(new Event("input", { bubbles: true }));
    prompt.focus();
  });

  form.addEventListener("submit", () => {
    save();
    const text = prompt.value.trim();
    if (!text) return;
    const prompts = read(HISTORY_KEY, []).filter((p) => typeof p === "string" && p !== text);
    write(HISTORY_KEY, [text, ...prompts].slice(0, HISTORY_SIZE));
    fillHistory();
  });

  fillHistory();
  if (form.dataset.remember === "restore") restore();
})();
