// Live pages: one websocket per page tells which of the page's parts changed; each part then
// fetches itself through its ordinary URL (the view checks permission and renders the same
// partial the page used) and is morphed into place, so focus, typed text, open folds, scroll
// and selection stay where the reader left them.
//
// A live part carries data-live="topic topic…", hx-get, hx-trigger="baton:refresh" and
// hx-swap="morph". The socket (dashboard/live/consumer.py) is told the page's topics and sends
// {"changed": [topics]}. While the socket is down the parts refresh every data-live-poll
// seconds (on <body>; 0 turns that off), and on every (re)connect each part refetches once, so
// a hint lost while disconnected never leaves the page stale. Pushes are hints only: nothing
// here decides anything; decisions stay CSRF-protected POSTs.
(function () {
  "use strict";

  const RETRY_MIN_MS = 500;
  const RETRY_MAX_MS = 10000;

  // Morphing keeps what the reader is doing. Idiomorph leaves the focused field's value alone
  // (ignoreActiveValue) and puts focus and selection back (restoreFocus, its default); these
  // callbacks also keep a field the reader has changed but left, a fold they opened or closed,
  // and anything marked data-live-keep (a form showing the reader's own errors).
  function edited(node) {
    if (node instanceof HTMLInputElement) {
      if (node.type === "checkbox" || node.type === "radio") return node.checked !== node.defaultChecked;
      return node.value !== node.defaultValue;
    }
    if (node instanceof HTMLTextAreaElement) return node.value !== node.defaultValue;
    if (node instanceof HTMLSelectElement) {
      return Array.from(node.options).some(function (option) { return option.selected !== option.defaultSelected; });
    }
    return false;
  }

  if (window.Idiomorph) {
    window.Idiomorph.defaults.ignoreActiveValue = true;
    window.Idiomorph.defaults.callbacks.beforeNodeMorphed = function (oldNode) {
      if (oldNode.nodeType !== Node.ELEMENT_NODE) return true;
      if (oldNode.hasAttribute("data-live-keep")) return false;
      return !edited(oldNode);
    };
    window.Idiomorph.defaults.callbacks.beforeAttributeUpdated = function (name, node) {
      return !(name === "open" && node instanceof HTMLDetailsElement);
    };
  }

  const body = document.body;
  const indicator = document.getElementById("live-status");
  const pollSeconds = Number(body.dataset.livePoll || "5");
  let socket = null;
  let retryMs = RETRY_MIN_MS;
  let pollTimer = null;
  let sentTopics = "";
  // Topics the server would not let this socket follow (e.g. a runs list over more workflows
  // than a socket may join): their parts are refreshed by polling even while the socket is up.
  let refused = new Set();
  let refusedTimer = null;

  function parts() {
    return Array.from(document.querySelectorAll("[data-live]"));
  }

  function topicsOf(element) {
    return (element.getAttribute("data-live") || "").split(/\s+/).filter(Boolean);
  }

  function pageTopics() {
    const all = new Set();
    parts().forEach(function (element) { topicsOf(element).forEach(function (t) { all.add(t); }); });
    return Array.from(all).sort();
  }

  function show(state, text) {
    body.dataset.liveState = state;
    if (!indicator) return;
    indicator.dataset.state = state;
    indicator.querySelector(".live-status__text").textContent = text;
  }

  function refresh(element) {
    if (element.isConnected) htmx.trigger(element, "baton:refresh");
  }

  function refreshAll() {
    parts().forEach(refresh);
  }

  function subscribe() {
    const topics = pageTopics();
    const key = topics.join(" ");
    if (!socket || socket.readyState !== WebSocket.OPEN || key === sentTopics) return;
    sentTopics = key;
    socket.send(JSON.stringify({ subscribe: topics }));
  }

  function pollRefused() {
    if (refusedTimer) window.clearInterval(refusedTimer);
    refusedTimer = null;
    if (!refused.size || !(pollSeconds > 0)) return;
    refusedTimer = window.setInterval(function () {
      parts().forEach(function (element) {
        if (topicsOf(element).some(function (t) { return refused.has(t); })) refresh(element);
      });
    }, pollSeconds * 1000);
  }

  function startPolling() {
    if (pollTimer || !(pollSeconds > 0)) return;
    pollTimer = window.setInterval(refreshAll, pollSeconds * 1000);
  }

  function stopPolling() {
    if (pollTimer) window.clearInterval(pollTimer);
    pollTimer = null;
  }

  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    let opened = false;
    try {
      socket = new WebSocket(scheme + window.location.host + "/ws/live/");
    } catch (e) {
      socket = null;
      lost(false);
      return;
    }
    socket.addEventListener("open", function () {
      opened = true;
      retryMs = RETRY_MIN_MS;
      sentTopics = "";
      stopPolling();
      show("live", "live");
      subscribe();
      // Whatever changed while there was no socket (or before this one opened) is fetched now.
      refreshAll();
    });
    socket.addEventListener("message", function (event) {
      let message;
      try { message = JSON.parse(event.data); } catch (e) { return; }
      if (message.refused) {
        refused = new Set(message.refused);
        pollRefused();
      }
      const changed = new Set(message.changed || []);
      if (!changed.size) return;
      parts().forEach(function (element) {
        if (topicsOf(element).some(function (t) { return changed.has(t); })) refresh(element);
      });
    });
    socket.addEventListener("close", function () { lost(opened); });
  }

  function lost(wasOpen) {
    socket = null;
    show("reconnecting", pollSeconds > 0 ? "reconnecting… (checking every " + pollSeconds + " s)" : "reconnecting…");
    startPolling();
    // Back off, with jitter, so a restarted server is not met by every page at once.
    const wait = retryMs * (0.75 + Math.random() * 0.5);
    retryMs = wasOpen ? RETRY_MIN_MS * 2 : Math.min(RETRY_MAX_MS, retryMs * 2);
    window.setTimeout(connect, wait);
  }

  // A part the reader may no longer open (an item reassigned to someone else, a run whose
  // workflow they lost access to) answers its refresh with 403 or 404: it stays on screen for
  // reference, greyed and inert (no button in it can be pressed), while the alert region says
  // why (static/js/baton.js). A later successful refresh brings it back.
  document.addEventListener("htmx:afterRequest", function (event) {
    const element = event.detail.elt;
    const xhr = event.detail.xhr;
    if (!element || !element.hasAttribute || !element.hasAttribute("data-live") || !xhr) return;
    if (xhr.status === 403 || xhr.status === 404) {
      element.setAttribute("inert", "");
      element.classList.add("live-gone");
    } else if (event.detail.successful) {
      element.removeAttribute("inert");
      element.classList.remove("live-gone");
    }
  });

  // A swap can add or drop live parts (rows of a list, the item page's run): follow them.
  document.addEventListener("htmx:afterSettle", subscribe);

  if (parts().length) {
    show("connecting", "connecting…");
    connect();
  }
})();
