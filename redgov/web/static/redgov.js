/* redgov serve: the pages' only script (the Content-Security-Policy allows no inline script).
 *
 * - Every htmx request carries the session's CSRF token (header X-CSRF-Token, from <meta name="csrf-token">).
 * - Live updates: a page whose <main> has data-events opens an EventSource on it (GET /events, Server-Sent
 *   Events of the scope streams). A relevant event refreshes the page's #live region from data-refresh
 *   (debounced), keeping what the user typed; a "reset" event reloads the page.
 */
(function () {
  "use strict";

  var KINDS = ["state", "transition", "approval", "version", "policy"];
  var DEBOUNCE_MS = 120;

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  document.addEventListener("htmx:configRequest", function (event) {
    var token = csrfToken();
    if (token) {
      event.detail.headers["X-CSRF-Token"] = token;
    }
  });

  function page() {
    return document.getElementById("page");
  }

  // -- keeping what the user typed across a refresh --------------------------------------------

  function fieldsOf(region) {
    return region.querySelectorAll("input[id], textarea[id], select[id]");
  }

  function saveFields(region) {
    var saved = { values: {}, open: [], focus: null, selection: null };
    Array.prototype.forEach.call(fieldsOf(region), function (field) {
      if (field.type === "hidden" || field.type === "submit") {
        return;
      }
      saved.values[field.id] = field.value;
    });
    Array.prototype.forEach.call(region.querySelectorAll("details[open]"), function (details, i) {
      saved.open.push(details.className || String(i));
    });
    var active = document.activeElement;
    if (active && active.id && region.contains(active)) {
      saved.focus = active.id;
      try {
        saved.selection = [active.selectionStart, active.selectionEnd];
      } catch (ignored) {
        saved.selection = null;
      }
    }
    return saved;
  }

  function restoreFields(saved) {
    var region = document.getElementById("live");
    if (!region) {
      return;
    }
    Object.keys(saved.values).forEach(function (id) {
      var field = document.getElementById(id);
      if (field && region.contains(field) && field.value !== saved.values[id]) {
        field.value = saved.values[id];
      }
    });
    Array.prototype.forEach.call(region.querySelectorAll("details"), function (details, i) {
      if (saved.open.indexOf(details.className || String(i)) >= 0) {
        details.open = true;
      }
    });
    if (saved.focus) {
      var focused = document.getElementById(saved.focus);
      if (focused) {
        focused.focus();
        if (saved.selection && focused.setSelectionRange && saved.selection[0] !== null) {
          try {
            focused.setSelectionRange(saved.selection[0], saved.selection[1]);
          } catch (ignored) { /* not a text field */ }
        }
      }
    }
  }

  // -- live updates ------------------------------------------------------------------------------

  var timer = null;
  var running = false;
  var again = false;

  function refresh() {
    timer = null;
    var main = page();
    var region = document.getElementById("live");
    if (!main || !region || !window.htmx) {
      return;
    }
    if (running) {
      again = true;
      return;
    }
    running = true;
    var saved = saveFields(region);
    var url = main.dataset.refresh || (location.pathname + location.search);
    window.htmx.ajax("GET", url, { target: "#live", select: "#live", swap: "outerHTML" }).then(function () {
      restoreFields(saved);
    }, function () { /* the next event tries again */ }).then(function () {
      running = false;
      document.body.dataset.refreshed = String(Date.now());
      if (again) {
        again = false;
        schedule();
      }
    });
  }

  function schedule() {
    if (timer === null) {
      timer = window.setTimeout(refresh, DEBOUNCE_MS);
    }
  }

  function startLive() {
    var main = page();
    if (!main || !main.dataset.events || !window.EventSource) {
      return;
    }
    var status = document.getElementById("live-status");
    var source = new EventSource(main.dataset.events);
    source.addEventListener("open", function () {
      if (status) {
        status.hidden = false;
        status.classList.remove("off");
        status.title = "live: this page updates itself";
      }
    });
    source.addEventListener("error", function () {
      if (status) {
        status.classList.add("off");
        status.title = "reconnecting to the live feed";
      }
    });
    KINDS.forEach(function (kind) {
      // the feed is already filtered by the page's scope and experiment: any event may change the page
      source.addEventListener(kind, schedule);
    });
    source.addEventListener("reset", function () {
      source.close();
      location.reload();
    });
    window.addEventListener("pagehide", function () {
      source.close();
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", startLive);
  } else {
    startLive();
  }
}());
