// The inbox: after a decision made from a row, move focus to the next waiting row, so an
// approver can work down the list from the keyboard. The server names the next item in an
// HX-Trigger-After-Settle header ("approvals:decided"); the item page instead renders its
// "next" link with autofocus, which htmx focuses after the swap.
(function () {
  "use strict";
  document.addEventListener("approvals:decided", function (event) {
    const next = event.detail && event.detail.next;
    const row = next && document.getElementById("item-row-" + next);
    const target = row && row.querySelector("[data-focus]");
    if (target) target.focus();
  });
})();
