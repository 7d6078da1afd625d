// Live partials are morphed in place (static/js/live.js keeps folds as the reader left them);
// an answer swapped whole (a 409 or 422 page part) would otherwise close a fold the reader had
// opened. Folds that should survive carry an id.
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
  // not squeezed into the table it was meant to refresh. After signing in, the reader comes back
  // to this page: the login page's own `next` is the part that asked (the navigation count, a
  // table's partial), which is no page to land on. Written as Django writes it ("/" unescaped).
  document.addEventListener("htmx:beforeSwap", function (event) {
    const login = document.body.dataset.loginUrl;
    const url = event.detail.xhr && event.detail.xhr.responseURL;
    if (login && url && new URL(url).pathname === login) {
      event.detail.shouldSwap = false;
      const here = encodeURIComponent(window.location.pathname + window.location.search).replace(/%2F/g, "/");
      window.location.assign(login + "?next=" + here);
    }
  });
})();

// An htmx action the server refuses must say why in the page: an approver whose item was
// reassigned meanwhile presses Approve and reads "This item was reassigned to …", not nothing.
// 409 and 422 answers that are page parts (a form with its errors, "someone decided first")
// are swapped in as usual (see the htmx-config meta in base.html); every other refusal, and
// any answer that is only text or JSON, shows its message in one alert region at the top of
// the page. The server's reason is read from a text/plain body, a JSON {"detail": …}, or the
// element marked data-refusal-reason in an HTML page (templates/403.html, 403_csrf.html,
// 404.html, 500.html), or the text of an HTML fragment that is no more than its message.
(function () {
  "use strict";
  const LIMIT = 400;
  const FALLBACK = {
    400: "The request was not understood.",
    403: "You may not do this.",
    404: "That is not there any more; reload the page.",
    409: "Someone changed this first; reload the page to see how it stands.",
    413: "What you sent is too large.",
    422: "What you sent was not accepted.",
    429: "Too many requests; try again in a moment.",
  };

  function region() {
    let alert = document.getElementById("page-alert");
    if (alert) return alert;
    alert = document.createElement("div");
    alert.id = "page-alert";
    alert.className = "notice notice--error page-alert";
    alert.hidden = true;
    // The message alone is the alert (announced when it changes); the dismiss button sits beside it.
    const text = document.createElement("p");
    text.className = "page-alert__text";
    text.setAttribute("role", "alert");
    const close = document.createElement("button");
    close.type = "button";
    close.className = "page-alert__close";
    close.setAttribute("aria-label", "Dismiss this message");
    close.textContent = "\u00d7";
    close.addEventListener("click", function () { hide(true); });
    alert.append(text, close);
    (document.querySelector("main") || document.body).prepend(alert);
    return alert;
  }

  // A background refresh that keeps failing must not bring back, time after time, a message
  // the person dismissed; and its message goes once that same part refreshes again, not when
  // some other part (the navigation count) happens to succeed.
  let dismissed = "";
  let fromPoll = null; // the element whose background read brought the message

  function verbOf(event) {
    const config = event.detail.requestConfig;
    return ((config && config.verb) || "get").toLowerCase();
  }

  function show(message, source) {
    if (source && message === dismissed) return;
    const alert = region();
    alert.querySelector(".page-alert__text").textContent = message;
    alert.hidden = false;
    fromPoll = source;
  }

  function hide(remember) {
    const alert = document.getElementById("page-alert");
    if (!alert || alert.hidden) return;
    if (remember) dismissed = alert.querySelector(".page-alert__text").textContent;
    alert.hidden = true;
  }

  function kind(xhr) {
    const type = (xhr.getResponseHeader("Content-Type") || "").toLowerCase();
    if (type.indexOf("text/html") === 0) return "html";
    if (type.indexOf("json") !== -1) return "json";
    return "text";
  }

  function reason(xhr) {
    const body = xhr.responseText || "";
    let text = "";
    const type = kind(xhr);
    if (type === "json") {
      try { text = String(JSON.parse(body).detail || ""); } catch (e) { text = ""; }
    } else if (type === "html") {
      const page = new DOMParser().parseFromString(body, "text/html");
      const marked = page.querySelector("[data-refusal-reason]") || page.querySelector("[role=alert]");
      // A bare fragment with no page around it (the request-size refusal's one paragraph,
      // Django's plain "Bad Request (400)") is the message itself; a whole page is not.
      const whole = page.querySelector("main, header, nav, form");
      text = marked ? marked.textContent : whole ? "" : page.body.textContent;
    } else {
      text = body;
    }
    text = text.replace(/\s+/g, " ").trim();
    if (text.length > LIMIT) text = text.slice(0, LIMIT - 1) + "\u2026";
    return text || FALLBACK[xhr.status] || "The server could not do this (error " + xhr.status + "). Try again, or reload the page.";
  }

  document.addEventListener("htmx:beforeSwap", function (event) {
    const xhr = event.detail.xhr;
    if (!xhr || xhr.status < 400) return;
    if (event.detail.shouldSwap && kind(xhr) === "html") return; // a page part that says it itself
    event.detail.shouldSwap = false;
    show(reason(xhr), verbOf(event) === "get" ? event.detail.elt : null);
  });

  document.addEventListener("htmx:sendError", function (event) {
    show("Baton could not be reached. Check the connection and try again.", verbOf(event) === "get" ? event.detail.elt : null);
  });

  // A new action by the person (not a read) starts with a clean slate.
  document.addEventListener("htmx:beforeRequest", function (event) {
    if (verbOf(event) !== "get") {
      dismissed = "";
      hide(false);
    }
  });

  document.addEventListener("htmx:afterRequest", function (event) {
    if (fromPoll && fromPoll === event.detail.elt && event.detail.successful && verbOf(event) === "get") hide(false);
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

// Times go on between refreshes: a page is refetched only when something changes, so a step
// that waits a minute for a language model would otherwise read "2 s" for that minute.
// - [data-elapsed] holds the seconds at render time (dashboard/templatetags/baton.py `ticking`);
//   shown as the server writes durations (orchestration/durations.py human_duration).
// - <time datetime> reading "now" or "… ago" (Django's naturaltime) is rewritten the same way
//   Django would, up to a day; older times change too slowly to matter.
(function () {
  "use strict";
  const seen = new WeakMap(); // element → {value, at}

  function twoUnits(total, size, big, small) {
    const high = Math.floor(total / size);
    const low = total % size;
    return low ? high + " " + big + " " + low + " " + small : high + " " + big;
  }

  function human(seconds) {
    if (seconds <= 0) return "0 s";
    const millis = Math.round(seconds * 1000);
    if (millis < 1000) return millis + " ms";
    const tenths = Math.round(seconds * 10) / 10;
    if (tenths < 10) return String(tenths) + " s";
    const whole = Math.round(seconds);
    if (whole < 60) return whole + " s";
    if (whole < 3600) return twoUnits(whole, 60, "min", "s");
    const minutes = Math.round(seconds / 60);
    if (minutes < 24 * 60) return twoUnits(minutes, 60, "h", "min");
    return twoUnits(Math.round(seconds / 3600), 24, "d", "h");
  }

  function ago(seconds) {
    if (seconds < 1) return "now";
    if (seconds < 60) { const s = Math.floor(seconds); return s === 1 ? "a second ago" : s + "\u00a0seconds ago"; }
    if (seconds < 3600) { const m = Math.floor(seconds / 60); return m === 1 ? "a minute ago" : m + "\u00a0minutes ago"; }
    const h = Math.floor(seconds / 3600);
    return h === 1 ? "an hour ago" : h + "\u00a0hours ago";
  }

  function tick() {
    const now = performance.now();
    document.querySelectorAll("[data-elapsed]").forEach(function (element) {
      const value = element.dataset.elapsed;
      let known = seen.get(element);
      if (!known || known.value !== value) { known = { value: value, at: now }; seen.set(element, known); }
      const seconds = Number(value) + (now - known.at) / 1000;
      if (isFinite(seconds)) element.textContent = human(seconds);
    });
    document.querySelectorAll("time[datetime]").forEach(function (element) {
      const text = element.textContent.trim();
      if (text !== "now" && !/ ago$/.test(text.replace(/\u00a0/g, " "))) return;
      const seconds = (Date.now() - Date.parse(element.getAttribute("datetime"))) / 1000;
      if (isFinite(seconds) && seconds >= 0 && seconds < 86400) element.textContent = ago(seconds);
    });
  }

  window.setInterval(tick, 1000);
})();

// A start form's list entered one input per item (templates/dashboard/_start_form.html): the
// server draws the items and two blank slots, which is enough without JavaScript; here the
// "Add another" and "Remove" buttons appear and work, and one blank slot is kept. Blank inputs are skipped by the server,
// so removing the last row only empties it. Delegated, so forms htmx swaps in work too.
(function () {
  "use strict";
  function rows(list) { return list.querySelectorAll(".item-list__row"); }
  function isBlank(row) { const control = row.querySelector("input, select"); return !control || !control.value.trim(); }

  function renumber(list) {
    const legend = list.querySelector("legend");
    const label = legend ? legend.firstChild.textContent.trim() : "Item";
    rows(list).forEach(function (row, index) {
      const control = row.querySelector("input, select");
      if (control) control.setAttribute("aria-label", label + ", item " + (index + 1));
    });
    const add = list.querySelector("[data-item-add]");
    const items = list.querySelector("[data-max-items]");
    if (add && items) add.disabled = rows(list).length >= Number(items.dataset.maxItems);
  }

  htmx.onLoad(function (root) {
    const lists = root.matches && root.matches("[data-item-list]") ? [root] : root.querySelectorAll("[data-item-list]");
    lists.forEach(function (list) {
      // From here on the rows are the reader's: a live refresh of the page around the form
      // (static/js/live.js) must not put back a removed row or take away a new, focused one.
      list.setAttribute("data-live-keep", "");
      list.querySelectorAll("[data-item-add], [data-item-remove]").forEach(function (button) { button.hidden = false; });
      // The spare slots are for a page without JavaScript; with "Add another", one blank is enough.
      let all = rows(list);
      while (all.length > 1 && isBlank(all[all.length - 1]) && isBlank(all[all.length - 2])) {
        all[all.length - 1].remove();
        all = rows(list);
      }
      renumber(list);
    });
  });

  // A step of the run page is fetched when the reader opens it (dashboard:step_detail), and
  // from then on refreshes itself when the live push says the run changed (static/js/live.js).
  // Marked data-live-keep, it is left alone when the run's own part is morphed around it.
  // ("toggle" does not bubble: listened for on the way down.)
  document.addEventListener("toggle", function (event) {
    const details = event.target;
    if (!(details instanceof HTMLDetailsElement) || !details.open || !details.dataset.stepDetail) return;
    const body = details.querySelector(".step-detail__body");
    if (!body || body.hasAttribute("data-live")) return;
    body.setAttribute("data-live-keep", "");
    body.setAttribute("data-live", details.dataset.liveTopic || "");
    body.setAttribute("hx-get", details.dataset.stepDetail);
    body.setAttribute("hx-trigger", "baton:refresh");
    body.setAttribute("hx-swap", "morph:innerHTML");
    body.setAttribute("hx-sync", "this:queue last");
    body.setAttribute("aria-busy", "true");
    htmx.process(body);
    htmx.trigger(body, "baton:refresh");
  }, true);
  document.addEventListener("htmx:afterSettle", function (event) {
    if (event.target.classList && event.target.classList.contains("step-detail__body")) event.target.removeAttribute("aria-busy");
  });

  document.addEventListener("click", function (event) {
    const button = event.target.closest && event.target.closest("[data-item-add], [data-item-remove]");
    const list = button && button.closest("[data-item-list]");
    if (!list) return;
    if (button.hasAttribute("data-item-add")) {
      const last = rows(list)[rows(list).length - 1];
      const row = last.cloneNode(true);
      const control = row.querySelector("input, select");
      control.value = "";
      last.after(row);
      renumber(list);
      control.focus();
      return;
    }
    const row = button.closest(".item-list__row");
    if (rows(list).length > 1) {
      const next = row.nextElementSibling || row.previousElementSibling;
      row.remove();
      renumber(list);
      const focus = next && next.querySelector("input, select");
      if (focus) focus.focus();
    } else {
      row.querySelector("input, select").value = "";
    }
  });
})();
