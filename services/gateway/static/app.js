// Progressive enhancement only: every page works without this file.
(function () {
  "use strict";

  // The page's words in its language: base.html's meta
  // message → translation. words("Checking {count} rows…", {count: n}) fills in the
  // placeholders (numbers in the page language's format); a message the block lacks is
  // shown in English. Used by this file and by import.js (as ClientPress.words).
  var table = null;
  var lang = document.documentElement.lang || "en";

  function words(message, values) {
    if (table === null) {
      var block = document.getElementById("words");
      try {
        table = block ? JSON.parse(block.getAttribute("content")) : {};
      } catch (e) {
        table = {};
      }
    }
    var text = Object.prototype.hasOwnProperty.call(table, message) ? table[message] : message;
    return text.replace(/\{(\w+)\}/g, function (whole, name) {
      if (!values || !Object.prototype.hasOwnProperty.call(values, name)) { return whole; }
      var value = values[name];
      return typeof value === "number" ? value.toLocaleString(lang) : String(value);
    });
  }

  window.ClientPress = window.ClientPress || {};
  window.ClientPress.words = words;

  // confirm() before destructive buttons (Revoke, Disable): asked by the form, or by the
  // button that sent it (the selected invitations' Revoke, beside their Resend).
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var button = event.submitter;
    var question = (button && button.getAttribute && button.getAttribute("data-confirm")) ||
      (form && form.getAttribute && form.getAttribute("data-confirm"));
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });

  // Search-as-you-type for the user pickers: a filter box that narrows the options.
  function enhance(select) {
    var box = document.createElement("input");
    var label = document.createElement("label");
    box.type = "search";
    box.id = select.id + "-filter";
    box.className = "picker-filter";
    box.autocomplete = "off";
    box.placeholder = words("Type part of an email");
    label.htmlFor = box.id;
    label.className = "picker-label";
    label.textContent = words("Filter by email");
    var timer = null;
    function narrow() {
      var q = box.value.trim().toLowerCase();
      Array.prototype.forEach.call(select.options, function (option) {
        option.hidden = option.value !== "" && q !== "" &&
          option.text.toLowerCase().indexOf(q) === -1;
      });
    }
    // The page lists the first users only; ask the server for the rest as the person types,
    // so a picker stays usable with thousands of accounts.
    function lookUp() {
      var q = box.value.trim();
      if (q.length < 2 || !window.fetch) { return; }
      fetch("/admin/users/search?q=" + encodeURIComponent(q), {credentials: "same-origin"})
        .then(function (response) { return response.ok ? response.json() : {items: []}; })
        .then(function (found) {
          var known = {};
          Array.prototype.forEach.call(select.options, function (o) { known[o.value] = true; });
          found.items.forEach(function (user) {
            if (!known[user.id]) {
              var option = document.createElement("option");
              option.value = user.id;
              option.text = user.email;
              select.add(option);
            }
          });
          narrow();
        })
        .catch(function () { /* the list on the page still works */ });
    }
    box.addEventListener("input", function () {
      narrow();
      window.clearTimeout(timer);
      timer = window.setTimeout(lookUp, 200);
    });
    select.parentNode.insertBefore(label, select);
    select.parentNode.insertBefore(box, select);
  }

  // "Select all" for the rows a Resend / Revoke of the selected invitations acts on. Made
  // here: without this file it would be a box that does nothing.
  function selectAll(table) {
    var boxes = table.querySelectorAll("tbody input[type=checkbox][form]");
    var cell = table.querySelector("thead th[data-select-all]");
    if (!cell || boxes.length === 0) { return; }
    var all = document.createElement("input");
    var label = document.createElement("label");
    all.type = "checkbox";
    all.id = "select-all";
    label.htmlFor = all.id;
    label.className = "visually-hidden";
    label.textContent = words("Select all");
    all.addEventListener("change", function () {
      Array.prototype.forEach.call(boxes, function (box) { box.checked = all.checked; });
    });
    cell.textContent = "";
    cell.appendChild(all);
    cell.appendChild(label);
  }

  // A page that answers a form starts where the person's attention belongs, not at the
  // top of the page: the first field to correct (its label and error are read with it),
  // else the message about the whole form, or the result of what they just did. A
  // keyboard user would otherwise Tab through the header and every field before it (16
  // stops back to Invite Client's Email) and a screen reader would not read the message.
  function focusOutcome() {
    var active = document.activeElement;
    if (active && active !== document.body) { return; }
    var target = document.querySelector("main [aria-invalid=true]");
    if (!target) {
      target = Array.prototype.filter.call(
        document.querySelectorAll("main [role=alert], main [role=status]"),
        function (e) { return !e.hidden && e.textContent.trim() !== ""; }
      )[0];
      if (!target) { return; }
      if (!target.hasAttribute("tabindex")) { target.setAttribute("tabindex", "-1"); }
    }
    target.focus();
  }

  document.addEventListener("DOMContentLoaded", function () {
    focusOutcome();
    Array.prototype.forEach.call(document.querySelectorAll("table[data-selectable]"), selectAll);
    // Only long lists get a filter box; a short list is quicker to read than to search.
    Array.prototype.forEach.call(document.querySelectorAll("select[data-user-search]"), function (select) {
      if (select.options.length > 8 || select.hasAttribute("data-more-users")) {
        enhance(select);
      }
    });
  });
})();
