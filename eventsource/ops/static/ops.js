// The operations page refreshes its live part by itself: every `data-refresh` seconds it asks
// this server for the same page with the `X-Ops-Fragment: 1` header and swaps the answer in.
// Open <details> stay open; nothing refreshes while the operator types in a field of the live
// part. Buttons with `data-confirm` ask before their form is sent.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live) { return; }
  var seconds = parseFloat(live.getAttribute("data-refresh") || "0");

  document.addEventListener("submit", function (event) {
    var button = event.submitter;
    var question = button && button.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { event.preventDefault(); }
  });

  function openDetails() {
    var open = [];
    live.querySelectorAll("details[open]").forEach(function (d) {
      var row = d.closest("[data-partition],[data-command]");
      var section = d.closest("section");
      open.push([section ? section.id : "", row ? (row.getAttribute("data-partition") || row.getAttribute("data-command")) : ""]);
    });
    return open;
  }

  function reopen(open) {
    open.forEach(function (key) {
      var scope = key[0] ? document.getElementById(key[0]) : live;
      if (!scope) { return; }
      var row = scope.querySelector('[data-partition="' + key[1] + '"],[data-command="' + key[1] + '"]');
      var d = row && row.querySelector("details");
      if (d) { d.open = true; }
    });
  }

  function refresh() {
    var active = document.activeElement;
    if (active && live.contains(active) && active.tagName === "INPUT") { return; }
    fetch(window.location.href, { headers: { "X-Ops-Fragment": "1" }, credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (html === null) { return; }
        var open = openDetails();
        live.innerHTML = html;
        reopen(open);
        live.setAttribute("data-refreshed", String(Date.now()));
      })
      .catch(function () { /* the server is away: try again at the next tick */ });
  }

  if (seconds > 0) { window.setInterval(refresh, seconds * 1000); }
})();
