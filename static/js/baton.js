// Live partials are replaced every 2 seconds; without this, a folded output the reader has
// opened would snap shut on the next refresh. Folds that should survive carry an id.
(function () {
  "use strict";
  let open = [];
  document.addEventListener("htmx:beforeSwap", function () {
    open = Array.from(document.querySelectorAll("details[id][open]"), function (d) { return d.id; });
  });
  document.addEventListener("htmx:afterSwap", function () {
    open.forEach(function (id) {
      const details = document.getElementById(id);
      if (details) details.open = true;
    });
  });

  // A poll made after the session ran out is answered by the login page; show it as a page,
  // not squeezed into the table it was meant to refresh.
  document.addEventListener("htmx:beforeSwap", function (event) {
    const login = document.body.dataset.loginUrl;
    const url = event.detail.xhr && event.detail.xhr.responseURL;
    if (login && url && new URL(url).pathname === login) {
      event.detail.shouldSwap = false;
      window.location.assign(url);
    }
  });
})();

// The Content-Security-Policy refuses style="" attributes, so sizes the server computes travel
// in data attributes and are applied here (writing element.style from a script is allowed):
// data-width is a percentage (progress bars), data-min-width pixels (the run graph). htmx.onLoad
// runs for the page and for every part htmx swaps in later.
(function () {
  "use strict";
  function apply(element) {
    const width = Number(element.dataset.width);
    if (element.dataset.width !== undefined && isFinite(width)) {
      element.style.width = Math.min(100, Math.max(0, width)) + "%";
    }
    const minWidth = Number(element.dataset.minWidth);
    if (element.dataset.minWidth !== undefined && isFinite(minWidth)) {
      element.style.minWidth = minWidth + "px";
    }
  }
  htmx.onLoad(function (root) {
    if (root.matches && root.matches("[data-width], [data-min-width]")) apply(root);
    root.querySelectorAll("[data-width], [data-min-width]").forEach(apply);
  });
})();
