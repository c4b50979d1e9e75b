// Progressive enhancement only: every page works without this file.
(function () {
  "use strict";

  // confirm() before destructive buttons (Revoke, Disable).
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form && form.getAttribute && form.getAttribute("data-confirm");
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
    box.placeholder = "Type part of an email";
    label.htmlFor = box.id;
    label.className = "picker-label";
    label.textContent = "Filter by email";
    box.addEventListener("input", function () {
      var q = box.value.trim().toLowerCase();
      Array.prototype.forEach.call(select.options, function (option) {
        option.hidden = option.value !== "" && q !== "" &&
          option.text.toLowerCase().indexOf(q) === -1;
      });
    });
    select.parentNode.insertBefore(label, select);
    select.parentNode.insertBefore(box, select);
  }

  document.addEventListener("DOMContentLoaded", function () {
    // Only long lists get a filter box; a short list is quicker to read than to search.
    Array.prototype.forEach.call(document.querySelectorAll("select[data-user-search]"), function (select) {
      if (select.options.length > 8) {
        enhance(select);
      }
    });
  });
})();
