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
