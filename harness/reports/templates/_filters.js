// Filters for test lists and the matrix. Plain DOM, no libraries, works from file:// without a server.
// Items:  [data-filter-item] with data-id, data-area, data-outcomes ("failed" or "passed failed" in the matrix),
//         data-differs="1" (matrix rows whose outcome differs between runs).
// Groups: [data-filter-group] are hidden when none of their items is shown.
// The state is mirrored in the URL hash (#area=deletion&outcome=failed,error&q=dele) so a link opens a filtered view.
(function () {
  "use strict";
  var body = document.body;
  try {
    var items = Array.prototype.slice.call(document.querySelectorAll("[data-filter-item]"));
    var groups = Array.prototype.slice.call(document.querySelectorAll("[data-filter-group]"));
    var search = document.getElementById("filter-search");
    var area = document.getElementById("filter-area");
    var differs = document.getElementById("filter-differs");
    var boxes = Array.prototype.slice.call(document.querySelectorAll("input[data-filter-outcome]"));
    var shown = document.getElementById("filter-shown");

    var apply = function () {
      var q = search ? search.value.trim().toLowerCase() : "";
      var a = area ? area.value : "";
      var wanted = {};
      boxes.forEach(function (b) { if (b.checked) { wanted[b.value] = true; } });
      var n = 0;
      items.forEach(function (el) {
        var text = (el.getAttribute("data-id") + " " + (el.getAttribute("data-title") || "")).toLowerCase();
        var outcomes = (el.getAttribute("data-outcomes") || "").split(" ");
        var ok = (!a || el.getAttribute("data-area") === a) &&
          (!q || text.indexOf(q) !== -1) &&
          (!boxes.length || outcomes.some(function (o) { return wanted[o]; })) &&
          (!differs || !differs.checked || el.getAttribute("data-differs") === "1");
        el.hidden = !ok;
        if (ok) { n += 1; }
      });
      groups.forEach(function (g) { g.hidden = !g.querySelector("[data-filter-item]:not([hidden])"); });
      if (shown) { shown.textContent = String(n); }
      body.setAttribute("data-shown", String(n));
    };

    // Hash <-> controls. A hash without "=" is a plain anchor (#t-some.test.id) and is left alone.
    var readHash = function () {
      var hash = location.hash.replace(/^#/, "");
      if (hash.indexOf("=") === -1) { return false; }
      var params = {};
      hash.split("&").forEach(function (kv) {
        var i = kv.indexOf("=");
        if (i > 0) {
          try { params[kv.slice(0, i)] = decodeURIComponent(kv.slice(i + 1)); } catch (e) { /* malformed: ignore */ }
        }
      });
      if (search) { search.value = params.q || ""; }
      if (area) {
        area.value = params.area || "";
        if (area.value !== (params.area || "")) { area.value = ""; }  // unknown area: show all
      }
      if (differs) { differs.checked = params.differs === "1"; }
      if (boxes.length) {
        var only = params.outcome ? params.outcome.split(",") : null;
        boxes.forEach(function (b) { b.checked = !only || only.indexOf(b.value) !== -1; });
      }
      return true;
    };
    var writeHash = function () {
      var parts = [];
      var enc = encodeURIComponent;
      if (area && area.value) { parts.push("area=" + enc(area.value)); }
      var off = boxes.filter(function (b) { return !b.checked; });
      if (off.length) {
        parts.push("outcome=" + boxes.filter(function (b) { return b.checked; }).map(function (b) { return b.value; }).join(","));
      }
      if (search && search.value.trim()) { parts.push("q=" + enc(search.value.trim())); }
      if (differs && differs.checked) { parts.push("differs=1"); }
      try {
        history.replaceState(null, "", parts.length ? "#" + parts.join("&") : location.pathname + location.search);
      } catch (e) { /* some browsers refuse replaceState on file://; filtering still works */ }
    };
    var onChange = function () { apply(); writeHash(); };

    if (search) { search.addEventListener("input", onChange); }
    if (area) { area.addEventListener("change", onChange); }
    if (differs) { differs.addEventListener("change", onChange); }
    boxes.forEach(function (b) { b.addEventListener("change", onChange); });
    var reset = document.getElementById("filter-reset");
    if (reset) {
      reset.addEventListener("click", function () {
        if (search) { search.value = ""; }
        if (area) { area.value = ""; }
        if (differs) { differs.checked = false; }
        boxes.forEach(function (b) { b.checked = true; });
        onChange();
      });
    }
    // Links such as the banner counts (href="#outcome=failed") set the filters and jump to the list.
    window.addEventListener("hashchange", function () {
      if (readHash()) {
        apply();
        var list = document.getElementById("tests");
        if (list) { list.scrollIntoView(); }
      }
    });
    readHash();
    apply();
    body.setAttribute("data-ready", "1");
  } catch (e) {
    body.setAttribute("data-script-error", String(e && e.message || e));
  }
})();
